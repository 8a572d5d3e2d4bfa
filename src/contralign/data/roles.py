"""Column roles and what they hold: which file column plays which role, and which item roles
hold texts and which images.

Roles (DESIGN.md, Records): ``anchor`` (required), ``positive``, ``negative`` / ``negative_2`` /
``negative_3`` …, ``label``, ``score``. ``DataConfig.columns`` maps a role to a file column; an
explicit mapping is the whole mapping (it is not merged with columns named like roles). Without
one, file columns whose names are roles take those roles (for JSONL, the keys of the first
object), a ``txt`` file's ``text`` column is the anchor, and an ``.npz`` file maps its ``images``
(or ``image``) array to the first of anchor and positive that no column and no caption takes,
and ``labels`` (or ``label``) to the label.

The item roles (``anchor``, ``positive``, ``negative`` for every hard-negative column) hold texts
or images (:func:`resolve_modalities`); a caption role (``DataConfig.captions.role``) needs no
column: its texts are made from the labels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from contralign.core.errors import DataError
from contralign.core.towers import Modality
from contralign.data.arrays import NpzLayout, image_array_problem, is_image_array
from contralign.data.readers import FileFormat, printable
from contralign.data.records import ITEM_ROLES, DataConfig

_ROLE = re.compile(r"anchor|positive|negative(?:_(?P<k>[2-9]|[1-9][0-9]+))?|label|score")
ROLE_HELP = "anchor, positive, negative, negative_2, negative_3, …, label, score"
# The conventional names of an .npz file's columns, the roles they take without a mapping.
NPZ_IMAGES = ("images", "image")
NPZ_LABELS = ("labels", "label")


def is_role(name: str) -> bool:
    """Whether ``name`` is a role: anchor, positive, negative[_k], label or score."""
    return _ROLE.fullmatch(name) is not None


def role_order(role: str) -> tuple[int, int]:
    """Sort key: anchor, positive, negatives by number, label, score."""
    match = _ROLE.fullmatch(role)
    assert match is not None
    base = role.split("_")[0]
    rank = ("anchor", "positive", "negative", "label", "score").index(base)
    return rank, int(match.group("k") or 1)


def resolve_roles(
    path: Path, columns: Mapping[str, str], header: list[str] | None, fmt: FileFormat,
    *, captioned: str | None = None,
) -> dict[str, str] | None:
    """The role -> column mapping, in role order; None when it must come from a JSONL object.

    Args:
        captioned: the role that captions fill (``DataConfig.captions.role``), if any: it needs
            no column, and an ``.npz`` file's images do not default to it.

    Raises:
        DataError: an unknown role in ``columns``; a mapped column missing from the header
            (reported at line 1 for CSV/TSV, at the file for parquet and ``.npz``); no anchor.
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
        if fmt == "npz":
            _npz_conventions(mapping, header, captioned)
    if header is not None:
        available = ", ".join(printable(name) for name in header)
        line = 1 if fmt in ("csv", "tsv") else None
        for role, column in mapping.items():
            if column not in header:
                message = f"no such column (mapped to {role}); available columns: {available}"
                raise DataError(path, line, printable(column), message)
    return ordered_roles(path, mapping, header, captioned)


def _npz_conventions(mapping: dict[str, str], header: list[str], captioned: str | None) -> None:
    """Map an ``.npz`` file's ``images`` and ``labels`` arrays to the roles they play."""
    free = [role for role in ("anchor", "positive") if role not in mapping and role != captioned]
    images = next((name for name in NPZ_IMAGES if name in header), None)
    if images is not None and free and images not in mapping.values():
        mapping[free[0]] = images
    labels = next((name for name in NPZ_LABELS if name in header), None)
    if labels is not None and "label" not in mapping and labels not in mapping.values():
        mapping["label"] = labels


def ordered_roles(path: Path, mapping: dict[str, str], available: list[str] | None,
                  captioned: str | None = None) -> dict[str, str]:
    """``mapping`` in role order.

    Raises:
        DataError: no anchor column (and no anchor from captions).
    """
    if "anchor" not in mapping and captioned != "anchor":
        message = "no anchor column: name one with columns: {anchor: <column>}"
        if available is not None:
            message += f"; available columns: {', '.join(map(printable, available)) or 'none'}"
        raise DataError(path, None, "columns", message)
    return {role: mapping[role] for role in sorted(mapping, key=role_order)}


