"""Faults in data files and data paths: each is one line naming the file and line (issue 8).

Every case runs through ``load_records`` as a user's run would, in both ``on_bad_record`` modes:
``error`` stops at the first bad record with ``file:line: what is wrong``; ``skip`` counts it,
writes it to the rejects file with its line and reason, and reads on.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contralign.core.errors import DataError
from contralign.data import DataConfig, RecordSet, load_records, read_header, read_rows
from contralign.data import lines as data_lines

LATIN1_CAFE = "café".encode("latin-1")  # b"caf\xe9": the é is byte 0xe9, not UTF-8


def error_of(path: Path, **options: Any) -> str:
    with pytest.raises(DataError) as info:
        load_records(DataConfig(path=str(path), **options))
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


def skip(path: Path, rejects: Path, **options: Any) -> tuple[RecordSet, list[dict[str, Any]]]:
    """Load with ``on_bad_record: skip``; the records and the rejects file's entries."""
    result = load_records(
        DataConfig(path=str(path), on_bad_record="skip", rejects=str(rejects), **options)
    )
    entries = [json.loads(line) for line in rejects.read_text("utf-8").splitlines()]
    assert result.skipped == len(entries)
    return result, entries


def lines_of(result: RecordSet) -> list[tuple[int, str]]:
    return [(record.line, record.anchor) for record in result.records]


# --- 1. bytes that are not UTF-8 -----------------------------------------------------------------


@pytest.mark.parametrize("suffix, sep", [(".csv", b","), (".tsv", b"\t")])
def test_bad_byte_reported_at_its_physical_line(tmp_path: Path, suffix: str, sep: bytes) -> None:
    # Line 1 is the header; the bad byte sits on physical line 1,502 of 2,001. A text decoder that
    # reads ahead in chunks used to report it at line 841.
    rows = [b"anchor" + sep + b"positive"] + [b"a%d%sb%d" % (i, sep, i) for i in range(2000)]
    rows[1501] = LATIN1_CAFE + sep + b"x"
    path = tmp_path / f"d{suffix}"
    path.write_bytes(b"\n".join(rows) + b"\n")
    assert error_of(path) == f"{path}:1502: not valid UTF-8: byte 0xe9 at column 4 (save as UTF-8)"

    result, rejects = skip(path, tmp_path / "rejects.jsonl")
    assert len(result.records) == 1999 and result.skipped == 1
    assert (result.records[1499].line, result.records[1500].line) == (1501, 1503)
    assert rejects == [{
        "file": str(path), "line": 1502, "field": None,
        "error": "not valid UTF-8: byte 0xe9 at column 4 (save as UTF-8)",
        "raw": "caf\\xe9" + sep.decode() + "x",
    }]


@pytest.mark.parametrize(
    "name, content",
    [
        ("d.jsonl", b'{"anchor": "a"}\n{"anchor": "' + LATIN1_CAFE + b'"}\n{"anchor": "c"}\n'),
        ("d.txt", b"a\n" + LATIN1_CAFE + b"\nc\n"),
        ("d.csv", b"anchor\na\n" + LATIN1_CAFE + b"\nc\n"),
    ],
)
def test_bad_bytes_go_through_on_bad_record(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    line = 3 if name.endswith(".csv") else 2
    column = 16 if name.endswith(".jsonl") else 4
    message = f"not valid UTF-8: byte 0xe9 at column {column} (save as UTF-8)"
    assert error_of(path) == f"{path}:{line}: {message}"

    result, rejects = skip(path, tmp_path / "rejects.jsonl")
    assert [anchor for _, anchor in lines_of(result)] == ["a", "c"]
    assert [(r["line"], r["error"]) for r in rejects] == [(line, message)]
    assert "caf\\xe9" in rejects[0]["raw"]


def test_bad_byte_inside_a_multiline_quoted_field_names_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b'anchor,positive\n"first\nsecond ' + LATIN1_CAFE + b'",p\nnext,q\n')
    assert error_of(path) == f"{path}:3: not valid UTF-8: byte 0xe9 at column 11 (save as UTF-8)"
    result, rejects = skip(path, tmp_path / "rejects.jsonl")
    assert lines_of(result) == [(4, "next")]
    assert rejects[0]["raw"] == '"first\nsecond caf\\xe9",p'


