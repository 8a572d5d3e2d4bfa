"""Collation with one preprocessor per role, and with ``rows``: each process preprocesses its
own rows while ids, labels and scores stay those of the whole batch."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from contralign.core.items import ImageItem, item_key
from contralign.data import (
    Captions,
    Record,
    TextViews,
    collate,
    contiguous_rows,
    preprocessor_for,
    text_id,
)
from contralign.data.views import make_view, view_rng
from contralign.training.distributed import shard_of


def char_ids(texts: Sequence[Any]) -> dict[str, Tensor]:
    """Texts -> one id per character, padded to the longest (refuses anything but texts)."""
    assert all(isinstance(t, str) for t in texts), texts
    width = max(len(t) for t in texts)
    ids = torch.zeros(len(texts), width, dtype=torch.long)
    for i, text in enumerate(texts):
        ids[i, : len(text)] = torch.tensor([ord(c) for c in text])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def pixels(items: Sequence[Any]) -> dict[str, Tensor]:
    """Images -> ``(R, H, W, 3)`` float32 (refuses anything but array images)."""
    assert all(isinstance(i, ImageItem) and i.array is not None for i in items), items
    return {"pixel_values": torch.stack([torch.tensor(np.array(i.array), dtype=torch.float32)
                                         for i in items])}


def texts_of(batch: dict[str, Tensor]) -> list[str]:
    return ["".join(chr(int(c)) for c in row if c) for row in batch["input_ids"]]


def image(row: int, value: int) -> ImageItem:
    return ImageItem.from_array(np.full((2, 2, 3), value, np.uint8), "/data/images.npz", row)


def image_text_records(n: int = 7, k: int = 2) -> list[Record]:
    return [Record(anchor=image(i + 1, i), positive=f"caption {i % 3}",
                   negatives=tuple(f"neg {i}-{j}" for j in range(k)), label=str(i % 2),
                   score=i / 2, line=i + 1) for i in range(n)]


class Spy:
    """A preprocessor that records what it was given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[list[Any]] = []

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        self.calls.append(list(items))
        return self.inner(items)


# --- one preprocessor per role -------------------------------------------------------------------


def test_each_role_goes_through_its_own_preprocessor() -> None:
    records = image_text_records()
    anchor, positive, negative = Spy(pixels), Spy(char_ids), Spy(char_ids)
    batch = collate(records, {"anchor": anchor, "positive": positive, "negative": negative})
    assert anchor.calls == [[r.anchor for r in records]]
    assert positive.calls == [[r.positive for r in records]]
    assert negative.calls == [[r.negatives[0] for r in records], [r.negatives[1] for r in records]]
    assert batch["anchor"]["pixel_values"].shape == (7, 2, 2, 3)
    assert batch["anchor"]["pixel_values"][3, 0, 0, 0] == 3.0
    assert texts_of(batch["positive"]) == [f"caption {i % 3}" for i in range(7)]
    assert [texts_of(column) for column in batch["negatives"]] == [
        [f"neg {i}-{j}" for i in range(7)] for j in range(2)]
    assert batch["anchor_ids"].tolist() == [text_id(item_key(r.anchor)) for r in records]
    assert batch["rows"] is None


def test_fallbacks_of_a_preprocessor_mapping() -> None:
    only_anchor = {"anchor": char_ids}
    images_and_texts = {"anchor": pixels, "positive": char_ids}
    assert preprocessor_for(only_anchor, "positive") is char_ids  # a positive that is the anchor
    assert preprocessor_for(images_and_texts, "negative") is char_ids  # the positive's tower
    assert preprocessor_for(char_ids, "negative") is char_ids
    batch = collate(image_text_records(), images_and_texts)
    assert texts_of(batch["negatives"][0])[0] == "neg 0-0"
    with pytest.raises(ValueError, match="no preprocessor for the anchor role "
                                         r"\(given: positive\)"):
        collate(image_text_records(), {"positive": char_ids})


def test_a_single_preprocessor_keeps_todays_call() -> None:
    records = [Record(anchor="q1", positive="d1"), Record(anchor="q2")]
    batch = collate(records, char_ids)
    assert texts_of(batch["anchor"]) == ["q1", "q2"]
    assert texts_of(batch["positive"]) == ["d1", "q2"]


# --- rows ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_rows_preprocess_only_their_share(world: int) -> None:
    records = image_text_records(7)
    whole = collate(records, {"anchor": pixels, "positive": char_ids})
    gathered: dict[str, list[Any]] = {"anchor": [], "positive": [], "neg0": [], "neg1": []}
    for rank in range(world):
        rows = contiguous_rows(len(records), rank, world)
        anchor, positive = Spy(pixels), Spy(char_ids)
        part = collate(records, {"anchor": anchor, "positive": positive}, rows)
        assert anchor.calls == [[r.anchor for r in records[rows]]]  # nothing else was decoded
        assert part["rows"] == (rows.start, rows.stop)
        for key in ("anchor_ids", "positive_ids", "negative_ids", "labels", "scores"):
            assert torch.equal(part[key], whole[key])  # type: ignore[literal-required]
        assert part["anchor"]["pixel_values"].shape[0] == rows.stop - rows.start
        gathered["anchor"].append(part["anchor"]["pixel_values"])
        gathered["positive"] += texts_of(part["positive"])
        gathered["neg0"] += texts_of(part["negatives"][0])
        gathered["neg1"] += texts_of(part["negatives"][1])
    assert torch.equal(torch.cat(gathered["anchor"]), whole["anchor"]["pixel_values"])
    assert gathered["positive"] == texts_of(whole["positive"])
    assert gathered["neg0"] == texts_of(whole["negatives"][0])
    assert gathered["neg1"] == texts_of(whole["negatives"][1])


