"""Property tests of every reader: any bytes give valid records or one one-line DataError.

Inputs are random bytes, random mixes of the characters that give each format its structure
(quotes, delimiters, line ends, braces, escapes, bytes that are not UTF-8), truncations of valid
files and valid files with a few bytes overwritten; for ``.npz`` files also archives of random
arrays (any shape, dtype and name, object arrays included), with and without captions; for
image columns, random paths. Each goes through ``load_records`` in both ``on_bad_record``
modes; anything but a record set or a ``DataError`` fails the test.
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contralign.core.errors import DataError
from contralign.core.items import ImageItem
from contralign.data import DataConfig, RecordSet, load_records

PROPERTY_SETTINGS = settings(
    max_examples=120, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

VALID_TEXT = {
    "jsonl": "".join(
        json.dumps({"anchor": f"q{i}, \"x\"", "positive": f"d{i}\tz", "score": i / 2}) + "\n"
        for i in range(4)
    ),
    "csv": 'anchor,positive,score\nq0,d0,1\n"q,1","two\nlines",2\n"say ""hi""",d2,3\n',
    "tsv": 'anchor\tpositive\tscore\nq0\td0\t1\n"q\t1"\t"two\nlines"\t2\nq2\td2\t3\n',
    "txt": "first line\n\nsecond, \"line\"\n  third\tline\n",
}
HEADERS = {"jsonl": b"", "csv": b"anchor,positive\n", "tsv": b"anchor\tpositive\n", "txt": b""}
TOKENS = [
    b'"', b'""', b",", b"\t", b"\n", b"\r\n", b"\r", b" ", b"{", b"}", b"[", b"]", b":",
    b'"anchor"', b'"positive"', b'"score"', b"anchor", b"positive", b"score", b"null", b"1.5",
    b"NaN", b"1" + b"0" * 400, b"\\", b'\\"', b"\\u", b"\\ud800", b"x", "é".encode(), b"\x00",
    b"\xe9", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"\x0b", "\u2028".encode(), b"[" * 3000,
]