def test_bad_byte_in_the_header_stops_even_under_skip(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_bytes(b"anchor\tcaf\xe9\na\tb\n")
    message = f"{path}:1: not valid UTF-8: byte 0xe9 at column 11 (save as UTF-8)"
    assert error_of(path) == message
    assert error_of(path, on_bad_record="skip", rejects=str(tmp_path / "r.jsonl")) == message
    assert not (tmp_path / "r.jsonl").exists()


def test_bad_byte_in_a_parquet_string(tmp_path: Path) -> None:
    # Parquet stores strings as bytes; pyarrow only checks them when they become Python strings.
    texts = pa.array([b"ok", LATIN1_CAFE, b"fine"], pa.binary()).view(pa.string())
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"anchor": texts}), path)
    message = "not valid UTF-8: byte 0xe9 at byte 4 of the value"
    assert error_of(path) == f"{path}:2: anchor: {message}"
    result, rejects = skip(path, tmp_path / "rejects.jsonl")
    assert lines_of(result) == [(1, "ok"), (3, "fine")]
    assert [(r["line"], r["field"], r["error"], r["raw"]) for r in rejects] == [
        (2, "anchor", message, "caf\\xe9")
    ]


def test_json_escape_of_half_a_surrogate_pair_is_a_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"anchor": "a"}\n{"anchor": "x\\ud800"}\n', encoding="utf-8")
    message = "not valid Unicode: a lone surrogate '\\ud800' at character 2"
    assert error_of(path) == f"{path}:2: anchor: {message}"
    result, rejects = skip(path, tmp_path / "rejects.jsonl")
    assert lines_of(result) == [(1, "a")]
    assert rejects[0]["raw"] == {"anchor": "x\ud800"}  # written back as the same JSON escape


# --- 2. quotes -----------------------------------------------------------------------------------


