"""Load a data file into validated records: column roles, per-record checks, a rejects file.

Roles (DESIGN.md, Records): ``anchor`` (required), ``positive``, ``negative`` / ``negative_2`` /
``negative_3`` …, ``label``, ``score``. ``DataConfig.columns`` maps a role to a file column; an
explicit mapping is the whole mapping (it is not merged with columns named like roles). Without
one, file columns whose names are roles take those roles (for JSONL, the keys of the first
object), and a ``txt`` file's ``text`` column is the anchor.

Every record is checked as it is read; a bad one is ``file:line: column: what is wrong``. With
``on_bad_record: skip`` bad records are counted, written one JSON line each to a rejects file, and
the first few messages are kept for the report. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from contralign.core.errors import DataError
from contralign.data.readers import (
    FileFormat,
    detect_format,
    printable,
    read_header,
    read_rows,
    value_kind,
)
from contralign.data.records import DataConfig, Record, RecordSet

_ROLE = re.compile(r"anchor|positive|negative(?:_(?P<k>[2-9]|[1-9][0-9]+))?|label|score")
ROLE_HELP = "anchor, positive, negative, negative_2, negative_3, …, label, score"
MAX_SKIPPED_EXAMPLES = 5
MAX_SHOWN_VALUE = 80  # characters of a bad value quoted in a message
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_id(text: str) -> int:
    """A stable 63-bit id of ``text`` (BLAKE2b), equal across processes, runs and machines.

    Used to mask duplicates in a batch: two records with the same text get the same id. Python's
    ``hash`` is salted per process, so it cannot serve.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # 63 bits: fits a signed int64 tensor


def is_role(name: str) -> bool:
    """Whether ``name`` is a role: anchor, positive, negative[_k], label or score."""
    return _ROLE.fullmatch(name) is not None


def _role_order(role: str) -> tuple[int, int]:
    """Sort key: anchor, positive, negatives by number, label, score."""
    match = _ROLE.fullmatch(role)
    assert match is not None
    base = role.split("_")[0]
    rank = ("anchor", "positive", "negative", "label", "score").index(base)
    return rank, int(match.group("k") or 1)


def resolve_roles(
    path: Path, columns: Mapping[str, str], header: list[str] | None, fmt: FileFormat
) -> dict[str, str] | None:
    """The role -> column mapping, in role order; None when it must come from a JSONL object.

    Raises:
        DataError: an unknown role in ``columns``; a mapped column missing from the header
            (reported at line 1 for CSV/TSV, at the file for parquet); no anchor column.
    """
    for role in columns:
        if not is_role(role):
            raise DataError(path, None, "columns", f"unknown role {role!r}; roles: {ROLE_HELP}")
    if columns:
        mapping = dict(columns)
    elif header is None:
        return None
    elif fmt == "txt":
        mapping = {"anchor": header[0]}
    else:
        mapping = {name: name for name in header if is_role(name)}
    if header is not None:
        available = ", ".join(printable(name) for name in header)
        line = 1 if fmt in ("csv", "tsv") else None
        for role, column in mapping.items():
            if column not in header:
                message = f"no such column (mapped to {role}); available columns: {available}"
                raise DataError(path, line, printable(column), message)
    return _ordered(path, mapping, header)


def _ordered(path: Path, mapping: dict[str, str], available: list[str] | None) -> dict[str, str]:
    if "anchor" not in mapping:
        message = "no anchor column: name one with columns: {anchor: <column>}"
        if available is not None:
            message += f"; available columns: {', '.join(map(printable, available)) or 'none'}"
        raise DataError(path, None, "columns", message)
    return {role: mapping[role] for role in sorted(mapping, key=_role_order)}


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: a message quotes a bad value, not a whole document."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else f"{text[: MAX_SHOWN_VALUE - 3]}..."


