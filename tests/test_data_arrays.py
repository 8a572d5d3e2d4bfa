"""``.npz`` array files: columns and metadata, image rows, shapes, and files that are not right.

Every fault is one line naming the file (and the array or the row); nothing is loaded with
pickle.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contralign.core.errors import DataError
from contralign.core.items import ImageItem
from contralign.data import DataConfig, load_records, read_header, read_rows
from contralign.data import lines as data_lines


def npz(path: Path, compressed: bool = False, **arrays: Any) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def images(n: int, h: int = 4, w: int = 5, channels: int | None = 3, seed: int = 0) -> np.ndarray:
    shape = (n, h, w) if channels is None else (n, h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def error_of(path: Path, **options: Any) -> str:
    with pytest.raises(DataError) as info:
        load_records(DataConfig(path=str(path), **options))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- the real file -------------------------------------------------------------------------------


def test_real_cifar_part(shared_data: Path) -> None:
    path = shared_data / "images" / "cifar10-part-a.npz"
    with np.load(path, allow_pickle=False) as arrays:
        pixels, labels = arrays["images"], arrays["labels"]
    assert read_header(path) == ["images", "labels"]  # classes (10,) is metadata, not a column
    result = load_records(DataConfig(path=str(path)))
    assert result.roles == ("anchor", "label")
    assert result.modalities == {"anchor": "image"}
    records = result.records
    assert len(records) == 5000 and [r.line for r in records] == list(range(1, 5001))
    for index in (0, 1234, 4999):
        item = records[index].anchor
        assert isinstance(item, ImageItem) and item.array is not None
        assert np.array_equal(item.array, pixels[index]) and not item.array.flags.writeable
        assert item.key == f"{path.resolve()}#{index + 1}"
        assert records[index].label == str(labels[index])
    assert {r.label for r in records} == {"0", "1", "2", "3", "4"}
    assert len({r.anchor for r in records}) == 5000  # each row is its own image


# --- columns and metadata ------------------------------------------------------------------------


def test_columns_metadata_and_row_values(tmp_path: Path) -> None:
    path = npz(tmp_path / "d.npz", images=images(3), labels=np.array([2, 0, 1]),
               names=np.array(["x", "y", "z"]), classes=np.array(["a", "b", "c", "d"]),
               weights=np.array([0.5, 1.0, 2.0], dtype=np.float32))
    assert read_header(path) == ["images", "labels", "names", "weights"]
    rows = list(read_rows(path))
    assert [line for line, _ in rows] == [1, 2, 3]
    line, row = rows[2]
    assert (row["labels"], row["names"], row["weights"]) == (1, "z", 2.0)
    assert type(row["labels"]) is int and type(row["names"]) is str
    assert row["images"].shape == (4, 5, 3) and not row["images"].flags.writeable


def test_metadata_of_the_same_length_is_a_column_too(tmp_path: Path) -> None:
    path = npz(tmp_path / "d.npz", texts=np.array(["x", "y"]), classes=np.array(["a", "b"]))
    assert read_header(path) == ["texts", "classes"]


def test_one_dimensional_files_take_the_longest_array_as_rows(tmp_path: Path) -> None:
    path = npz(tmp_path / "d.npz", anchor=np.array(["q1", "q2", "q3"]),
               positive=np.array(["d1", "d2", "d3"]), classes=np.array(["a", "b"]))
    result = load_records(DataConfig(path=str(path)))
    assert [(r.anchor, r.positive, r.line) for r in result.records] == [
        ("q1", "d1", 1), ("q2", "d2", 2), ("q3", "d3", 3)]
    assert result.modalities == {"anchor": "text", "positive": "text"}


def test_explicit_columns_and_compressed_files(tmp_path: Path) -> None:
    pixels = images(4, seed=3)
    path = npz(tmp_path / "d.npz", compressed=True, pics=pixels, y=np.array([1, 1, 0, 1]),
               text=np.array(["a", "b", "c", "d"]))
    result = load_records(DataConfig(path=str(path), columns={"anchor": "text",
                                                              "positive": "pics", "label": "y"}))
    assert result.modalities == {"anchor": "text", "positive": "image"}
    record = result.records[3]
    assert record.anchor == "d" and record.label == "1"
    assert np.array_equal(record.positive.array, pixels[3])  # type: ignore[union-attr]


def test_grayscale_becomes_rgb_without_a_copy(tmp_path: Path) -> None:
    gray = images(2, channels=None, seed=4)
    one_channel = images(2, channels=1, seed=5)
    for pixels in (gray, one_channel):
        path = npz(tmp_path / "g.npz", images=pixels)
        item = load_records(DataConfig(path=str(path))).records[1].anchor
        assert isinstance(item, ImageItem) and item.array is not None
        assert item.array.shape == (4, 5, 3) and item.array.dtype == np.uint8
        for channel in range(3):
            assert np.array_equal(item.array[..., channel], pixels[1].reshape(4, 5))
        assert np.shares_memory(item.array, item.array.base) or item.array.strides[-1] == 0


def test_one_dimensional_image_columns_hold_paths_or_bytes(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"not decoded here")
    path = npz(tmp_path / "d.npz", anchor=np.array(["a.png", "a.png"]),
               positive=np.array([b"\x89PNG1", b"\x89PNG2"]), label=np.array([0, 1]))
    result = load_records(DataConfig(path=str(path), modalities={"anchor": "image",
                                                                 "positive": "image"}))
    first = result.records[0]
    assert first.anchor == ImageItem.from_path(tmp_path / "a.png")
    assert isinstance(first.positive, ImageItem) and first.positive.data == b"\x89PNG1"


def test_conventional_names_yield_to_role_names_and_captions(tmp_path: Path) -> None:
    path = npz(tmp_path / "d.npz", images=images(2), labels=np.array([0, 1]),
               anchor=np.array(["x", "y"]))
    result = load_records(DataConfig(path=str(path)))
    assert result.roles == ("anchor", "positive", "label")  # images go to the free role
    assert result.records[0].anchor == "x"
    path = npz(tmp_path / "e.npz", images=images(2), labels=np.array([0, 1]))
    captions = {"templates": ["a {label}"], "classes": ["cat", "dog"], "role": "anchor"}
    result = load_records(DataConfig(path=str(path), captions=captions))
    assert result.roles == ("anchor", "positive", "label")
    assert result.modalities == {"anchor": "text", "positive": "image"}
    assert [r.anchor for r in result.records] == ["a cat", "a dog"]


def test_bad_rows_are_skipped_with_described_raw_values(tmp_path: Path) -> None:
    path = npz(tmp_path / "d.npz", images=images(3), positive=np.array(["a", " ", "c"]))
    assert error_of(path) == f"{path}:2: positive: empty text"
    rejects = tmp_path / "r.jsonl"
    result = load_records(DataConfig(path=str(path), on_bad_record="skip", rejects=str(rejects)))
    assert [r.line for r in result.records] == [1, 3]
    entry = json.loads(rejects.read_text())
    assert entry["line"] == 2
    assert entry["raw"] == {"images": "<uint8 array of shape (4, 5, 3)>", "positive": " "}


# --- arrays that cannot be columns ---------------------------------------------------------------


@pytest.mark.parametrize(
    "arrays, options, message",
    [
        ({"images": images(2, channels=4)}, {},
         "images: expected images of shape (N, H, W, 3), or (N, H, W) for grayscale, got "
         "(2, 4, 5, 4) (mapped to anchor)"),
        ({"images": images(2).astype(np.float32)}, {},
         "images: expected uint8 pixels (0..255), got float32: save them as uint8 (mapped to "
         "anchor)"),
        ({"images": np.zeros((2, 0, 5, 3), np.uint8)}, {},
         "images: holds images of no pixels: (2, 0, 5, 3) (mapped to anchor)"),
        ({"anchor": np.zeros((2, 7), np.float32)}, {},
         "anchor: is an array of shape (2, 7), but anchor takes its texts from a 1-D array "
         "(mapped to anchor)"),
        ({"images": images(2)}, {"modalities": {"anchor": "text"}},
         "images: is an array of shape (2, 4, 5, 3), but anchor takes its texts from a 1-D "
         "array (images? set modalities: {anchor: image}) (mapped to anchor)"),
        ({"images": images(2), "labels": np.zeros((2, 3), np.int64)}, {},
         "labels: is an array of shape (2, 3), but label takes its labels from a 1-D array "
         "(mapped to label)"),
        ({"anchor": np.array([1, 2])}, {"modalities": {"anchor": "image"}},
         "anchor: is a 1-D int64 array; images are a (N, H, W, 3) uint8 array, paths or "
         "encoded bytes (mapped to anchor)"),
        ({"images": images(3), "masks": images(2)}, {},
         "masks: has 2 rows, but images has 3: the arrays of a file are the columns of its "
         "records and need the same number of rows"),
        ({"classes": np.array(["a"]), "images": images(2)}, {"columns": {"anchor": "classes"}},
         "classes: no such column (mapped to anchor); available columns: images"),
    ],
    ids=["rgba", "float", "empty-images", "2d-text", "images-as-text", "2d-label", "ints-as-image",
         "row-mismatch", "metadata-is-not-a-column"],
)
def test_arrays_that_cannot_play_their_role(tmp_path: Path, arrays: dict[str, np.ndarray],
                                            options: dict[str, Any], message: str) -> None:
    path = npz(tmp_path / "d.npz", **arrays)
    for mode in ("error", "skip"):  # a file-level fault: even skip stops, writing nothing
        rejects = tmp_path / "r.jsonl"
        assert error_of(path, on_bad_record=mode, rejects=str(rejects), **options) == \
            f"{path}: {message}"
        assert not rejects.exists()


# --- files that are not right --------------------------------------------------------------------


def valid_npz_bytes(compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buffer, images=images(6), labels=np.arange(6), classes=np.array(["a", "b"]))
    return buffer.getvalue()


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    path = npz(tmp_path / "d.npz", images=images(2),
               names=np.array(["a", None], dtype=object))
    assert error_of(path) == (
        f"{path}: names: holds Python objects (dtype object), which are not loaded (loading "
        "them would run pickle); save strings as a fixed-width string array: "
        "numpy.array(values, dtype=str)")


@pytest.mark.parametrize(
    "content, reason",
    [
        (valid_npz_bytes()[: len(valid_npz_bytes()) // 2], "File is not a zip file"),
        (valid_npz_bytes(True)[:-30], "File is not a zip file"),
        (b"", "File is not a zip file"),
        (b"anchor,positive\na,b\n", "File is not a zip file"),
    ],
    ids=["cut-in-half", "truncated-compressed", "empty", "csv"],
)
def test_unreadable_archives_are_one_line(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(content)
    assert error_of(path) == f"{path}: not a readable .npz file: {reason}"


def test_a_single_npy_array_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with path.open("wb") as f:
        np.save(f, images(2))
    assert error_of(path) == f"{path}: not a readable .npz file: File is not a zip file"


def test_a_header_that_claims_more_data_than_the_file_holds(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, images=images(200))  # larger than zipfile's first read: no CRC check yet
    content = buffer.getvalue()
    # The header dict is text padded with spaces: claim 200,000 images instead of 200, in the
    # same number of bytes (the zip offsets stay right; only the CRC, read last, is wrong).
    damaged = content.replace(b"(200, 4, 5, 3), }    ", b"(200000, 4, 5, 3), }    "[:-3], 1)
    assert damaged != content and len(damaged) == len(content)
    path = tmp_path / "d.npz"
    path.write_bytes(damaged)
    assert error_of(path) == (f"{path}: images: damaged: its header says (200000, 4, 5, 3) "
                              "uint8 (12000000 bytes), but it holds 12000 bytes")


def test_damaged_array_data_is_one_line(tmp_path: Path) -> None:
    content = bytearray(valid_npz_bytes(compressed=True))
    with zipfile.ZipFile(io.BytesIO(bytes(content))) as archive:
        member = archive.getinfo("images.npy")
    start = member.header_offset + 30 + len(member.filename) + 40  # inside the deflate stream
    content[start : start + 8] = b"\x00\xff" * 4
    path = tmp_path / "d.npz"
    path.write_bytes(bytes(content))
    assert error_of(path).startswith(f"{path}: not a readable .npz file: Error -3 while "
                                     "decompressing data")


def test_an_archive_without_arrays(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no arrays here")
    assert error_of(path) == f"{path}: holds no arrays (write one with numpy.savez)"


@pytest.mark.parametrize("what", ["folder", "missing", "denied"])
def test_paths_that_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   what: str) -> None:
    path = tmp_path / "d.npz"
    if what == "folder":
        path.mkdir()
        expected = "is a folder, not a file"
    elif what == "missing":
        expected = "file not found"
    else:
        path.write_bytes(valid_npz_bytes())

        def refuse(p: Path) -> Any:
            raise PermissionError(13, "Permission denied", str(p))

        monkeypatch.setattr(data_lines, "open_binary", refuse)
        expected = "cannot read the file: Permission denied"
    assert error_of(path) == f"{path}: {expected}"
