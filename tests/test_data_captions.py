"""Captions from class labels: templates, classes, and per-epoch draws that are deterministic,
independent of batching and resumable."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from contralign.core.errors import DataError
from contralign.data import (
    CaptionConfig,
    Captions,
    DataConfig,
    PairBatcher,
    Record,
    collate,
    draw_caption,
    load_records,
)
from contralign.data.views import view_rng

TEMPLATES = ["a photo of a {label}.", "a blurry photo of a {label}.", "art of the {label}"]


def texts_of(batch: dict[str, torch.Tensor]) -> list[str]:
    return ["".join(chr(int(c)) for c in row if c) for row in batch["input_ids"]]


def char_ids(texts: list[str]) -> dict[str, torch.Tensor]:
    width = max(len(t) for t in texts)
    ids = torch.zeros(len(texts), width, dtype=torch.long)
    for i, text in enumerate(texts):
        ids[i, : len(text)] = torch.tensor([ord(c) for c in text])
    return {"input_ids": ids}


def labelled_csv(tmp_path: Path, labels: list[Any]) -> Path:
    path = tmp_path / "d.csv"
    rows = "".join(f"text {i},{label}\n" for i, label in enumerate(labels))
    path.write_text("anchor,label\n" + rows, encoding="utf-8")
    return path


def error_of(path: Path, **options: Any) -> str:
    with pytest.raises(DataError) as info:
        load_records(DataConfig(path=str(path), **options))
    return str(info.value)


# --- the config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"templates": []}, "list at least one template"),
        ({"templates": ["a photo"]}, "template 'a photo': holds no {label}"),
        ({"templates": ["{label} and {other}"]}, "only {label} is filled in, not {other}"),
        ({"templates": ["a {label"]}, "not a template: .*write a literal brace"),
        ({"templates": ["{0} {label}"]}, "only {label} is filled in, not {0}"),
        ({"templates": ["{label}"], "classes": []}, "list at least one class name"),
        ({"templates": ["{label}"], "classes": ["cat", " "]}, "class 1 is an empty name"),
        ({"templates": ["{label}"], "classes": " "}, "name an array of the .npz file"),
        ({"templates": ["{label}"], "role": "negative"}, "Input should be 'anchor' or"),
        ({"templates": ["{label}"], "prompts": ["x"]}, "Extra inputs are not permitted"),
    ],
)
def test_caption_settings_are_checked_when_built(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        CaptionConfig(**settings)


def test_literal_braces_and_format_specs() -> None:
    config = CaptionConfig(templates=["{{{label}}}", "{label!r:>6}"])
    assert [t.format(label="cat") for t in config.templates] == ["{cat}", " 'cat'"]


# --- classes -------------------------------------------------------------------------------------


def test_integer_labels_index_classes_and_names_name_them(tmp_path: Path) -> None:
    path = labelled_csv(tmp_path, [0, 2, "dog", 1])
    captions = {"templates": ["a photo of a {label}."], "classes": ["cat", "dog", "bird"]}
    result = load_records(DataConfig(path=str(path), captions=captions))
    assert result.roles == ("anchor", "positive", "label")
    assert result.modalities == {"anchor": "text", "positive": "text"}
    assert [r.positive for r in result.records] == [
        "a photo of a cat.", "a photo of a bird.", "a photo of a dog.", "a photo of a dog."]
    assert [r.label for r in result.records] == ["0", "2", "dog", "1"]
    # One Captions object per class, shared by its records.
    assert result.records[2].captions is result.records[3].captions


def test_without_classes_the_label_is_the_name(tmp_path: Path) -> None:
    path = labelled_csv(tmp_path, ["tabby cat", "dog"])
    records = load_records(DataConfig(path=str(path), captions={"templates": TEMPLATES})).records
    assert records[0].captions == Captions("positive", (
        "a photo of a tabby cat.", "a blurry photo of a tabby cat.", "art of the tabby cat"))
    assert records[0].positive == "a photo of a tabby cat."  # the first template's


def test_classes_from_an_npz_array(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((3, 2, 2, 3), np.uint8), labels=np.array([1, 0, 1]),
             classes=np.array(["airplane", "automobile"]), codes=np.array([b"x", b"y"]))
    result = load_records(DataConfig(path=str(path), captions={
        "templates": ["a photo of a {label}."], "classes": "classes"}))
    assert [r.positive for r in result.records] == [
        "a photo of a automobile.", "a photo of a airplane.", "a photo of a automobile."]
    byte_names = load_records(DataConfig(path=str(path), captions={
        "templates": ["{label}"], "classes": "codes"})).records
    assert [r.positive for r in byte_names] == ["y", "x", "y"]


def test_real_cifar_captions(shared_data: Path) -> None:
    path = shared_data / "images" / "cifar10-part-a.npz"
    records = load_records(DataConfig(path=str(path), captions={
        "templates": ["a photo of a {label}."], "classes": "classes"})).records
    assert Counter(r.positive for r in records) == {
        f"a photo of a {name}.": 1000 for name in ("airplane", "automobile", "bird", "cat", "deer")}


@pytest.mark.parametrize(
    "classes, message",
    [
        ("classes", "data.captions.classes: 'classes' names an array of an .npz file, but this "
                    "is a csv file: list the class names instead"),
    ],
)
def test_classes_that_name_an_array_of_a_csv(tmp_path: Path, classes: str, message: str) -> None:
    path = labelled_csv(tmp_path, [0])
    assert error_of(path, captions={"templates": ["{label}"], "classes": classes}) == \
        f"{path}: {message}"


@pytest.mark.parametrize(
    "classes, message",
    [
        ("names", "no 1-D array named 'names' (1-D arrays: labels, ids, blank)"),
        ("ids", "array 'ids' holds int64 values, not class names (a string array)"),
        ("blank", "class 1 of array 'blank' is an empty name"),
    ],
)
def test_bad_class_arrays(tmp_path: Path, classes: str, message: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 2, 2, 3), np.uint8), labels=np.array([0, 1]),
             ids=np.array([5, 6, 7]), blank=np.array(["a", " "]))
    assert error_of(path, captions={"templates": ["{label}"], "classes": classes}) == \
        f"{path}: data.captions.classes: {message}"


def test_a_label_outside_the_classes_is_a_bad_record(tmp_path: Path) -> None:
    path = labelled_csv(tmp_path, [0, 3, "fish", -1, 1])
    captions = {"templates": ["{label}"], "classes": ["cat", "dog", "bird"]}
    assert error_of(path, captions=captions) == (
        f"{path}:3: label: label '3' is not a class: expected an index in 0..2 or a class name "
        "('cat', 'dog', 'bird')")
    rejects = tmp_path / "r.jsonl"
    result = load_records(DataConfig(path=str(path), captions=captions, on_bad_record="skip",
                                     rejects=str(rejects)))
    assert [(r.line, r.positive) for r in result.records] == [(2, "cat"), (6, "dog")]
    assert [json.loads(line)["line"] for line in rejects.read_text().splitlines()] == [3, 4, 5]


def test_captions_need_a_label_and_a_free_role(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("anchor,positive,label\na,b,0\n", encoding="utf-8")
    assert error_of(path, captions={"templates": ["{label}"]}) == (
        f"{path}: data.captions.role: positive comes from captions, but column positive is "
        "mapped to it too: map it to another role or leave it out")
    assert error_of(path, columns={"anchor": "anchor"}, captions={"templates": ["{label}"]}) == (
        f"{path}: data.captions: captions are made from labels: map a label column "
        "(columns: {label: <column>})")
    assert error_of(path, columns={"anchor": "anchor", "label": "label"},
                    captions={"templates": ["{label}"]}, modalities={"positive": "image"}) == (
        f"{path}: data.modalities: positive: its texts are captions (data.captions.role), so it "
        "cannot hold images")


# --- draws ---------------------------------------------------------------------------------------


def caption_records(n: int) -> list[Record]:
    names = ["cat", "dog", "bird"]
    return [Record(anchor=f"image {i}", positive=TEMPLATES[0].format(label=names[i % 3]),
                   label=str(i % 3), line=i + 2,
                   captions=Captions("positive", tuple(t.format(label=names[i % 3])
                                                       for t in TEMPLATES)))
            for i in range(n)]


def test_a_draw_is_keyed_by_seed_epoch_and_line() -> None:
    records = caption_records(60)
    for record in records[:5]:
        assert record.captions is not None
        expected = record.captions.texts[
            view_rng("caption", 7, 3, record.line).randrange(len(TEMPLATES))]
        assert draw_caption(record.captions, 7, 3, record.line) == expected
    draws = {epoch: [draw_caption(r.captions, 7, epoch, r.line) for r in records  # type: ignore
                     ] for epoch in range(4)}
    assert draws[0] != draws[1] != draws[2]  # a new template each epoch
    chosen = {r.captions.texts.index(d) for r, d in zip(records, draws[0], strict=True)}  # type: ignore
    assert chosen == {0, 1, 2}  # every template is drawn
    assert [draw_caption(r.captions, 8, 0, r.line) for r in records] != draws[0]  # type: ignore
    single = Captions("positive", ("only one",))
    assert draw_caption(single, 7, 3, 2) == "only one"


def test_collate_draws_for_the_position_whatever_the_batch() -> None:
    records = caption_records(30)
    batcher = PairBatcher(records, batch_size=8, seed=5)
    for epoch in (0, 1):
        full = [collate(batch, char_ids, position=(5, epoch, k))
                for k, batch in enumerate(batcher.batches(epoch))]
        got = {r.line: text for k, batch in enumerate(batcher.batches(epoch))
               for r, text in zip(batch, texts_of(full[k]["positive"]), strict=True)}
        assert got == {r.line: draw_caption(r.captions, 5, epoch, r.line)  # type: ignore
                       for r in records}
        # Resumed at batch 2: the same captions as the uninterrupted epoch's tail.
        resumed = [collate(batch, char_ids, position=(5, epoch, k))
                   for k, batch in enumerate(batcher.batches(epoch, start=2), start=2)]
        assert [texts_of(b["positive"]) for b in resumed] == \
            [texts_of(b["positive"]) for b in full[2:]]
    # Another batch size (or another process's rows): each record draws the same.
    other = PairBatcher(records, batch_size=5, seed=5)
    got = {r.line: text for k, batch in enumerate(other.batches(1))
           for r, text in zip(batch, texts_of(collate(batch, char_ids, position=(5, 1, k))
                                                ["positive"]), strict=True)}
    assert got == {r.line: draw_caption(r.captions, 5, 1, r.line)  # type: ignore
                   for r in records}


def test_collate_without_a_position_keeps_the_first_template() -> None:
    records = caption_records(6)
    assert texts_of(collate(records, char_ids)["positive"]) == [r.positive for r in records]


def test_captions_as_the_anchor(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((4, 2, 2, 3), np.uint8), labels=np.array([0, 1, 0, 1]))
    records = load_records(DataConfig(path=str(path), captions={
        "templates": TEMPLATES, "classes": ["cat", "dog"], "role": "anchor"})).records
    batch = collate(records, {"anchor": char_ids, "positive": lambda items: {
        "n": torch.arange(len(items))}}, position=(0, 4, 0))
    assert texts_of(batch["anchor"]) == [draw_caption(r.captions, 0, 4, r.line)  # type: ignore
                                         for r in records]
    # Labels are present, so the positive ids are label ids: same class, masked.
    assert batch["positive_ids"][0] == batch["positive_ids"][2] != batch["positive_ids"][1]


def test_jsonl_roles_from_the_first_object_with_captions(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"anchor": "a", "label": "cat"}, {"anchor": "b", "label": "dog"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = load_records(DataConfig(path=str(path), captions={"templates": ["a {label}"]}))
    assert result.roles == ("anchor", "positive", "label")
    assert [(r.anchor, r.positive) for r in result.records] == [("a", "a cat"), ("b", "a dog")]
    rows[0]["positive"] = "also mapped"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert error_of(path, captions={"templates": ["a {label}"]}).startswith(
        f"{path}: data.captions.role: positive comes from captions, but column positive")
