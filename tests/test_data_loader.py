"""BatchLoader: batches made in DataLoader workers equal the batches made in-process, in order,
for texts (the default model's tokenizer) and for ``.npz`` images with captions."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from contralign.core.errors import DataError
from contralign.core.items import ImageItem
from contralign.data import (
    BatchCollator,
    BatchLoader,
    DataConfig,
    PairBatcher,
    Record,
    TextViews,
    load_records,
)
from contralign.data.views import make_view

WORDS = ("the a cat dog sat ran on under warm cold mat rug while as rain sun fell rose "
         "outside inside quickly").split()


class Tokenizer:
    """A transformers tokenizer as a picklable preprocessor (what a text tower's is)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=32,
                                   return_tensors="pt"))


class Pixels:
    """Array images -> ``(R, 3, H, W)`` float32 in [0, 1]."""

    def __call__(self, items: Sequence[ImageItem]) -> dict[str, Tensor]:
        stacked = np.stack([np.asarray(item.array) for item in items])  # (R, H, W, 3)
        return {"pixel_values": torch.from_numpy(stacked).permute(0, 3, 1, 2).float() / 255}


class CharIds:
    """Texts -> character codes, padded (a tokenizer without a model)."""

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        width = max(len(t) for t in texts)
        ids = torch.zeros(len(texts), width, dtype=torch.long)
        for i, text in enumerate(texts):
            ids[i, : len(text)] = torch.tensor([ord(c) for c in text])
        return {"input_ids": ids}


class FailsAtLine:
    """Preprocesses array images, but cannot decode the one of ``line`` (a DataError)."""

    def __init__(self, line: int) -> None:
        self.line = line

    def __call__(self, items: Sequence[ImageItem]) -> dict[str, Tensor]:
        for item in items:
            if item.key.endswith(f"#{self.line}"):
                raise DataError(item.key.split("#")[0], self.line, "images",
                                "cannot decode the image")
        return Pixels()(items)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    from transformers import AutoTokenizer

    from contralign.encoders.resolve import DEFAULT_MODEL, resolve_model

    return Tokenizer(AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL)))


def text_records(n: int) -> list[Record]:
    rng = np.random.default_rng(0)
    return [Record(anchor=" ".join(rng.choice(WORDS, rng.integers(3, 12))),
                   positive=" ".join(rng.choice(WORDS, rng.integers(2, 9))), line=i + 1)
            for i in range(n)]


@pytest.fixture()
def image_records(tmp_path: Path) -> list[Record]:
    path = tmp_path / "images.npz"
    rng = np.random.default_rng(1)
    np.savez(path, images=rng.integers(0, 256, (29, 8, 6, 3), dtype=np.uint8),
             labels=rng.integers(0, 3, 29), classes=np.array(["cat", "dog", "bird"]))
    captions = {"templates": ["a photo of a {label}.", "a {label}", "the {label}, drawn"],
                "classes": "classes"}
    return load_records(DataConfig(path=str(path), captions=captions)).records


def assert_same_batches(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key], key)


def assert_same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def in_process(batcher: PairBatcher, collator: BatchCollator, epoch: int,
               start: int = 0) -> list[dict[str, Any]]:
    """The reference: the collator called on ``batcher.batches`` at each position."""
    return [collator(batch, (batcher.seed, epoch, k))
            for k, batch in enumerate(batcher.batches(epoch, start), start)]


def test_text_batches_in_two_workers_equal_the_batches_in_process(tokenizer: Tokenizer) -> None:
    batcher = PairBatcher(text_records(45), batch_size=8, seed=3)
    views = TextViews((make_view("word_deletion", ratio=0.2), make_view("word_shuffle")))
    collator = BatchCollator(tokenizer, extras=views)
    rng_before = torch.get_rng_state()
    for workers in (0, 2):
        loader = BatchLoader(batcher, collator, num_workers=workers)
        assert len(loader) == 6
        for epoch, start in ((0, 0), (1, 0), (1, 4)):
            got = list(loader.batches(epoch, start))
            assert_same_batches(got, in_process(batcher, collator, epoch, start))
        assert got[0]["anchor"]["input_ids"].shape[0] == 8 and "views" in got[0]
    assert torch.equal(torch.get_rng_state(), rng_before)  # dropout draws are untouched


