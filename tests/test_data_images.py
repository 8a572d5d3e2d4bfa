"""Image columns: paths relative to the data file, encoded bytes in parquet, modalities per role.

Images are checked where they enter (the file exists and is a file; bytes are not empty) and
decoded by the image tower later; here a decode with Pillow proves the item points at the image
that was written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from contralign.core.errors import DataError
from contralign.core.items import ImageItem, item_key
from contralign.data import DataConfig, Record, collate, load_records, text_id


def png(path: Path, seed: int, size: tuple[int, int] = (4, 3)) -> np.ndarray:
    """Write a small random RGB PNG; its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def png_bytes(seed: int) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), pixels


def decoded(item: Any) -> np.ndarray:
    assert isinstance(item, ImageItem)
    source = item.path if item.path is not None else io.BytesIO(item.data or b"")
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


def error_of(path: Path, **options: Any) -> str:
    with pytest.raises(DataError) as info:
        load_records(DataConfig(path=str(path), **options))
    message = str(info.value)
    assert "\n" not in message
    return message


# --- paths ---------------------------------------------------------------------------------------


def test_csv_paths_are_relative_to_the_data_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    cat, dog = png(data / "img" / "cat.png", 1), png(data / "img" / "dog.png", 2)
    (data / "pairs.csv").write_text("image,caption\nimg/cat.png,a cat\n img/dog.png ,a dog\n",
                                    encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = load_records(DataConfig(path=str(data / "pairs.csv"),
                                     columns={"anchor": "image", "positive": "caption"},
                                     modalities={"anchor": "image"}))
    assert result.modalities == {"anchor": "image", "positive": "text"}
    first, second = result.records
    assert isinstance(first.anchor, ImageItem) and first.positive == "a cat"
    assert first.anchor.path == (data / "img" / "cat.png").resolve()
    assert first.anchor.key == str((data / "img" / "cat.png").resolve())
    assert np.array_equal(decoded(first.anchor), cat)
    assert np.array_equal(decoded(second.anchor), dog)  # spaces around a path are dropped
    assert (first.line, second.line) == (2, 3)


def test_relative_data_path_and_absolute_image_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = png(tmp_path / "shared" / "x.png", 3)
    absolute = tmp_path / "shared" / "x.png"
    rows = [{"anchor": str(absolute), "positive": "x"}, {"anchor": "../shared/x.png",
                                                         "positive": "y"}]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows),
                                               encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    records = load_records(DataConfig(path="d/rows.jsonl", modalities={"anchor": "image"})).records
    assert [r.anchor for r in records] == [ImageItem.from_path(absolute)] * 2
    assert all(np.array_equal(decoded(r.anchor), pixels) for r in records)


def test_txt_file_of_image_paths(tmp_path: Path) -> None:
    png(tmp_path / "a.png", 4)
    png(tmp_path / "b.png", 5)
    path = tmp_path / "images.txt"
    path.write_text("a.png\n\nb.png\n", encoding="utf-8")
    records = load_records(DataConfig(path=str(path), modalities={"anchor": "image"})).records
    assert [(Path(str(r.anchor.key)).name, r.line) for r in records  # type: ignore[union-attr]
            ] == [("a.png", 1), ("b.png", 3)]


@pytest.mark.parametrize(
    "value, problem",
    [
        ("img/missing.png", "image file not found: {folder}/img/missing.png"),
        ("img", "is a folder, not an image file: {folder}/img"),
        ("   ", "empty image path"),
        (None, "missing value (null)"),
        (42, "expected an image path, image bytes or an array, got a number"),
        (["a.png"], "expected an image path, image bytes or an array, got an array"),
        ("a\u0000b.png", "not a path: it holds a NUL character: 'a\\x00b.png'"),
        ("x\ud800.png", "not valid Unicode: a lone surrogate at character 2"),
        ("new\nline.png", "image file not found: '{folder}/new\\nline.png'"),
        ("x" * 5000 + ".png", "cannot check the image file"),
    ],
    ids=["missing", "folder", "blank", "null", "number", "list", "nul", "surrogate", "newline",
         "too-long"],
)
def test_a_bad_image_path_is_one_line_at_its_line(tmp_path: Path, value: Any,
                                                   problem: str) -> None:
    png(tmp_path / "img" / "ok.png", 6)
    path = tmp_path / "d.jsonl"
    rows = [{"anchor": "img/ok.png", "positive": "fine"}, {"anchor": value, "positive": "bad"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    message = error_of(path, modalities={"anchor": "image"})
    assert message.startswith(f"{path}:2: anchor: {problem.format(folder=tmp_path)}")

    rejects = tmp_path / "rejects.jsonl"
    result = load_records(DataConfig(path=str(path), modalities={"anchor": "image"},
                                     on_bad_record="skip", rejects=str(rejects)))
    assert [r.line for r in result.records] == [1] and result.skipped == 1
    entry = json.loads(rejects.read_text("utf-8"))
    assert (entry["line"], entry["field"]) == (2, "anchor")
    assert f"{path}:2: anchor: {entry['error']}" == message


def test_special_file_is_not_an_image(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "pipe.png")
    path = tmp_path / "d.csv"
    path.write_text("anchor\npipe.png\n", encoding="utf-8")
    assert error_of(path, modalities={"anchor": "image"}) == (
        f"{path}:2: anchor: not a regular file: {tmp_path / 'pipe.png'}")


# --- bytes ---------------------------------------------------------------------------------------


def test_parquet_image_bytes_and_image_structs(tmp_path: Path) -> None:
    (one, pixels_one), (two, pixels_two) = png_bytes(7), png_bytes(8)
    png(tmp_path / "three.png", 9)
    structs = pa.array([{"bytes": two, "path": "ignored.png"}, {"bytes": None,
                                                                "path": "three.png"}])
    table = pa.table({"anchor": pa.array([one, one], pa.binary()), "positive": structs,
                      "caption": ["first", "second"]})
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    records = load_records(DataConfig(path=str(path), modalities={"anchor": "image",
                                                                  "positive": "image"})).records
    first, second = records
    assert isinstance(first.anchor, ImageItem) and first.anchor.data == one
    assert first.anchor.key.startswith("sha256:") and first.anchor == second.anchor
    assert np.array_equal(decoded(first.anchor), pixels_one)
    assert np.array_equal(decoded(first.positive), pixels_two)  # the bytes of a struct win
    assert second.positive == ImageItem.from_path(tmp_path / "three.png")  # else its path


@pytest.mark.parametrize("value, problem", [(b"", "empty image bytes"),
                                            (None, "missing value (null)")])
def test_bad_parquet_image_bytes(tmp_path: Path, value: bytes | None, problem: str) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"anchor": pa.array([png_bytes(1)[0], value], pa.binary())}), path)
    assert error_of(path, modalities={"anchor": "image"}) == f"{path}:2: anchor: {problem}"


