"""Property tests of every reader: any bytes give valid records or one one-line DataError.

Inputs are random bytes, random mixes of the characters that give each format its structure
(quotes, delimiters, line ends, braces, escapes, bytes that are not UTF-8), truncations of valid
files and valid files with a few bytes overwritten. Each goes through ``load_records`` in both
``on_bad_record`` modes; anything but a record set or a ``DataError`` fails the test.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contralign.core.errors import DataError
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
        for text in (record.anchor, record.positive, *record.negatives):
            if text is not None:
                assert text and text == text.strip()
                text.encode("utf-8")  # valid Unicode: a tokenizer or a file can take it


def load_both_ways(path: Path, content: bytes) -> None:
    """``load_records`` in error and skip mode: records or one-line errors, consistent."""
    path.write_bytes(content)
    rejects = path.with_name("rejects.jsonl")
    rejects.unlink(missing_ok=True)
    try:
        strict: RecordSet | None = load_records(DataConfig(path=str(path)))
        error = None
    except DataError as exc:
        strict, error = None, one_line_error(path, rejects, exc)
    assert not rejects.exists()
    try:
        lenient = load_records(DataConfig(path=str(path), on_bad_record="skip",
                                          rejects=str(rejects)))
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