def test_npz_image_batches_with_captions_in_workers(image_records: list[Record]) -> None:
    batcher = PairBatcher(image_records, batch_size=6, seed=11)
    collator = BatchCollator({"anchor": Pixels(), "positive": CharIds()})
    expected = {epoch: in_process(batcher, collator, epoch) for epoch in (0, 1)}
    for workers, persistent in ((0, False), (2, True)):
        loader = BatchLoader(batcher, collator, num_workers=workers,
                             persistent_workers=persistent, prefetch_factor=3 if workers else None)
        for epoch in (0, 1):  # a persistent worker serves the next epoch too
            assert_same_batches(list(loader.batches(epoch)), expected[epoch])
    first = expected[0][0]
    assert first["anchor"]["pixel_values"].shape == (6, 3, 8, 6)
    assert first["labels"] is not None and first["rows"] is None
    # The captions are drawn anew each epoch: some record's caption changes.
    captions = {epoch: {r.line: caption for k, batch in enumerate(batcher.batches(epoch))
                        for r, caption in zip(batch, decoded(expected[epoch][k]), strict=True)}
                for epoch in (0, 1)}
    assert captions[0] != captions[1]
    assert all(captions[e][r.line] in r.captions.texts  # type: ignore[union-attr]
               for e in (0, 1) for r in image_records)


def decoded(batch: dict[str, Any]) -> list[str]:
    return ["".join(chr(int(c)) for c in row if c) for row in batch["positive"]["input_ids"]]


def test_a_spawned_worker_gets_everything_by_pickle(image_records: list[Record]) -> None:
    batcher = PairBatcher(image_records, batch_size=10, seed=2)
    collator = BatchCollator({"anchor": Pixels(), "positive": CharIds()})
    restored = pickle.loads(pickle.dumps(collator))
    assert_same_batches(in_process(batcher, restored, 0), in_process(batcher, collator, 0))
    loader = BatchLoader(batcher, collator, num_workers=1, multiprocessing_context="spawn")
    assert_same_batches(list(loader.batches(0, 1)), in_process(batcher, collator, 0, 1))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_in_a_worker_is_the_same_one_line_error(image_records: list[Record],
                                                         workers: int) -> None:
    batcher = PairBatcher(image_records, batch_size=4, shuffle=False)
    loader = BatchLoader(batcher, BatchCollator({"anchor": FailsAtLine(10),
                                                 "positive": CharIds()}), num_workers=workers)
    seen = []
    with pytest.raises(DataError) as info:
        for batch in loader.batches(0):
            seen.append(batch)
    assert len(seen) == 2  # batches 0 and 1 (lines 1-8); batch 2 holds line 10
    error = info.value
    assert str(error).endswith("images.npz:10: images: cannot decode the image")
    assert (error.line, error.field, error.message) == (10, "images", "cannot decode the image")


def test_a_process_shard_and_a_loop_that_stops_early(image_records: list[Record]) -> None:
    batcher = PairBatcher(image_records, batch_size=8, seed=0)  # 29 rows: 8, 8, 8, 5
    collator = BatchCollator({"anchor": Pixels(), "positive": CharIds()}, shard=(1, 2))
    loader = BatchLoader(batcher, collator, num_workers=2)
    early = loader.batches(0)
    assert next(early)["rows"] == (4, 8)
    early.close()  # a loop that stops early: the workers shut down, the next epoch starts clean
    batches = list(loader.batches(0))
    assert [b["rows"] for b in batches] == [(4, 8), (4, 8), (4, 8), (3, 5)]
    assert [b["anchor"]["pixel_values"].shape[0] for b in batches] == [4, 4, 4, 2]
    assert [b["anchor_ids"].shape[0] for b in batches] == [8, 8, 8, 5]
    whole = in_process(batcher, BatchCollator(collator.preprocess), 0)
    assert torch.equal(batches[3]["anchor"]["pixel_values"],
                       whole[3]["anchor"]["pixel_values"][3:5])
    with pytest.raises(ValueError, match=r"start must be in \[0, 4\], got 5"):
        next(loader.batches(0, 5))
    with pytest.raises(ValueError, match="num_workers must be at least 0, got -1"):
        BatchLoader(batcher, collator, num_workers=-1)


class Pid:
    """Records the process that preprocessed each batch."""

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        import os

        return {"pid": torch.full((len(items),), os.getpid())}


@pytest.mark.parametrize("workers", [0, 2])
def test_preprocessing_runs_in_the_workers(workers: int) -> None:
    import os

    batcher = PairBatcher(text_records(12), batch_size=2, seed=0)
    pids = {int(batch["anchor"]["pid"][0])
            for batch in BatchLoader(batcher, BatchCollator(Pid()), num_workers=workers)
            .batches(0)}
    assert pids == ({os.getpid()} if workers == 0 else pids - {os.getpid()})
    assert len(pids) == max(workers, 1)
