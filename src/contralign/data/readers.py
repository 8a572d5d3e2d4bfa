"""Readers: rows from JSONL, CSV, TSV, Parquet, plain-text and ``.npz`` files, each with its line
number.

Every reader yields ``(line, row)`` where ``row`` maps a file column to its raw value and ``line``
is where the row sits in the file, as the user sees it:

- JSONL: the 1-based physical line; lines end at ``\\n``; blank lines are skipped but counted.
- CSV/TSV: the header is line 1, the first data row line 2; lines end at ``\\n``, ``\\r\\n`` or a
  lone ``\\r``. A quoted field may span lines; the row is then reported at the line where it
  starts, a byte that is not UTF-8 at the line that holds it, and a broken quote at the line
  where its quoted field opens. Fields have no size limit (csv's 131,072 characters is lifted).
- Parquet: the 1-based row number (row index + 1); there are no lines, so ``file:N`` reads as
  "row N".
- Plain text: the 1-based physical line (ending at ``\\n``); blank lines are skipped. The one
  column is ``text``.
- ``.npz`` arrays (``data.arrays``): the 1-based row number, as for parquet. The columns are the
  arrays whose first dimension is the row count; a 1-D row value is a Python scalar, a row of an
  image array a read-only ``(H, W, 3)`` (or ``(H, W)``) view.

Bytes become numbered physical lines in ``data.lines`` (decoded one line at a time, so a byte that
is not UTF-8 is reported at its own line).

A record that cannot be read (bytes that are not UTF-8, malformed JSON, a CSV quote that is never
closed, a CSV row with the wrong number of fields) raises
:class:`~contralign.core.errors.DataError`, unless the caller passes ``on_error``: then the error
and the raw text go to ``on_error`` and reading continues with the next line (after a broken
quote: with the line after the one where its quoted field opened, so that the lines the quote
swallowed are read again). A file that cannot be read at all (missing, a folder, no permission, a
bad header, a damaged parquet file) always raises.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, BinaryIO, Literal

from contralign.core.errors import DataError
from contralign.data.lines import (
    Line,
    check_readable,
    joined,
    numbered_lines,
    open_binary_checked,
)

FileFormat = Literal["jsonl", "csv", "tsv", "parquet", "txt", "npz"]
Row = dict[str, Any]
OnError = Callable[[DataError, Any], None]

EXTENSIONS: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "txt",
    ".npz": "npz",
}
TEXT_COLUMN = "text"
_DELIMITERS = {"csv": ",", "tsv": "\t"}
# Larger than any field that fits in memory, and small enough for a C long on every platform.
FIELD_SIZE_LIMIT = 2**31 - 1
PARQUET_BATCH_ROWS = 4096
_BAD_PARQUET_NAME = "not a readable parquet file: a name in its metadata is not valid UTF-8"
# surrogateescape (PEP 383) keeps an undecodable byte 0xNN as the lone surrogate U+DCNN.


def detect_format(path: str | Path, fmt: str = "auto") -> FileFormat:
    """The format of ``path``: ``fmt`` when given, else from the file extension.

    Raises:
        DataError: ``fmt`` is ``auto`` and the extension is not one of ``EXTENSIONS``, or ``fmt``
            is not a known format.
    """
    if fmt != "auto":
        if fmt not in EXTENSIONS.values():
            known = ", ".join(sorted(set(EXTENSIONS.values())))
            raise DataError(path, None, "format", f"unknown format {fmt!r}; known: {known}")
        return fmt  # type: ignore[return-value]  # checked just above
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        known = ", ".join(EXTENSIONS)
        raise DataError(
            path, None, None, f"cannot tell the format from {suffix or 'no extension'!r} "
            f"(known: {known}); set format: jsonl|csv|tsv|parquet|txt|npz"
        )
    return EXTENSIONS[suffix]


def printable(name: str) -> str:
    """``name`` as a message shows it: quoted with escapes when it is empty, has spaces around it
    or holds a newline or the like, so that an error stays on one line and shows what is there."""
    return name if name and name.isprintable() and name.strip() == name else repr(name)


def read_header(path: str | Path, fmt: str = "auto") -> list[str] | None:
    """The column names of a tabular file, or None for JSONL (each line has its own keys).

    Raises:
        DataError: the file is missing or unreadable, empty, not parquet (for parquet), or its
            header is malformed or has a duplicate column name.
    """
    path = Path(path)
    check_readable(path)
    match detect_format(path, fmt):
        case "jsonl":
            return None
        case "txt":
            return [TEXT_COLUMN]
        case "parquet":
            with open_binary_checked(path) as f:
                return _parquet_names(path, _parquet_file(path, f))
        case "npz":
            from contralign.data.arrays import read_npz_layout

            return list(read_npz_layout(path).columns)
        case "csv" | "tsv" as delimited:
            with closing(_Feed(numbered_lines(path, split_cr=True))) as feed:
                return _delimited_header(path, feed, _DELIMITERS[delimited])
    raise AssertionError("unreachable")  # pragma: no cover


def read_rows(
    path: str | Path, fmt: str = "auto", on_error: OnError | None = None
) -> Iterator[tuple[int, Row]]:
    """Yield ``(line, row)`` for every row of ``path`` (see the module docstring for ``line``).

    Args:
        path: the data file.
        fmt: ``auto`` (from the extension) or one of ``jsonl``, ``csv``, ``tsv``, ``parquet``,
            ``txt``, ``npz``.
        on_error: called with ``(error, raw text)`` for a record that cannot be read; reading
            then goes on. Without it, such a record raises.

    Raises:
        DataError: the file is missing or unreadable, the format unknown, the header or the
            parquet structure damaged, or (without ``on_error``) a record is malformed:
            ``file:line: what is wrong``.
    """
    path = Path(path)
    check_readable(path)
    match detect_format(path, fmt):
        case "jsonl":
            yield from _read_jsonl(path, on_error)
        case "csv" | "tsv" as delimited:
            yield from _read_delimited(path, _DELIMITERS[delimited], on_error)
        case "parquet":
            yield from _read_parquet(path, on_error)
        case "txt":
            yield from _read_txt(path, on_error)
        case "npz":
            from contralign.data.arrays import read_npz_rows

            yield from read_npz_rows(path)


def _fail(error: DataError, raw: Any, on_error: OnError | None) -> None:
    if on_error is None:
        raise error
    on_error(error, raw)


def _check_header(path: Path, header: list[str], line: int | None) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(path, line, printable(name), "duplicate column name in the header")
        seen.add(name)


# --- JSONL and plain text ------------------------------------------------------------------------


def _read_jsonl(path: Path, on_error: OnError | None) -> Iterator[tuple[int, Row]]:
    for line in numbered_lines(path, split_cr=False):
        text = line.text.rstrip("\r\n")
        if line.problem is not None:
            _fail(line.error(path), joined([line]), on_error)
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            problem = f"malformed JSON: {exc.msg} (column {exc.colno})"
        except RecursionError:
            problem = "malformed JSON: nested too deeply"
        except ValueError as exc:  # an integer longer than int() accepts (sys.int_info)
            problem = f"malformed JSON: {str(exc).partition(';')[0]}"
        else:
            if isinstance(value, dict):
                yield line.number, value
                continue
            problem = f"expected a JSON object, got {value_kind(value)}"
        _fail(DataError(path, line.number, None, problem), text, on_error)


def _read_txt(path: Path, on_error: OnError | None) -> Iterator[tuple[int, Row]]:
    for line in numbered_lines(path, split_cr=False):
        if line.problem is not None:
            _fail(line.error(path), joined([line]), on_error)
        elif line.text.strip():
            yield line.number, {TEXT_COLUMN: line.text.rstrip("\r\n")}


def value_kind(value: Any) -> str:
    """A value's type as an error message says it, in JSON terms: ``a number``, ``null``."""
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list() | tuple():
            return "an array"
        case bytes() | bytearray():
            return "bytes"
        case dict():
            return "an object"
    return type(value).__name__