def test_rows_pad_texts_to_their_own_longest() -> None:
    records = [Record(anchor="a much longer text"), Record(anchor="short")]
    part = collate(records, char_ids, slice(1, 2))
    assert part["anchor"]["input_ids"].shape == (1, 5)
    assert part["anchor_ids"].tolist() == [text_id("a much longer text"), text_id("short")]


@pytest.mark.parametrize("rows", [slice(0, 0), slice(2, 1), slice(0, 9), slice(-1, 2),
                                  slice(0, 4, 2)])
def test_bad_rows(rows: slice) -> None:
    with pytest.raises(ValueError, match=r"rows must be a slice\(start, stop\) with 0 <= start "
                                         "< stop <= 4"):
        collate([Record(anchor=f"t{i}") for i in range(4)], char_ids, rows)


def test_contiguous_rows_is_the_split_of_shard_of() -> None:
    for batch_size in range(1, 26):
        for world in range(1, min(batch_size, 6) + 1):
            for rank in range(world):
                shard = shard_of(batch_size, rank, world)
                assert contiguous_rows(batch_size, rank, world) == slice(shard.start, shard.stop)
    with pytest.raises(ValueError, match="a batch of 2 rows cannot be split over 3 processes"):
        contiguous_rows(2, 0, 3)
    with pytest.raises(ValueError, match=r"rank 3 is not in \[0, 3\)"):
        contiguous_rows(5, 3, 3)


def test_caption_draws_do_not_depend_on_rows() -> None:
    texts = ("one", "two", "three", "four")
    records = [Record(anchor=image(i + 1, i), positive=texts[0], label="0", line=i + 1,
                      captions=Captions("positive", texts)) for i in range(9)]
    preprocess = {"anchor": pixels, "positive": char_ids}
    whole = texts_of(collate(records, preprocess, position=(1, 2, 3))["positive"])
    parts = [texts_of(collate(records, preprocess, contiguous_rows(9, rank, 2),
                              position=(1, 2, 3))["positive"]) for rank in range(2)]
    assert parts[0] + parts[1] == whole
    assert len(set(whole)) > 1


# --- the views hook ------------------------------------------------------------------------------


def naive_view_batch(records, views, tokenize, position, views_only=False):
    """The views as training drew them before the data layer did (one loop, text records):
    view 0 from the anchor, the others from the positive (the anchor without one); 1-to-K: all
    from the positive, the anchor unchanged."""
    texts = []
    for v, view in enumerate(views):
        from_anchor = v == 0 and not views_only
        texts.append([view(r.anchor if from_anchor or r.positive is None else r.positive,
                           view_rng(*position, i, v)) for i, r in enumerate(records)])
    out = {"views": [tokenize(t) for t in texts]}
    if not views_only:
        out["anchor"], out["positive"] = out["views"][0], out["views"][1]
    return out


def view_records(n: int = 9) -> list[Record]:
    rng = random.Random(0)
    words = "the cat sat on a warm mat while rain fell outside".split()
    return [Record(anchor=" ".join(rng.sample(words, 6)),
                   positive=" ".join(rng.sample(words, 5)) if i % 3 else None, line=i + 1)
            for i in range(n)]


@pytest.mark.parametrize("views_only", [False, True])
def test_text_views_equal_the_training_views(views_only: bool) -> None:
    records = view_records()
    views = (make_view("word_deletion", ratio=0.3), make_view("word_shuffle"),
             make_view("span_deletion", ratio=0.2))
    position = (3, 1, 4)
    expected = naive_view_batch(records, views, char_ids, position, views_only=views_only)
    got = TextViews(views, views_only)(records, char_ids, position, None)
    assert got.keys() == expected.keys()
    assert [texts_of(v) for v in got["views"]] == [texts_of(v) for v in expected["views"]]
    for v in range(3):
        assert torch.equal(got["views"][v]["input_ids"], expected["views"][v]["input_ids"])
    # Each process's rows draw what the whole batch draws for them.
    for rank in range(3):
        rows = contiguous_rows(len(records), rank, 3)
        part = TextViews(views, views_only)(records, char_ids, position, rows)
        assert [texts_of(v) for v in part["views"]] == \
            [texts_of(v)[rows] for v in expected["views"]]


def test_text_views_refuse_images() -> None:
    with pytest.raises(ValueError, match="text views need texts, but the record at line 1 "
                                         "holds an image"):
        TextViews((make_view("identity"), make_view("identity")))(
            image_text_records(2), char_ids, (0, 0, 0), None)


def test_views_use_the_anchor_and_positive_preprocessors() -> None:
    anchor, positive = Spy(char_ids), Spy(char_ids)
    records = view_records(4)
    preprocess = {"anchor": anchor, "positive": positive}
    TextViews((make_view("identity"),) * 3)(records, preprocess, (0, 0, 0), None)
    # Views 0 and 2 are embedded by the anchor's tower, view 1 by the positive's.
    assert anchor.calls == [[r.anchor for r in records],
                            [r.positive or r.anchor for r in records]]
    assert positive.calls == [[r.positive or r.anchor for r in records]]
    anchor.calls, positive.calls = [], []
    TextViews((make_view("identity"),) * 2, views_only=True)(records, preprocess, (0, 0, 0), None)
    assert anchor.calls == [] and len(positive.calls) == 2  # 1-to-K: the positive's tower
