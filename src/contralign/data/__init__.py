"""Data: readers, column roles, items of every modality, validation, batching and loading."""

from __future__ import annotations

from contralign.data.batching import (
    CollatedBatch,
    PairBatcher,
    Position,
    Preprocess,
    Tokenize,
    collate,
    contiguous_rows,
    preprocessor_for,
)
from contralign.data.captions import draw_caption
from contralign.data.dataset import (
    load_records,
    parse_record,
    record_fingerprint,
    rejects_path_for,
    text_id,
)
from contralign.data.loader import BatchCollator, BatchExtras, BatchLoader, TextViews
from contralign.data.readers import FileFormat, detect_format, read_header, read_rows
from contralign.data.records import (
    ITEM_ROLES,
    ROLES,
    CaptionConfig,
    Captions,
    DataConfig,
    DataFormat,
    Item,
    Record,
    RecordSet,
)
from contralign.data.roles import is_role, resolve_modalities, resolve_roles

__all__ = [
    "ITEM_ROLES",
    "ROLES",
    "BatchCollator",
    "BatchExtras",
    "BatchLoader",
    "CaptionConfig",
    "Captions",
    "CollatedBatch",
    "DataConfig",
    "DataFormat",
    "FileFormat",
    "Item",
    "PairBatcher",
    "Position",
    "Preprocess",
    "Record",
    "RecordSet",
    "TextViews",
    "Tokenize",
    "collate",
    "contiguous_rows",
    "detect_format",
    "draw_caption",
    "is_role",
    "load_records",
    "parse_record",
    "preprocessor_for",
    "read_header",
    "read_rows",
    "record_fingerprint",
    "rejects_path_for",
    "resolve_modalities",
    "resolve_roles",
    "text_id",
]
