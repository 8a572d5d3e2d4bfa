"""Data: readers, column roles, validation and batching."""

from __future__ import annotations

from contralign.data.batching import CollatedBatch, PairBatcher, Tokenize, collate
from contralign.data.dataset import (
    is_role,
    load_records,
    parse_record,
    rejects_path_for,
    resolve_roles,
    text_id,
)
from contralign.data.readers import FileFormat, detect_format, read_header, read_rows
from contralign.data.records import ROLES, DataConfig, DataFormat, Record, RecordSet

__all__ = [
    "ROLES",
    "CollatedBatch",
    "DataConfig",
    "DataFormat",
    "FileFormat",
    "PairBatcher",
    "Record",
    "RecordSet",
    "Tokenize",
    "collate",
    "detect_format",
    "is_role",
    "load_records",
    "parse_record",
    "read_header",
    "read_rows",
    "rejects_path_for",
    "resolve_roles",
    "text_id",
]
