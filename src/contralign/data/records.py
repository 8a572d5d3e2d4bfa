"""Records and the data config: a table whose columns play roles (DESIGN.md, Records).

A record's ``anchor``, ``positive`` and ``negatives`` are *items*: a text (``str``) or an image
(``core.items.ImageItem``). ``DataConfig.modalities`` says which roles hold images; an ``.npz``
file's image arrays are images without being told. ``DataConfig.captions`` makes a role's texts
from class labels with prompt templates (CLIP, arXiv:2103.00020, section 3.1.4).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from pydantic import field_validator

from contralign.core.config import StrictConfig
from contralign.core.items import ImageItem
from contralign.core.towers import Modality

ROLES = ("anchor", "positive", "negative", "label", "score")
# Roles that hold items; ``negative`` stands for every hard-negative column (negative_2, ...).
ITEM_ROLES = ("anchor", "positive", "negative")
DataFormat = Literal["auto", "jsonl", "csv", "tsv", "parquet", "txt", "npz"]
Item: TypeAlias = str | ImageItem


class CaptionConfig(StrictConfig):
    """Caption texts made from class labels: ``{templates: ["a photo of a {label}."]}``.

    Attributes:
        templates: prompts that hold ``{label}``; the role's text is one of them filled with the
            record's class name. With several, each record draws one per epoch (deterministic,
            keyed by seed, epoch and the record's line).
        classes: the class names: a list (an integer label ``i`` names ``classes[i]``; a label
            that is a name must be one of them), the name of a 1-D string array of the ``.npz``
            data file (``classes``), or None: the label text is the class name.
        role: the role whose texts the captions are (``positive``, or ``anchor``).
    """

    templates: list[str]
    classes: list[str] | str | None = None
    role: Literal["anchor", "positive"] = "positive"

    @field_validator("templates")
    @classmethod
    def _check_templates(cls, templates: list[str]) -> list[str]:
        if not templates:
            raise ValueError("list at least one template, e.g. 'a photo of a {label}.'")
        for template in templates:
            problem = template_problem(template)
            if problem is not None:
                raise ValueError(f"template {template!r}: {problem}")
        return templates

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, classes: list[str] | str | None) -> list[str] | str | None:
        if isinstance(classes, str):
            if not classes.strip():
                raise ValueError("name an array of the .npz file, list the class names, or "
                                 "leave it out (the label is the class name)")
            return classes
        if classes is not None:
            if not classes:
                raise ValueError("list at least one class name")
            for index, name in enumerate(classes):
                if not name.strip():
                    raise ValueError(f"class {index} is an empty name")
                _check_encodable(name, f"class {index}")
        return classes


def template_problem(template: str) -> str | None:
    """What is wrong with a caption template, or None: it must hold ``{label}`` and no other
    field, and fill in without error."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return f"not a template: {exc} (write a literal brace as {{{{ or }}}})"
    other = sorted({name for name in fields if name != "label"})
    if other:
        return f"only {{label}} is filled in, not {{{other[0]}}}"
    if not fields:
        return "holds no {label}"
    try:
        template.format(label="x")
    except (ValueError, KeyError, IndexError) as exc:
        return f"not a template: {exc}"
    try:
        _check_encodable(template, "the template")
    except ValueError as exc:
        return str(exc)
    return None


def _check_encodable(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode (a lone surrogate at character "
                         f"{exc.start + 1})") from None


class DataConfig(StrictConfig):
    """Where a dataset lives and how its columns map to roles.

    ``columns`` maps a role to a file column: ``{anchor: title, positive: abstract}``. Roles:
    ``anchor``, ``positive``, ``negative`` / ``negative_2`` / …, ``label``, ``score``. Without a
    mapping, columns named like a role play that role. A ``txt`` file is one ``anchor`` column;
    an ``.npz`` file's ``images`` array is the anchor and ``labels`` the label.

    ``modalities`` says what a role's column holds: ``text`` or ``image`` (an image path,
    relative to the data file's folder; encoded bytes; or a row of an ``.npz`` image array).
    Default: ``image`` for an ``.npz`` image array, ``negative`` (every hard-negative column) as
    the positive, everything else ``text``. ``captions`` makes a role's texts from the labels.
    """

    path: str
    format: DataFormat = "auto"
    columns: dict[str, str] = {}
    modalities: dict[str, Modality] = {}
    captions: CaptionConfig | None = None
    on_bad_record: Literal["error", "skip"] = "error"
    rejects: str | None = None  # default: <run dir, else cwd>/<file stem>.rejects.jsonl

    @field_validator("modalities")
    @classmethod
    def _check_modalities(cls, modalities: dict[str, Modality]) -> dict[str, Modality]:
        for role in modalities:
            if role not in ITEM_ROLES:
                raise ValueError(f"{role!r} is not a role that holds items; roles: anchor, "
                                 "positive, negative (every hard-negative column)")
        return modalities


@dataclass(frozen=True)
class Captions:
    """The caption texts a record's ``role`` takes, one per template, in template order
    (one object is shared by every record of a class)."""

    role: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Record:
    """One validated row. ``line`` is the 1-based line of the row in its file (the row number
    for parquet and ``.npz``).

    ``anchor``, ``positive`` and ``negatives`` are texts or ``ImageItem``s. A record whose role
    comes from captions holds the first template's caption in that role and every caption in
    ``captions``; batches draw one per epoch (``data.captions.draw_caption``).
    """

    anchor: Item
    positive: Item | None = None
    negatives: tuple[Item, ...] = ()
    label: str | None = None
    score: float | None = None
    line: int = 0
    captions: Captions | None = None


@dataclass
class RecordSet:
    """The records read from one file and what was skipped on the way.

    ``roles`` are the roles present (a caption role included), ``modalities`` what each item
    role holds (``negative`` for every hard-negative column).
    """

    path: Path
    records: list[Record]
    roles: tuple[str, ...]
    skipped: int = 0
    rejects_path: Path | None = None
    skipped_examples: list[str] = field(default_factory=list)
    modalities: dict[str, Modality] = field(default_factory=dict)