def item_role(role: str) -> str:
    """The item role a column role belongs to: ``negative`` for ``negative_2``, ``negative_3``,
    …; the role itself otherwise."""
    return "negative" if role.startswith("negative") else role


def resolve_modalities(
    path: Path, roles: Mapping[str, str], config: DataConfig, layout: NpzLayout | None = None,
    key: str = "data",
) -> dict[str, Modality]:
    """What each item role present holds: ``{anchor: image, positive: text, negative: ...}``.

    ``config.modalities`` decides; without it a role whose ``.npz`` column is an image array
    holds images, a caption role texts, ``negative`` (every hard-negative column) what the
    positive holds (the anchor without a positive), and any other role texts. The ``.npz``
    columns are checked against their roles here, once for the file.

    Raises:
        DataError: a modality for a role the data does not have, an image modality for a
            caption role, or an ``.npz`` column that cannot play its role (images of the wrong
            shape or type, a multi-dimensional array as text, a label or a score).
    """
    captioned = config.captions.role if config.captions is not None else None
    present = {item_role(role) for role in roles if item_role(role) in ITEM_ROLES}
    if captioned is not None:
        present.add(captioned)
    for role, modality in config.modalities.items():
        if role not in present:
            shown = ", ".join(r for r in ITEM_ROLES if r in present)
            raise DataError(path, None, f"{key}.modalities", f"{role}: the data has no {role} "
                            f"column (item roles: {shown})")
        if role == captioned and modality != "text":
            raise DataError(path, None, f"{key}.modalities", f"{role}: its texts are captions "
                            f"({key}.captions.role), so it cannot hold {modality}s")
    modalities: dict[str, Modality] = {}
    for base in ITEM_ROLES:
        if base not in present:
            continue
        images = layout is not None and any(
            is_image_array(layout.columns[column]) for role, column in roles.items()
            if item_role(role) == base)
        if base in config.modalities:
            modalities[base] = config.modalities[base]
        elif base == captioned:
            modalities[base] = "text"
        elif images:
            modalities[base] = "image"
        elif base == "negative":
            modalities[base] = modalities.get("positive", modalities["anchor"])
        else:
            modalities[base] = "text"
    if layout is not None:
        _check_npz_columns(path, roles, modalities, layout)
    return modalities


def _check_npz_columns(path: Path, roles: Mapping[str, str], modalities: Mapping[str, str],
                       layout: NpzLayout) -> None:
    for role, column in roles.items():
        info = layout.columns[column]
        base = item_role(role)
        if modalities.get(base) == "image":
            problem = image_array_problem(info)
        elif len(info.shape) >= 2:
            what = "its texts" if base in ITEM_ROLES else f"its {base}s"
            problem = f"is an array of shape {info.shape}, but {role} takes {what} from a 1-D " \
                      "array"
            if is_image_array(info) and base in ITEM_ROLES:
                problem += f" (images? set modalities: {{{base}: image}})"
        else:
            continue
        if problem is not None:
            raise DataError(path, None, printable(column), f"{problem} (mapped to {role})")


def prepare_roles(path: Path, roles: dict[str, str], config: DataConfig,
                  layout: NpzLayout | None, key: str) -> dict[str, Modality]:
    """Check the roles against the captions and resolve the modalities.

    Raises:
        DataError: a column mapped to the caption role, captions without a label column, or
            what :func:`resolve_modalities` refuses.
    """
    if config.captions is not None:
        role = config.captions.role
        if role in roles:
            raise DataError(path, None, f"{key}.captions.role", f"{role} comes from captions, "
                            f"but column {printable(roles[role])} is mapped to it too: map it "
                            "to another role or leave it out")
        if "label" not in roles:
            raise DataError(path, None, f"{key}.captions", "captions are made from labels: map "
                            "a label column (columns: {label: <column>})")
    return resolve_modalities(path, roles, config, layout, key)