# --- CSV and TSV ---------------------------------------------------------------------------------


class _Feed:
    """Lines for ``csv.reader`` that remember which physical lines the current record took, so
    that a problem is reported at its own line and reading can start again after a bad quote."""

    def __init__(self, lines: Generator[Line, None, None]) -> None:
        self._lines = lines
        self._replay: deque[Line] = deque()
        self.taken: list[Line] = []
        self.undecodable: Line | None = None  # the first taken line with a byte that is not UTF-8
        if csv.field_size_limit() < FIELD_SIZE_LIMIT:  # process-wide; only ever raised
            csv.field_size_limit(FIELD_SIZE_LIMIT)

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        line = self._replay.popleft() if self._replay else next(self._lines)
        self.taken.append(line)
        if line.problem is not None and self.undecodable is None:
            self.undecodable = line
        return line.text

    def take(self) -> list[Line]:
        """The lines read since the last call: those of the record just read."""
        taken, self.taken, self.undecodable = self.taken, [], None
        return taken

    def replay(self, lines: list[Line]) -> None:
        self._replay.extendleft(reversed(lines))

    def close(self) -> None:
        self._lines.close()  # and with it the file


def _delimited_header(path: Path, feed: _Feed, delimiter: str) -> list[str]:
    reader = csv.reader(feed, delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        line, message, _ = _quote_problem(feed.take(), delimiter, str(exc))
        raise DataError(path, line, None, message) from None
    if (undecodable := feed.undecodable) is not None:
        raise undecodable.error(path)
    feed.take()
    if not header:
        raise DataError(path, 1, None, "no header row")
    _check_header(path, header, 1)
    return header


def _read_delimited(
    path: Path, delimiter: str, on_error: OnError | None
) -> Iterator[tuple[int, Row]]:
    with closing(_Feed(numbered_lines(path, split_cr=True))) as feed:
        header = _delimited_header(path, feed, delimiter)
        # The same reader goes on after a csv.Error: each row starts from a clean state.
        reader = csv.reader(feed, delimiter=delimiter, strict=True)
        while True:
            try:
                fields = next(reader, None)
            except csv.Error as exc:
                lines = feed.take()
                line, message, keep_from = _quote_problem(lines, delimiter, str(exc))
                feed.replay(lines[keep_from:])  # the lines the broken quote swallowed
                _fail(DataError(path, line, None, message), joined(lines[:keep_from]), on_error)
                continue
            if fields is None:
                return
            undecodable, lines = feed.undecodable, feed.take()
            if not fields:  # a blank line
                continue
            if undecodable is not None:
                _fail(undecodable.error(path), joined(lines), on_error)
            elif len(fields) != len(header):
                message = f"expected {len(header)} fields, got {len(fields)}"
                _fail(DataError(path, lines[0].number, None, message), joined(lines), on_error)
            else:
                yield lines[0].number, dict(zip(header, fields, strict=True))


def _quote_problem(lines: list[Line], delimiter: str, reason: str) -> tuple[int, str, int]:
    """Where a record's quoting goes wrong: ``(line, message, index of the first line to read
    again)``.

    csv.reader stops at the next quote in the file, or at its end, which for a quote left open is
    lines later; this follows csv's own rules (strict, doubled quotes) to find the line where the
    broken quoted field opened.
    """
    sep = "a tab" if delimiter == "\t" else repr(delimiter)
    state, opened = "start", 0  # start | field | quoted | quote (a quote inside a quoted field)
    for index, line in enumerate(lines):
        for char in line.text:
            if state == "quoted":
                state = "quote" if char == '"' else "quoted"
            elif state == "quote" and char == '"':
                state = "quoted"
            elif char == delimiter or char in "\r\n":
                state = "start"
            elif state == "quote":
                if opened == index:
                    message = (f"unexpected {char!r} after the closing quote of a quoted field "
                               f"(expected {sep} or the end of the line)")
                else:
                    message = (f"the quoted field opened on this line runs to line "
                               f"{line.number}, where a quote is followed by {char!r} (expected "
                               f"{sep} or the end of the line); is a closing quote missing?")
                return lines[opened].number, message, opened + 1
            elif state == "start" and char == '"':
                state, opened = "quoted", index
            else:
                state = "field"
        if state == "quote":  # the end of the last line of the file closes the field
            state = "start"
    if state == "quoted":
        message = "quote never closed: the quoted field opened on this line runs to the end of file"
        return lines[opened].number, message, opened + 1
    return lines[0].number, f"malformed CSV row: {reason}", len(lines)  # pragma: no cover


# --- Parquet -------------------------------------------------------------------------------------


def _parquet_file(path: Path, f: BinaryIO) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as exc:  # what pyarrow raises for bytes it cannot parse
        raise DataError(path, None, None, f"not a readable parquet file: {first_line(exc)}") \
            from None
    except UnicodeDecodeError:  # a column path in the metadata
        raise DataError(path, None, None, _BAD_PARQUET_NAME) from None


def first_line(exc: Exception) -> str:
    """The first line of pyarrow's message, control characters escaped (they do appear)."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in line)


def _parquet_names(path: Path, parquet: Any) -> list[str]:
    try:
        names = list(parquet.schema_arrow.names)
    except UnicodeDecodeError:  # pyarrow decodes the column names only when asked
        raise DataError(path, None, None, _BAD_PARQUET_NAME) from None
    _check_header(path, names, None)
    return names


def _read_parquet(path: Path, on_error: OnError | None) -> Iterator[tuple[int, Row]]:
    import pyarrow as pa

    with open_binary_checked(path) as f:
        parquet = _parquet_file(path, f)
        _parquet_names(path, parquet)
        batches, row = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS), 0
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
                raise DataError(path, None, None, f"damaged parquet data after row {row}: "
                                f"{first_line(exc)}") from None
            if batch is None:
                return
            try:
                rows = batch.to_pylist()
            except UnicodeDecodeError:  # a string value that is not UTF-8: find it row by row
                rows = [_parquet_row(path, row + 1 + i, batch, i, on_error)
                        for i in range(batch.num_rows)]
            for values in rows:
                row += 1
                if values is not None:
                    yield row, values


def _parquet_row(
    path: Path, row: int, batch: Any, index: int, on_error: OnError | None
) -> Row | None:
    """Row ``index`` of ``batch``, value by value; None when a value is not valid UTF-8."""
    values: Row = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            values[name] = column[index].as_py()
        except UnicodeDecodeError as exc:
            message = (f"not valid UTF-8: byte 0x{exc.object[exc.start]:02x} at byte "
                       f"{exc.start + 1} of the value")
            raw = bytes(exc.object).decode("utf-8", "backslashreplace")
            _fail(DataError(path, row, printable(name), message), raw, on_error)
            return None
    return values