def parquet_bytes() -> bytes:
    table = pa.table({
        "anchor": ["q0", "q1 \"x\"", None, "q3"],
        "positive": ["d0", "d1", "d2", ""],
        "score": [0.5, 1.0, float("nan"), 2.0],
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=2)
    return buffer.getvalue()


VALID_PARQUET = parquet_bytes()


@st.composite
def damaged(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` cut short, or with a few bytes overwritten."""
    if draw(st.booleans()):
        return valid[: draw(st.integers(0, len(valid)))]
    content = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        content[draw(st.integers(0, len(content) - 1))] = draw(st.integers(0, 255))
    return bytes(content)


def text_inputs(fmt: str) -> st.SearchStrategy[bytes]:
    valid = VALID_TEXT[fmt].encode()
    tokens = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)
    structure = st.text(alphabet="\"',\t\n\r{}[]:\\ ax", max_size=60).map(str.encode)
    return st.one_of(
        st.binary(max_size=200),
        tokens,
        tokens.map(lambda body: HEADERS[fmt] + body),  # past the header, into the records
        structure.map(lambda body: HEADERS[fmt] + body),
        damaged(valid),
    )


PARQUET_INPUTS = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda body: b"PAR1" + body + b"PAR1"),
    damaged(VALID_PARQUET),
)


def npz_bytes(compressed: bool = False, **arrays: Any) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


VALID_NPZ = npz_bytes(images=np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3),
                      labels=np.array([0, 1, 1, 0]), classes=np.array(["cat", "dog"]),
                      anchor=np.array(["a", "b c", "d", "e"]))
VALID_NPZ_COMPRESSED = npz_bytes(compressed=True, images=np.zeros((3, 2, 2), np.uint8),
                                 labels=np.array([1, 0, 1]), classes=np.array(["x", "y"]))
NPZ_NAMES = ["images", "image", "labels", "label", "anchor", "positive", "negative", "score",
             "classes", "x"]
NPZ_TEXTS = st.lists(st.one_of(st.text(max_size=4),
                               st.sampled_from(["", " ", "\ud800", "a\nb", "x.png"])),
                     max_size=6)


@st.composite
def npz_array(draw: st.DrawFn, rows: int) -> np.ndarray:
    """An array of ``rows`` rows (sometimes another count) of any kind an .npz file may hold."""
    n = draw(st.sampled_from([rows, rows, rows, rows + 1, 1]))
    kind = draw(st.sampled_from(["rgb", "rgb", "gray", "rgba", "float-image", "empty-image",
                                 "int", "float", "str", "str", "bytes", "bool", "object", "2d",
                                 "scalar"]))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    match kind:
        case "rgb" | "gray" | "rgba":
            channels = {"rgb": (3,), "gray": (), "rgba": (4,)}[kind]
            return np.full((n, h, w, *channels), draw(st.integers(0, 255)), np.uint8)
        case "float-image":
            return np.zeros((n, h, w, 3), np.float32)
        case "empty-image":
            return np.zeros((n, 0, w, 3), np.uint8)
        case "int":
            return np.array(draw(st.lists(st.integers(-3, 12), min_size=n, max_size=n)),
                            dtype=np.int64)
        case "float":
            return np.array(draw(st.lists(st.floats(), min_size=n, max_size=n)), np.float64)
        case "str":
            texts = draw(NPZ_TEXTS)
            return np.array((texts * n)[:n] if texts else [""] * n, dtype=str)
        case "bytes":
            return np.array([b"\x89PNG"[: i % 5] for i in range(n)], dtype="S5")
        case "bool":
            return np.zeros(n, bool)
        case "object":
            return np.array(["a"] * n + [None], dtype=object)[:n] if n else \
                np.empty(0, dtype=object)
        case "2d":
            return np.zeros((n, 2), np.int64)
    return np.array(draw(st.integers(0, 9)))


@st.composite
def npz_archives(draw: st.DrawFn) -> bytes:
    """Mostly an anchor-like array, labels and class names (so that records and captions come
    out), with arrays of any kind beside and instead of them."""
    rows = draw(st.sampled_from([3, 1, 4, 0]))
    names = [draw(st.sampled_from(["images", "images", "image", "anchor", "x"]))]
    names += draw(st.lists(st.sampled_from(NPZ_NAMES), max_size=3, unique=True))
    arrays = {name: draw(npz_array(rows)) for name in dict.fromkeys(names)}
    if draw(st.sampled_from([True, False])):
        arrays["labels"] = np.array(draw(st.lists(st.sampled_from([0, 1, 2, 5, -1]),
                                                  min_size=rows, max_size=rows)), np.int64)
    if draw(st.sampled_from([True, True, False])):
        names = st.sampled_from(["cat", "dog", "a bird", "é", "", " ", "\ud800"])
        arrays["classes"] = np.array(draw(st.lists(names, min_size=1, max_size=3)), dtype=str)
    return npz_bytes(compressed=draw(st.booleans()), **arrays)


NPZ_INPUTS = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda body: b"PK\x03\x04" + body),
    damaged(VALID_NPZ),
    damaged(VALID_NPZ_COMPRESSED),
    npz_archives(),
)


def one_line_error(path: Path, rejects: Path, error: DataError) -> str:
    message = str(error)
    assert len(message.splitlines()) == 1 and message == message.strip(), message
    assert message.startswith((f"{path}", f"{rejects}")), message
    # The quote diagnosis always agrees with csv.reader (its fallback text never shows).
    assert "malformed CSV row" not in message
    return message


def check_records(result: RecordSet) -> None:
    lines = [record.line for record in result.records]
    assert lines == sorted(set(lines)) and all(line >= 1 for line in lines)
    for record in result.records:
        for item in (record.anchor, record.positive, *record.negatives):
            if isinstance(item, ImageItem):
                assert item.key
                if item.array is not None:  # what an image tower's preprocessor can take
                    assert item.array.dtype == np.uint8 and item.array.ndim == 3
                    assert item.array.shape[2] == 3 and 0 not in item.array.shape
                elif item.path is not None:
                    assert item.path.is_file()
                else:
                    assert item.data
            elif item is not None:
                assert item and item == item.strip()
                item.encode("utf-8")  # valid Unicode: a tokenizer or a file can take it
        if record.captions is not None:
            assert all(text.encode("utf-8") for text in record.captions.texts)


def load_both_ways(path: Path, content: bytes, **options: Any) -> None:
    """``load_records`` in error and skip mode: records or one-line errors, consistent."""
    path.write_bytes(content)
    rejects = path.with_name("rejects.jsonl")
    rejects.unlink(missing_ok=True)
    try:
        strict: RecordSet | None = load_records(DataConfig(path=str(path), **options))
        error = None
    except DataError as exc:
        strict, error = None, one_line_error(path, rejects, exc)
    assert not rejects.exists()
    try:
        lenient = load_records(DataConfig(path=str(path), on_bad_record="skip",
                                          rejects=str(rejects), **options))
    except DataError as exc:
        one_line_error(path, rejects, exc)
        assert strict is None  # a file that reads cleanly reads the same under skip
        return
    check_records(lenient)
    # JSON lines end at \n only: str.splitlines would also split at a U+2028 inside a value.
    text = rejects.read_text("utf-8") if rejects.exists() else ""
    entries = [json.loads(line) for line in text.split("\n")[:-1]]
    assert len(entries) == lenient.skipped
    assert all(entry["file"] == str(path) and "\n" not in entry["error"] for entry in entries)
    if strict is not None:
        check_records(strict)
        assert strict.records == lenient.records and lenient.skipped == 0
    else:
        # The record that stopped the strict run is the first one skipped.
        assert lenient.skipped_examples[:1] == [error]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "txt"])
@PROPERTY_SETTINGS
@given(data=st.data())
def test_text_readers_give_records_or_one_line_errors(
    tmp_path: Path, fmt: str, data: st.DataObject
) -> None:
    load_both_ways(tmp_path / f"d.{fmt}", data.draw(text_inputs(fmt)))


@PROPERTY_SETTINGS
@given(content=PARQUET_INPUTS)
def test_parquet_reader_gives_records_or_one_line_errors(tmp_path: Path, content: bytes) -> None:
    load_both_ways(tmp_path / "d.parquet", content)


CAPTIONS = {"templates": ["a photo of a {label}.", "{label}"], "classes": "classes"}


@pytest.mark.parametrize("options", [{}, {"captions": CAPTIONS}], ids=["plain", "captions"])
@PROPERTY_SETTINGS
@given(content=NPZ_INPUTS)
def test_npz_reader_gives_records_or_one_line_errors(
    tmp_path: Path, options: dict[str, Any], content: bytes
) -> None:
    load_both_ways(tmp_path / "d.npz", content, **options)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@PROPERTY_SETTINGS
@given(data=st.data())
def test_image_paths_give_records_or_one_line_errors(
    tmp_path: Path, fmt: str, data: st.DataObject
) -> None:
    for name in ("x", "anchor", "positive"):  # paths that exist, among the random ones
        (tmp_path / name).write_bytes(b"an image")
    (tmp_path / "folder").mkdir(exist_ok=True)
    load_both_ways(tmp_path / f"d.{fmt}", data.draw(text_inputs(fmt)),
                   modalities={"anchor": "image"})


def test_the_valid_inputs_are_valid(tmp_path: Path) -> None:
    """The files the damage starts from read cleanly, so damage is what the tests exercise."""
    for fmt, text in VALID_TEXT.items():
        path = tmp_path / f"d.{fmt}"
        path.write_text(text, encoding="utf-8")
        assert load_records(DataConfig(path=str(path))).records
    path = tmp_path / "d.parquet"
    path.write_bytes(VALID_PARQUET)
    result = load_records(DataConfig(path=str(path), on_bad_record="skip",
                                     rejects=str(tmp_path / "r.jsonl")))
    assert [record.line for record in result.records] == [1, 2] and result.skipped == 2
    path = tmp_path / "d.npz"
    path.write_bytes(VALID_NPZ)
    for options in ({}, {"captions": CAPTIONS}):
        result = load_records(DataConfig(path=str(path), **options))
        assert result.roles == ("anchor", "positive", "label") and len(result.records) == 4
    path.write_bytes(VALID_NPZ_COMPRESSED)
    result = load_records(DataConfig(path=str(path), captions=CAPTIONS))
    assert [(r.positive, r.line) for r in result.records] == [
        ("a photo of a y.", 1), ("a photo of a x.", 2), ("a photo of a y.", 3)]