def test_unclosed_quote_is_reported_where_it_opens(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('anchor,positive\n"abc,def\nx,"y"\nz,w\n', encoding="utf-8")
    # csv.reader reads on to the next quote (line 3) and stops at the y after it.
    assert error_of(path) == (
        f"{path}:2: the quoted field opened on this line runs to line 3, where a quote is "
        "followed by 'y' (expected ',' or the end of the line); is a closing quote missing?"
    )
    result, rejects = skip(path, tmp_path / "rejects.jsonl")
    assert [(r.line, r.anchor, r.positive) for r in result.records] == [
        (3, "x", "y"), (4, "z", "w")
    ]
    assert [(r["line"], r["raw"]) for r in rejects] == [(2, '"abc,def')]


def test_quote_never_closed_runs_to_the_end_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text('anchor\tpositive\na\tb\n"open\tc\nd\te\n', encoding="utf-8")
    message = "quote never closed: the quoted field opened on this line runs to the end of file"
    assert error_of(path) == f"{path}:3: {message}"
    result, rejects = skip(path, tmp_path / "rejects.jsonl")
    assert lines_of(result) == [(2, "a"), (4, "d")]  # line 4, swallowed by the quote, read again
    assert [(r["line"], r["error"], r["raw"]) for r in rejects] == [(3, message, '"open\tc')]


@pytest.mark.parametrize("suffix, sep, expected", [(".csv", ",", "','"), (".tsv", "\t", "a tab")])
def test_character_after_a_closing_quote(
    tmp_path: Path, suffix: str, sep: str, expected: str
) -> None:
    path = tmp_path / f"d{suffix}"
    path.write_text(f'anchor{sep}positive\n"5" screen{sep}tv\nok{sep}fine\n', encoding="utf-8")
    message = (f"unexpected ' ' after the closing quote of a quoted field (expected {expected} "
               "or the end of the line)")
    assert error_of(path) == f"{path}:2: {message}"
    result, rejects = skip(path, tmp_path / "rejects.jsonl")
    assert lines_of(result) == [(3, "ok")]
    assert [(r["line"], r["error"]) for r in rejects] == [(2, message)]


def test_broken_quote_in_the_header_stops_even_under_skip(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('"anchor"x,positive\na,b\n', encoding="utf-8")
    expected = (f"{path}:1: unexpected 'x' after the closing quote of a quoted field "
                "(expected ',' or the end of the line)")
    assert error_of(path, on_bad_record="skip", rejects=str(tmp_path / "r.jsonl")) == expected
    with pytest.raises(DataError, match="unexpected 'x'"):
        read_header(path)


def test_valid_quoting_is_unchanged(tmp_path: Path) -> None:
    # Doubled quotes, a delimiter and newlines inside quotes, a quote inside an unquoted field,
    # and old Mac line ends (a lone \r) all read as before.
    path = tmp_path / "d.csv"
    path.write_text('anchor,positive\r"say ""hi""","a,\nb"\r5" screen,x\r', encoding="utf-8")
    assert list(read_rows(path)) == [
        (2, {"anchor": 'say "hi"', "positive": "a,\nb"}),
        (4, {"anchor": '5" screen', "positive": "x"}),
    ]


# --- 3. long fields ------------------------------------------------------------------------------


def test_long_field_reads_like_jsonl(tmp_path: Path) -> None:
    text = "word " * 60_000  # 300,000 characters; csv's default limit is 131,072
    (tmp_path / "d.csv").write_text(f"anchor,positive\n{text},short\n", encoding="utf-8")
    (tmp_path / "d.tsv").write_text(f"anchor\tpositive\n\"{text}\"\tshort\n", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text(json.dumps({"anchor": text, "positive": "short"}) + "\n",
                                      encoding="utf-8")
    loaded = {suffix: load_records(DataConfig(path=str(tmp_path / f"d.{suffix}"))).records
              for suffix in ("csv", "tsv", "jsonl")}
    assert loaded["csv"][0].anchor == text.strip() and len(loaded["csv"][0].anchor) > 131_072
    assert [r.anchor for r in loaded["csv"]] == [r.anchor for r in loaded["tsv"]] == [
        r.anchor for r in loaded["jsonl"]
    ]


# --- 4. parquet files that are not parquet -------------------------------------------------------


def parquet_bytes(rows: int = 10) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"anchor": [f"text {i}" for i in range(rows)]}), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content, reason",
    [
        (parquet_bytes()[:-12], "Parquet magic bytes not found in footer"),  # truncated
        (parquet_bytes()[: len(parquet_bytes()) // 2], "Parquet magic bytes not found in footer"),
        (b"anchor,positive\na,b\n", "Parquet magic bytes not found in footer"),  # text
        (b"", "Parquet file size is 0 bytes"),
    ],
    ids=["truncated-footer", "cut-in-half", "text", "empty"],
)
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_unreadable_parquet_is_one_line_naming_the_file(
    tmp_path: Path, content: bytes, reason: str, mode: str
) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(content)
    rejects = tmp_path / "rejects.jsonl"
    message = error_of(path, on_bad_record=mode, rejects=str(rejects))
    assert message.startswith(f"{path}: not a readable parquet file: {reason}")
    assert not rejects.exists()


def test_parquet_damaged_after_some_rows(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    table = pa.table({"anchor": [f"text number {i}" for i in range(20_000)]})
    pq.write_table(table, buffer, compression="none", row_group_size=5000)
    content = bytearray(buffer.getvalue())
    metadata = pq.ParquetFile(io.BytesIO(bytes(content))).metadata
    start = metadata.row_group(2).column(0).dictionary_page_offset  # rows 10,001-15,000
    content[start : start + 16] = b"\xff" * 16  # a page header that cannot be parsed
    path = tmp_path / "d.parquet"
    path.write_bytes(bytes(content))
    for mode in ("error", "skip"):
        message = error_of(path, on_bad_record=mode, rejects=str(tmp_path / "r.jsonl"))
        assert message.startswith(f"{path}: damaged parquet data after row 8192: Couldn't "
                                  "deserialize thrift")


# --- 5. data paths that cannot be read -----------------------------------------------------------


@pytest.mark.parametrize("name", ["d.csv", "d.jsonl", "d.txt", "d.parquet"])
def test_folder_missing_and_special_files(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    assert error_of(folder) == f"{folder}: is a folder, not a file"
    missing = tmp_path / "missing" / name
    assert error_of(missing) == f"{missing}: file not found"
    under_a_file = tmp_path / "plain" / name
    under_a_file.parent.write_text("x")
    assert error_of(under_a_file) == f"{under_a_file}: file not found"
    fifo = tmp_path / f"fifo-{name}"
    os.mkfifo(fifo)
    assert error_of(fifo) == f"{fifo}: not a regular file"


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.txt", "d.parquet"])
def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # Tests run as root, where chmod 000 does not stop reads: refuse the open instead.
    path = tmp_path / name
    path.write_bytes(parquet_bytes() if name.endswith(".parquet") else b"anchor\na\n")

    def refuse(p: Path) -> Any:
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(data_lines, "open_binary", refuse)
    expected = f"{path}: cannot read the file: Permission denied"
    assert error_of(path) == expected
    assert error_of(path, on_bad_record="skip", rejects=str(tmp_path / "r.jsonl")) == expected


def test_read_error_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"anchor": "a"}\n{"anchor": "b"}\n', encoding="utf-8")

    class FailingDisk(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:
            if self.tell() > 0:
                raise OSError(5, "Input/output error")
            return super().readline(size)

    monkeypatch.setattr(data_lines, "open_binary", lambda p: FailingDisk(p.read_bytes()))
    assert error_of(path) == f"{path}: cannot read the file: Input/output error"


# --- 6. the rejects path -------------------------------------------------------------------------


def seventy_lines(path: Path) -> bytes:
    lines = [json.dumps({"anchor": f"text {i}" if i % 10 else " "}) for i in range(70)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path.read_bytes()


def test_rejects_that_is_the_data_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "train.jsonl"
    before = seventy_lines(data)
    message = ("data.rejects: is the data file itself; writing rejected records there would "
               "overwrite the data: name another file")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    hard = tmp_path / "hard.jsonl"
    os.link(data, hard)
    for rejects in [str(data), "train.jsonl", "sub/../train.jsonl", str(link), str(hard)]:
        assert error_of(data, on_bad_record="skip", rejects=rejects) == f"{rejects}: {message}"
        assert data.read_bytes() == before  # 70 lines, untouched
    # The same data read by another name is still the same file.
    assert error_of(hard, on_bad_record="skip", rejects=str(data)) == f"{data}: {message}"
    assert data.read_bytes() == before
    # With on_bad_record: error nothing is ever written, so the setting is harmless there.
    assert error_of(data, rejects=str(data)) == f"{data}:1: anchor: empty text"
    assert data.read_bytes() == before


def test_rejects_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    seventy_lines(data)
    folder = tmp_path / "out"
    folder.mkdir()
    assert error_of(data, on_bad_record="skip", rejects=str(folder)) == (
        f"{folder}: data.rejects: is a folder; name a file, e.g. {folder / 'train.rejects.jsonl'}"
    )
    assert list(folder.iterdir()) == []


def test_rejects_whose_folder_cannot_be_created(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    seventy_lines(data)
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    rejects = blocker / "deeper" / "rejects.jsonl"
    assert error_of(data, on_bad_record="skip", rejects=str(rejects)) == (
        f"{rejects}: data.rejects: cannot create it: {blocker} is not a folder"
    )
    assert blocker.read_text() == "keep me"


def test_rejects_write_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "train.jsonl"
    seventy_lines(data)
    rejects = tmp_path / "r.jsonl"
    real_open = Path.open

    def full_disk(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if self == rejects:
            raise OSError(28, "No space left on device")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_disk)
    assert error_of(data, on_bad_record="skip", rejects=str(rejects)) == (
        f"{rejects}: data.rejects: cannot write the rejects file: No space left on device"
    )


def test_rejects_file_and_folder_appear_only_when_something_is_rejected(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("anchor\na\nb\n", encoding="utf-8")
    rejects = tmp_path / "new" / "folder" / "rejects.jsonl"
    result = load_records(DataConfig(path=str(good), on_bad_record="skip", rejects=str(rejects)))
    assert (result.skipped, result.rejects_path) == (0, None)
    assert not (tmp_path / "new").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("anchor\na\n \n", encoding="utf-8")
    result = load_records(DataConfig(path=str(bad), on_bad_record="skip", rejects=str(rejects)))
    assert result.rejects_path == rejects
    assert [json.loads(line)["line"] for line in rejects.read_text().splitlines()] == [3]