def _check_unicode(path: Path, line: int, column: str, text: str) -> None:
    # A JSON escape such as "\ud800" decodes to half a UTF-16 pair, which no encoder can write.
    if (half := _SURROGATE.search(text)) is not None:
        where = f"{half.group()!r} at character {half.start() + 1}"
        raise DataError(path, line, column, f"not valid Unicode: a lone surrogate {where}")


def _parse_text(path: Path, line: int, column: str, value: Any) -> str:
    if value is None:
        raise DataError(path, line, column, "missing value (null)")
    if not isinstance(value, str):
        raise DataError(path, line, column, f"expected text, got {value_kind(value)}: "
                        f"{_shown(value)}")
    text = value.strip()
    if not text:
        raise DataError(path, line, column, "empty text")
    _check_unicode(path, line, column, text)
    return text


def _parse_score(path: Path, line: int, column: str, value: Any) -> float:
    if value is None:
        raise DataError(path, line, column, "missing value (null)")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DataError(path, line, column, f"not a number: {_shown(value)}")
    try:
        score = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise DataError(path, line, column, f"not a number: {_shown(value)}") from None
    except OverflowError:  # an integer beyond float's range
        score = math.inf
    if not math.isfinite(score):
        raise DataError(path, line, column, f"not a finite number: {_shown(value)}")
    return score


def _parse_label(path: Path, line: int, column: str, value: Any) -> str:
    if value is None:
        raise DataError(path, line, column, "missing value (null)")
    if not isinstance(value, str | int | float | bool):
        raise DataError(path, line, column, f"expected a scalar label, got {value_kind(value)}")
    label = str(value).strip()
    if not label:
        raise DataError(path, line, column, "empty label")
    _check_unicode(path, line, column, label)
    return label


def parse_record(path: Path, line: int, row: Mapping[str, Any], roles: dict[str, str]) -> Record:
    """Validate one row and build its :class:`Record`.

    Args:
        path: the data file (for messages).
        line: where the row sits in the file.
        row: file column -> raw value.
        roles: role -> file column, in role order (from :func:`resolve_roles`).

    Raises:
        DataError: ``file:line: column: what is wrong`` for the first bad value.
    """
    texts: dict[str, str] = {}
    label: str | None = None
    score: float | None = None
    for role, column in roles.items():
        field = printable(column)
        if column not in row:
            raise DataError(path, line, field, "missing column")
        value = row[column]
        match role:
            case "score":
                score = _parse_score(path, line, field, value)
            case "label":
                label = _parse_label(path, line, field, value)
            case _:
                texts[role] = _parse_text(path, line, field, value)
    negatives = tuple(text for role, text in texts.items() if role.startswith("negative"))
    return Record(
        anchor=texts["anchor"], positive=texts.get("positive"), negatives=negatives,
        label=label, score=score, line=line,
    )


def rejects_path_for(config: DataConfig, rejects_dir: Path | None = None) -> Path:
    """Where skipped records go: ``config.rejects``, else ``<rejects_dir>/<stem>.rejects.jsonl``,
    else ``<stem>.rejects.jsonl`` in the current directory."""
    if config.rejects is not None:
        return Path(config.rejects)
    name = f"{Path(config.path).stem}.rejects.jsonl"
    return (rejects_dir if rejects_dir is not None else Path.cwd()) / name


