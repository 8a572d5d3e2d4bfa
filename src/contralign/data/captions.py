"""Captions from class labels: prompt templates filled with class names.

CLIP (Radford et al. 2021, arXiv:2103.00020, section 3.1.4) turns a class label into a text with
prompts such as ``"a photo of a {label}."`` and ensembles several. ``DataConfig.captions`` does
the same for training data: the caption role of each record is a template filled with the
record's class name. With several templates, a record's template is drawn anew each epoch from
a generator keyed by (seed, epoch, record line) (:func:`draw_caption`), so every process, every
batch size and every resumed run draws the same caption for the same record and epoch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from contralign.core.errors import DataError
from contralign.data.readers import FileFormat, printable
from contralign.data.records import CaptionConfig, Captions
from contralign.data.views import view_rng

if TYPE_CHECKING:
    from contralign.data.arrays import NpzLayout

_INTEGER = re.compile(r"[+-]?[0-9]+")
SHOWN_CLASSES = 5


def draw_caption(captions: Captions, seed: int, epoch: int, line: int) -> str:
    """The caption of the record at ``line`` for ``epoch``: one of ``captions.texts``, drawn from
    a generator keyed by ("caption", seed, epoch, line), the same in every process."""
    texts = captions.texts
    if len(texts) == 1:
        return texts[0]
    return texts[view_rng("caption", seed, epoch, line).randrange(len(texts))]


class CaptionMaker:
    """A record's label -> its :class:`Captions` (one per class, shared by its records).

    Args:
        config: the templates, the classes and the caption role.
        classes: the class names (``config.classes`` resolved), or None: the label is the name.
    """

    def __init__(self, config: CaptionConfig, classes: list[str] | None) -> None:
        self.role = config.role
        self.templates = tuple(config.templates)
        self.classes = classes
        self._names = set(classes or ())
        self._made: dict[str, Captions] = {}

    @classmethod
    def from_config(cls, config: CaptionConfig, path: Path, fmt: FileFormat,
                    layout: NpzLayout | None, key: str = "data") -> CaptionMaker:
        """The maker of ``config`` for the data file ``path``; ``classes`` that name an array
        are read from the ``.npz`` file (``layout``).

        Raises:
            DataError: ``classes`` names an array, but the file is not ``.npz``, has no 1-D array
                of that name, or the array does not hold non-empty names.
        """
        if not isinstance(config.classes, str):
            return cls(config, config.classes)
        field = f"{key}.captions.classes"
        name = config.classes
        if layout is None:
            raise DataError(path, None, field, f"{name!r} names an array of an .npz file, but "
                            f"this is a {fmt} file: list the class names instead")
        if name not in layout.metadata:
            arrays = ", ".join(printable(n) for n in layout.metadata) or "none"
            raise DataError(path, None, field, f"no 1-D array named {name!r} (1-D arrays: "
                            f"{arrays})")
        from contralign.data.arrays import read_npz_arrays

        array = read_npz_arrays(path, layout, [name])[name]
        if array.dtype.kind not in "US":
            raise DataError(path, None, field, f"array {name!r} holds {array.dtype} values, not "
                            "class names (a string array)")
        classes: list[str] = []
        for index, value in enumerate(array.tolist()):
            try:
                text = value.decode("utf-8") if isinstance(value, bytes) else value
                text.encode("utf-8")
            except UnicodeError:
                raise DataError(path, None, field, f"class {index} of array {name!r} is not "
                                "valid UTF-8") from None
            if not text.strip():
                raise DataError(path, None, field, f"class {index} of array {name!r} is an "
                                "empty name")
            classes.append(text)
        return cls(config, classes)

    def class_name(self, path: Path, line: int, field: str, label: str) -> str:
        """The class name of ``label``: ``classes[label]`` for an integer label, the label
        itself when it is one of ``classes`` (or when there are no ``classes``).

        Raises:
            DataError: a label that is neither an index into ``classes`` nor one of them.
        """
        classes = self.classes
        if classes is None:
            return label
        if _INTEGER.fullmatch(label) and 0 <= int(label) < len(classes):
            return classes[int(label)]
        if label in self._names:
            return label
        shown = ", ".join(repr(name) for name in classes[:SHOWN_CLASSES])
        more = ", …" if len(classes) > SHOWN_CLASSES else ""
        raise DataError(path, line, field, f"label {label!r} is not a class: expected an index "
                        f"in 0..{len(classes) - 1} or a class name ({shown}{more})")

    def __call__(self, path: Path, line: int, field: str, label: str) -> Captions:
        """The captions of a record with ``label`` (at ``line``, column ``field``).

        Raises:
            DataError: the label is not a class.
        """
        name = self.class_name(path, line, field, label)
        captions = self._made.get(name)
        if captions is None:
            texts = tuple(template.format(label=name) for template in self.templates)
            captions = self._made[name] = Captions(self.role, texts)
        return captions

