"""Load a data file into validated records: per-record checks and a rejects file.

Which column plays which role, and which roles hold images, is ``data.roles``'s; image values
are checked by ``data.images``, captions made by ``data.captions``. Every record is checked as
it is read; a bad one is ``file:line: column: what is wrong``. With ``on_bad_record: skip`` bad
records are counted, written one JSON line each to a rejects file, and the first few messages
are kept for the report. Nothing is dropped silently.
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

import numpy as np

from contralign.core.errors import DataError
from contralign.core.items import ImageItem
from contralign.data.arrays import read_npz_layout
from contralign.data.captions import CaptionMaker
from contralign.data.images import parse_image
from contralign.data.readers import detect_format, printable, read_header, read_rows, value_kind
from contralign.data.records import DataConfig, Item, Record, RecordSet
from contralign.data.roles import (
    is_role,
    item_role,
    ordered_roles,
    prepare_roles,
    resolve_roles,
    role_order,
)

MAX_SKIPPED_EXAMPLES = 5
MAX_SHOWN_VALUE = 80  # characters of a bad value quoted in a message
MAX_RAW_BYTES = 256  # longer bytes (an encoded image) are described, not copied, in rejects
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_id(text: str) -> int:
    """A stable 63-bit id of ``text`` (BLAKE2b), equal across processes, runs and machines.

    Used to mask duplicates in a batch: two records with the same text get the same id. Python's
    ``hash`` is salted per process, so it cannot serve.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # 63 bits: fits a signed int64 tensor


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: a message quotes a bad value, not a whole document."""
    if isinstance(value, np.ndarray):  # its repr spans lines
        return f"{value.dtype} array of shape {value.shape}"
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


def parse_record(
    path: Path, line: int, row: Mapping[str, Any], roles: dict[str, str], *,
    modalities: Mapping[str, str] | None = None, captions: CaptionMaker | None = None,
) -> Record:
    """Validate one row and build its :class:`Record`.

    Args:
        path: the data file (for messages; relative image paths start at its folder).
        line: where the row sits in the file.
        row: file column -> raw value.
        roles: role -> file column, in role order (from :func:`resolve_roles`).
        modalities: item role -> ``text`` or ``image`` (from :func:`resolve_modalities`);
            default: every role holds texts.
        captions: fills the caption role from the label (the roles need a label).

    Raises:
        DataError: ``file:line: column: what is wrong`` for the first bad value.
    """
    items: dict[str, Item] = {}
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
            case _ if modalities and modalities.get(item_role(role)) == "image":
                items[role] = parse_image(path, line, field, value)
            case _:
                items[role] = _parse_text(path, line, field, value)
    made = None
    if captions is not None:
        if label is None:
            raise DataError(path, line, None, "captions are made from labels: map a label column")
        made = captions(path, line, printable(roles["label"]), label)
        items[captions.role] = made.texts[0]
    negatives = tuple(item for role, item in items.items() if role.startswith("negative"))
    return Record(
        anchor=items["anchor"], positive=items.get("positive"), negatives=negatives,
        label=label, score=score, line=line, captions=made,
    )


def record_fingerprint(record: Record) -> str:
    """A stable text of a record for data fingerprints (is a resumed run reading the same
    data?), equal across processes and machines.

    For a record of texts without captions it is ``repr`` of the tuple of its fields as
    ``dataclasses.astuple`` gave before records held images, so existing runs keep their
    fingerprints. An image is its key, plus for an array row the SHA-256 of its pixels (an
    array file's rows are named by position, so the key alone would miss changed pixels); a
    caption record adds its caption texts.
    """
    fields = (_item_fingerprint(record.anchor),
              None if record.positive is None else _item_fingerprint(record.positive),
              tuple(_item_fingerprint(item) for item in record.negatives),
              record.label, record.score, record.line)
    text = repr(fields)
    if record.captions is not None:
        text += repr((record.captions.role, record.captions.texts))
    return text


def _item_fingerprint(item: Item) -> str:
    if isinstance(item, str):
        return item
    assert isinstance(item, ImageItem)
    if item.array is not None:
        pixels = np.ascontiguousarray(item.array)
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()
        return f"\x00image\x00{item.key}\x00{pixels.shape}\x00{digest}"
    return f"\x00image\x00{item.key}"


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


def _raw_json(value: Any) -> str:
    """A raw value JSON cannot hold, as the rejects file shows it: an array or long bytes (an
    image) described, anything else as ``str``."""
    if isinstance(value, np.ndarray):
        return f"<{value.dtype} array of shape {value.shape}>"
    if isinstance(value, bytes | bytearray) and len(value) > MAX_RAW_BYTES:
        return f"<{len(value)} bytes>"
    return str(value)


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
            self._file.write(json.dumps(entry, ensure_ascii=False, default=_raw_json) + "\n")
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
        The records in file order, the roles present (a caption role included), what each
        item role holds, and what was skipped.

    Raises:
        DataError: a missing or unreadable file, an unknown role, a mapped column that is not in
            the file, no anchor column, a modality or caption setting that does not fit the
            data, a bad rejects path (with ``on_bad_record: skip``, checked before reading), a
            bad record (with ``on_bad_record: error``), or no valid record.
    """
    path = Path(config.path)
    fmt = detect_format(path, config.format)
    layout = read_npz_layout(path) if fmt == "npz" else None
    header = list(layout.columns) if layout is not None else read_header(path, fmt)
    captioned = config.captions.role if config.captions is not None else None
    roles = resolve_roles(path, config.columns, header, fmt, captioned=captioned)
    captions = None
    if config.captions is not None:
        captions = CaptionMaker.from_config(config.captions, path, fmt, layout, key)
    modalities = None
    if roles is not None:
        modalities = prepare_roles(path, roles, config, layout, key)
    rejects = None
    if config.on_bad_record == "skip":
        rejects = _Rejects(rejects_path_for(config, rejects_dir), f"{key}.rejects")
        check_rejects_path(rejects.path, path, key)
    records: list[Record] = []
    try:
        for line, row in read_rows(path, fmt, on_error=rejects.add if rejects else None):
            if roles is None or modalities is None:  # JSONL without a mapping: the first
                mapping = {k: k for k in row if is_role(k)}  # object's keys decide
                roles = ordered_roles(path, mapping, list(row), captioned)
                modalities = prepare_roles(path, roles, config, layout, key)
            try:
                records.append(parse_record(path, line, row, roles, modalities=modalities,
                                            captions=captions))
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
    present = tuple(sorted({*(roles or ()), *([captioned] if captioned else [])},
                           key=role_order))
    return RecordSet(
        path=path, records=records, roles=present, skipped=skipped,
        rejects_path=rejects.path if rejects and skipped else None,
        skipped_examples=rejects.examples if rejects else [], modalities=dict(modalities or {}),
    )