def check_rejects_path(rejects: Path, data: Path, key: str = "data") -> None:
    """Refuse a rejects path that would destroy the data or cannot be written, before anything
    is opened for writing.

    Args:
        rejects: where rejected records would go.
        data: the data file, which exists.
        key: the config section of the data, for the message (``data`` -> ``data.rejects``).

    Raises:
        DataError: ``rejects: data.rejects: what is wrong``: a folder; the data file itself (by
            any name: opening it for writing would empty the data while it is read); or a folder
            that cannot be created or written in.
    """
    field = f"{key}.rejects"
    found = _stat(rejects, field)
    if found is not None:
        if stat.S_ISDIR(found.st_mode):
            example = rejects / f"{data.stem}.rejects.jsonl"
            raise DataError(rejects, None, field, f"is a folder; name a file, e.g. {example}")
        if os.path.samestat(found, data.stat()):
            raise DataError(rejects, None, field, "is the data file itself; writing rejected "
                            "records there would overwrite the data: name another file")
        return
    folder = rejects.parent
    while (info := _stat(folder, field)) is None and folder.parent != folder:
        folder = folder.parent
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise DataError(rejects, None, field, f"cannot create it: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(rejects, None, field, f"cannot create it: no permission to write in "
                        f"{folder}")


def _stat(path: Path, field: str) -> os.stat_result | None:
    """``os.stat(path)``, or None when nothing is there."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise DataError(path, None, field, f"cannot check the path: {exc.strerror or exc}") \
            from None


class _Rejects:
    """Counts bad records and writes each as one JSON line; the file is created on first use."""

    def __init__(self, path: Path, field: str) -> None:
        self.path = path
        self.field = field
        self.count = 0
        self.examples: list[str] = []
        self._file: IO[str] | None = None

    def add(self, error: DataError, raw: Any) -> None:
        entry = {
            "file": error.path, "line": error.line, "field": error.field,
            "error": error.message, "raw": raw,
        }
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # A lone surrogate (from a JSON escape) is written back as the same \udXXX escape.
                self._file = self.path.open("w", encoding="utf-8", errors="backslashreplace")
            self._file.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        except OSError as exc:
            raise DataError(self.path, None, self.field,
                            f"cannot write the rejects file: {exc.strerror or exc}") from None
        self.count += 1
        if len(self.examples) < MAX_SKIPPED_EXAMPLES:
            self.examples.append(str(error))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def load_records(
    config: DataConfig, rejects_dir: Path | None = None, *, key: str = "data"
) -> RecordSet:
    """Read and validate every record of ``config.path``.

    Args:
        config: the file, its format, the role mapping and what to do with a bad record.
        rejects_dir: where ``<stem>.rejects.jsonl`` goes when ``config.rejects`` is not set
            (usually the run directory); default: the current directory.
        key: where ``config`` sits in the user's config, for messages (``data.rejects``).

    Returns:
        The records in file order, the roles present, and what was skipped.

    Raises:
        DataError: a missing or unreadable file, an unknown role, a mapped column that is not in
            the file, no anchor column, a bad rejects path (with ``on_bad_record: skip``, checked
            before reading), a bad record (with ``on_bad_record: error``), or no valid record.
    """
    path = Path(config.path)
    fmt = detect_format(path, config.format)
    header = read_header(path, fmt)
    roles = resolve_roles(path, config.columns, header, fmt)
    rejects = None
    if config.on_bad_record == "skip":
        rejects = _Rejects(rejects_path_for(config, rejects_dir), f"{key}.rejects")
        check_rejects_path(rejects.path, path, key)
    records: list[Record] = []
    try:
        for line, row in read_rows(path, fmt, on_error=rejects.add if rejects else None):
            if roles is None:  # JSONL without a mapping: the first object's keys decide
                roles = _ordered(path, {k: k for k in row if is_role(k)}, list(row))
            try:
                records.append(parse_record(path, line, row, roles))
            except DataError as error:
                if rejects is None:
                    raise
                rejects.add(error, row)
    finally:
        if rejects is not None:
            rejects.close()
    skipped = rejects.count if rejects else 0
    if not records:
        extra = f" ({skipped} skipped, see {rejects.path})" if rejects and skipped else ""
        raise DataError(path, None, None, f"no valid records{extra}")
    return RecordSet(
        path=path, records=records, roles=tuple(roles or ()), skipped=skipped,
        rejects_path=rejects.path if rejects and skipped else None,
        skipped_examples=rejects.examples if rejects else [],
    )
