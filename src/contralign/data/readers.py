"""Readers: rows from JSONL, CSV, TSV, Parquet and plain-text files, each with its line number.

Every reader yields ``(line, row)`` where ``row`` maps a file column to its raw value and ``line``
is where the row sits in the file, as the user sees it:

- JSONL: the 1-based physical line (blank lines are skipped but counted).
- CSV/TSV: the header is line 1, the first data row line 2. A quoted field may span lines; the
  row is then reported at the line where it starts.
- Parquet: the 1-based row number (row index + 1); there are no lines, so ``file:N`` reads as
  "row N".
- Plain text: the 1-based physical line; blank lines are skipped. The one column is ``text``.

A line that cannot be parsed at all (malformed JSON, a CSV row with the wrong number of fields)
raises :class:`~contralign.core.errors.DataError`, unless the caller passes ``on_error``: then the
error and the raw line go to ``on_error`` and reading continues with the next line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from contralign.core.errors import DataError

FileFormat = Literal["jsonl", "csv", "tsv", "parquet", "txt"]
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
}
TEXT_COLUMN = "text"
# utf-8-sig drops a byte-order mark, which spreadsheet exports put before the first header name.
ENCODING = "utf-8-sig"


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
            f"(known: {known}); set format: jsonl|csv|tsv|parquet|txt"
        )
    return EXTENSIONS[suffix]


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, None, None, "file not found")


def read_header(path: str | Path, fmt: str = "auto") -> list[str] | None:
    """The column names of a tabular file, or None for JSONL (each line has its own keys).

    Raises:
        DataError: the file is missing, empty, or has a duplicate column name.
    """
    path = Path(path)
    _require_file(path)
    match detect_format(path, fmt):
        case "jsonl":
            return None
        case "txt":
            return [TEXT_COLUMN]
        case "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        case "csv" | "tsv" as delimited:
            with path.open(encoding=ENCODING, newline="") as f:
                reader = csv.reader(f, delimiter=_delimiter(delimited))
                header = next(reader, None)
            if not header:
                raise DataError(path, 1, None, "no header row")
            _check_header(path, header)
            return header
    raise AssertionError("unreachable")  # pragma: no cover


def read_rows(
    path: str | Path, fmt: str = "auto", on_error: OnError | None = None
) -> Iterator[tuple[int, Row]]:
    """Yield ``(line, row)`` for every row of ``path`` (see the module docstring for ``line``).

    Args:
        path: the data file.
        fmt: ``auto`` (from the extension) or one of ``jsonl``, ``csv``, ``tsv``, ``parquet``,
            ``txt``.
        on_error: called with ``(error, raw line)`` for a line that cannot be parsed; reading then
            goes on. Without it, such a line raises.

    Raises:
        DataError: the file is missing, the format unknown, or (without ``on_error``) a line is
            malformed: ``file:line: what is wrong``.
    """
    path = Path(path)
    _require_file(path)
    match detect_format(path, fmt):
        case "jsonl":
            yield from _read_jsonl(path, on_error)
        case "csv" | "tsv" as delimited:
            yield from _read_delimited(path, _delimiter(delimited), on_error)
        case "parquet":
            yield from _read_parquet(path)
        case "txt":
            yield from _read_txt(path)


def _fail(error: DataError, raw: Any, on_error: OnError | None) -> None:
    if on_error is None:
        raise error
    on_error(error, raw)


def _delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def _check_header(path: Path, header: list[str]) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(path, 1, name, "duplicate column name in the header")
        seen.add(name)


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, text)`` for each physical line, newline removed; bad UTF-8 names its line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode(ENCODING if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, number, None, f"not valid UTF-8: {exc.reason}") from None
            yield number, text.rstrip("\r\n")


def _read_jsonl(path: Path, on_error: OnError | None) -> Iterator[tuple[int, Row]]:
    for number, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            error = DataError(path, number, None, f"malformed JSON: {exc.msg} (column {exc.colno})")
            _fail(error, line, on_error)
            continue
        if not isinstance(value, dict):
            kind = value_kind(value)
            _fail(DataError(path, number, None, f"expected a JSON object, got {kind}"), line,
                  on_error)
            continue
        yield number, value


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
        case dict():
            return "an object"
    return type(value).__name__


def _read_delimited(
    path: Path, delimiter: str, on_error: OnError | None
) -> Iterator[tuple[int, Row]]:
    with path.open(encoding=ENCODING, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if not header:
                raise DataError(path, 1, None, "no header row")
            _check_header(path, header)
            start = reader.line_num + 1
            for fields in reader:
                # line_num counts physical lines read so far: a quoted field with newlines makes
                # one row span several, and the row is reported where it starts.
                line, start = start, reader.line_num + 1
                if not fields:  # a blank line
                    continue
                if len(fields) != len(header):
                    message = f"expected {len(header)} fields, got {len(fields)}"
                    _fail(DataError(path, line, None, message), delimiter.join(fields), on_error)
                    continue
                yield line, dict(zip(header, fields, strict=True))
        except csv.Error as exc:
            raise DataError(path, reader.line_num, None, f"malformed row: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DataError(path, reader.line_num + 1, None, f"not valid UTF-8: {exc.reason}") \
                from None


def _read_parquet(path: Path) -> Iterator[tuple[int, Row]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise DataError(path, None, None, f"not a readable parquet file: {exc}") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for values in batch.to_pylist():
            row += 1
            yield row, values


def _read_txt(path: Path) -> Iterator[tuple[int, Row]]:
    for number, line in _numbered_lines(path):
        if line.strip():
            yield number, {TEXT_COLUMN: line}
