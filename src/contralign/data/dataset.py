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
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from contralign.core.errors import DataError
from contralign.data.readers import FileFormat, detect_format, read_header, read_rows, value_kind
from contralign.data.records import DataConfig, Record, RecordSet

_ROLE = re.compile(r"anchor|positive|negative(?:_(?P<k>[2-9]|[1-9][0-9]+))?|label|score")
ROLE_HELP = "anchor, positive, negative, negative_2, negative_3, …, label, score"
MAX_SKIPPED_EXAMPLES = 5


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
        available = ", ".join(header)
        line = 1 if fmt in ("csv", "tsv") else None
        for role, column in mapping.items():
            if column not in header:
                message = f"no such column (mapped to {role}); available columns: {available}"
                raise DataError(path, line, column, message)
    return _ordered(path, mapping, header)


def _ordered(path: Path, mapping: dict[str, str], available: list[str] | None) -> dict[str, str]:
    if "anchor" not in mapping:
        message = "no anchor column: name one with columns: {anchor: <column>}"
        if available is not None:
            message += f"; available columns: {', '.join(available) or 'none'}"
        raise DataError(path, None, "columns", message)
    return {role: mapping[role] for role in sorted(mapping, key=_role_order)}


def _parse_text(path: Path, line: int, column: str, value: Any) -> str:
    if value is None:
        raise DataError(path, line, column, "missing value (null)")
    if not isinstance(value, str):
        raise DataError(path, line, column, f"expected text, got {value_kind(value)}: {value!r}")
    text = value.strip()
    if not text:
        raise DataError(path, line, column, "empty text")
    return text


def _parse_score(path: Path, line: int, column: str, value: Any) -> float:
    if value is None:
        raise DataError(path, line, column, "missing value (null)")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DataError(path, line, column, f"not a number: {value!r}")
    try:
        score = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise DataError(path, line, column, f"not a number: {value!r}") from None
    if not math.isfinite(score):
        raise DataError(path, line, column, f"not a finite number: {value!r}")
    return score


def _parse_label(path: Path, line: int, column: str, value: Any) -> str:
    if value is None:
        raise DataError(path, line, column, "missing value (null)")
    if not isinstance(value, str | int | float | bool):
        raise DataError(path, line, column, f"expected a scalar label, got {value_kind(value)}")
    label = str(value).strip()
    if not label:
        raise DataError(path, line, column, "empty label")
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
        if column not in row:
            raise DataError(path, line, column, "missing column")
        value = row[column]
        match role:
            case "score":
                score = _parse_score(path, line, column, value)
            case "label":
                label = _parse_label(path, line, column, value)
            case _:
                texts[role] = _parse_text(path, line, column, value)
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


class _Rejects:
    """Counts bad records and writes each as one JSON line; the file is created on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.examples: list[str] = []
        self._file: IO[str] | None = None

    def add(self, error: DataError, raw: Any) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
        entry = {
            "file": error.path, "line": error.line, "field": error.field,
            "error": error.message, "raw": raw,
        }
        self._file.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        self.count += 1
        if len(self.examples) < MAX_SKIPPED_EXAMPLES:
            self.examples.append(str(error))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def load_records(config: DataConfig, rejects_dir: Path | None = None) -> RecordSet:
    """Read and validate every record of ``config.path``.

    Args:
        config: the file, its format, the role mapping and what to do with a bad record.
        rejects_dir: where ``<stem>.rejects.jsonl`` goes when ``config.rejects`` is not set
            (usually the run directory); default: the current directory.

    Returns:
        The records in file order, the roles present, and what was skipped.

    Raises:
        DataError: a missing file, an unknown role, a mapped column that is not in the file,
            no anchor column, a bad record (with ``on_bad_record: error``), or no valid record.
    """
    path = Path(config.path)
    fmt = detect_format(path, config.format)
    header = read_header(path, fmt)
    roles = resolve_roles(path, config.columns, header, fmt)
    rejects = _Rejects(rejects_path_for(config, rejects_dir)) \
        if config.on_bad_record == "skip" else None
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
