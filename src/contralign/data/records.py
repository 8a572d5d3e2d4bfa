"""Records and the data config: a table whose columns play roles (DESIGN.md, Records)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from contralign.core.config import StrictConfig

ROLES = ("anchor", "positive", "negative", "label", "score")
DataFormat = Literal["auto", "jsonl", "csv", "tsv", "parquet", "txt"]


class DataConfig(StrictConfig):
    """Where a dataset lives and how its columns map to roles.

    ``columns`` maps a role to a file column: ``{anchor: title, positive: abstract}``. Roles:
    ``anchor``, ``positive``, ``negative`` / ``negative_2`` / …, ``label``, ``score``. Without a
    mapping, columns named like a role play that role. A ``txt`` file is one ``anchor`` column.
    """

    path: str
    format: DataFormat = "auto"
    columns: dict[str, str] = {}
    on_bad_record: Literal["error", "skip"] = "error"
    rejects: str | None = None  # default: <run dir, else cwd>/<file stem>.rejects.jsonl


@dataclass(frozen=True)
class Record:
    """One validated row. ``line`` is the 1-based line of the row in its file."""

    anchor: str
    positive: str | None = None
    negatives: tuple[str, ...] = ()
    label: str | None = None
    score: float | None = None
    line: int = 0


@dataclass
class RecordSet:
    """The records read from one file and what was skipped on the way."""

    path: Path
    records: list[Record]
    roles: tuple[str, ...]
    skipped: int = 0
    rejects_path: Path | None = None
    skipped_examples: list[str] = field(default_factory=list)
