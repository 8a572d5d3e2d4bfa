"""Items of every modality, as records carry them and towers' preprocessors take them.

A text is a ``str``. An image is an ``ImageItem``: where its pixels come from (a file, encoded
bytes, or an ``(H, W, 3)`` uint8 array) and a ``key`` that names it stably — equal across
processes, runs and machines — so duplicates can be masked and a locked tower's outputs cached.
The data layer makes them (``data``); image towers decode them (``encoders.image``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True, eq=False)
class ImageItem:
    """One image. Exactly one of ``path``, ``data`` and ``array`` is set.

    Attributes:
        key: a stable name: the resolved path, ``sha256:<hex>`` of the bytes, or
            ``<array file>#<row>`` for a row of an array file.
        path: an image file (any format Pillow reads).
        data: the encoded bytes of an image file (a Parquet binary column).
        array: ``(H, W, 3)`` uint8 pixels (a row of an ``.npz`` array file).
    """

    key: str
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    array: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        sources = sum(source is not None for source in (self.path, self.data, self.array))
        if sources != 1:
            raise ValueError(f"ImageItem {self.key!r}: give exactly one of path, data and array")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageItem) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    @classmethod
    def from_path(cls, path: str | Path) -> ImageItem:
        resolved = Path(path).resolve()
        return cls(str(resolved), path=resolved)

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageItem:
        return cls(f"sha256:{hashlib.sha256(data).hexdigest()}", data=bytes(data))

    @classmethod
    def from_array(cls, array: np.ndarray, source: str | Path, row: int) -> ImageItem:
        return cls(f"{Path(source).resolve()}#{row}", array=array)


def item_key(item: Any) -> str:
    """The stable name of an item: the text itself, or an image's key.

    Raises:
        TypeError: neither a text nor an ``ImageItem``.
    """
    if isinstance(item, str):
        return item
    if isinstance(item, ImageItem):
        return "\x00image\x00" + item.key  # never equal to a text
    raise TypeError(f"expected a text or an ImageItem, got {type(item).__name__}")


class ItemBatch:
    """A role's raw items, carried to a locked tower unpreprocessed: the tower preprocesses only
    the items its feature cache lacks, so after the first epoch nothing is decoded or tokenized
    again. It indexes along its first dimension like a tensor (rows as an index tensor, a
    slice or a list), so chunking and sharding treat it as any other input.

    Attributes:
        items: the ``B`` items (texts or ``ImageItem``s), picklable.
    """

    def __init__(self, items: Any) -> None:
        self.items = list(items)

    @property
    def shape(self) -> tuple[int]:
        return (len(self.items),)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, rows: Any) -> ItemBatch:
        if isinstance(rows, slice):
            return ItemBatch(self.items[rows])
        indices = rows.tolist() if hasattr(rows, "tolist") else list(rows)
        return ItemBatch(self.items[i] for i in indices)


@dataclass(frozen=True)
class Deferred:
    """The preprocessor of a locked tower's role: items -> ``{"items": ItemBatch}``; the tower
    preprocesses them when, and only if, its cache lacks them. Picklable."""

    def __call__(self, items: Any) -> dict[str, ItemBatch]:
        return {"items": ItemBatch(items)}