def test_rejects_describe_image_bytes_instead_of_copying_them(tmp_path: Path) -> None:
    image = png_bytes(2)[0] * 10  # long enough to be described
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"anchor": pa.array([image, image], pa.binary()),
                             "score": [1.0, None]}), path)
    rejects = tmp_path / "r.jsonl"
    result = load_records(DataConfig(path=str(path), modalities={"anchor": "image"},
                                     on_bad_record="skip", rejects=str(rejects)))
    assert result.skipped == 1
    assert json.loads(rejects.read_text())["raw"] == {"anchor": f"<{len(image)} bytes>",
                                                      "score": None}


def test_image_bytes_as_text_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"anchor": pa.array([b"\x89PNG"], pa.binary())}), path)
    assert error_of(path) == f"{path}:1: anchor: expected text, got bytes: b'\\x89PNG'"


# --- modalities ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "modalities, match",
    [({"label": "image"}, "'label' is not a role that holds items"),
     ({"negative_2": "image"}, "'negative_2' is not a role that holds items"),
     ({"anchor": "audio"}, "Input should be 'text' or 'image'")],
)
def test_modalities_are_checked_when_the_config_is_built(modalities: dict[str, str],
                                                         match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        DataConfig(path="d.csv", modalities=modalities)


def test_a_modality_for_a_role_the_data_lacks(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("anchor\nx\n", encoding="utf-8")
    assert error_of(path, modalities={"positive": "image"}) == (
        f"{path}: data.modalities: positive: the data has no positive column (item roles: "
        "anchor)")


def test_negatives_hold_what_the_positive_holds(tmp_path: Path) -> None:
    for name in ("p", "n1", "n2"):
        png(tmp_path / f"{name}.png", len(name))
    path = tmp_path / "d.csv"
    path.write_text("anchor,positive,negative,negative_2\nquery,p.png,n1.png,n2.png\n",
                    encoding="utf-8")
    result = load_records(DataConfig(path=str(path), modalities={"positive": "image"}))
    assert result.modalities == {"anchor": "text", "positive": "image", "negative": "image"}
    (record,) = result.records
    assert record.anchor == "query"
    assert [Path(n.key).name for n in record.negatives] == ["n1.png", "n2.png"]  # type: ignore
    # Saying so overrides it.
    text_negatives = load_records(DataConfig(path=str(path), modalities={
        "positive": "image", "negative": "text"})).records[0]
    assert text_negatives.negatives == ("n1.png", "n2.png")


def test_image_ids_mask_duplicates_and_never_equal_a_texts(tmp_path: Path) -> None:
    png(tmp_path / "a.png", 1)
    png(tmp_path / "b.png", 2)
    a, b = ImageItem.from_path(tmp_path / "a.png"), ImageItem.from_path(tmp_path / "b.png")
    records = [Record(anchor=a, positive="x"), Record(anchor=b, positive="y"),
               Record(anchor=ImageItem.from_path(tmp_path / "." / "a.png"), positive=a.key)]
    batch = collate(records, {"anchor": lambda items: {"n": np.arange(len(items))},
                              "positive": lambda texts: {"n": np.arange(len(texts))}})
    ids = batch["anchor_ids"].tolist()
    assert ids[0] == ids[2] != ids[1]  # the same file by two spellings: one image
    assert ids[0] == text_id(item_key(a))
    assert batch["positive_ids"][2] == text_id(a.key) != ids[0]  # the key as text is a text
