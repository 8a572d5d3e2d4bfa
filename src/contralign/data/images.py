"""Image values of a record: checked where they enter, decoded later by the image tower.

An image column holds, per row:

- a path (a string): relative to the data file's folder, absolute paths as given; spaces around
  it are dropped. The file must exist and be a regular file (checked at load; not decoded).
- encoded image bytes (a Parquet binary column, or a byte-string ``.npz`` array), or a Hugging
  Face ``datasets`` image struct ``{"bytes": ..., "path": ...}`` (the bytes when present, else
  the path).
- a row of an ``.npz`` image array: ``(H, W, 3)`` uint8, or ``(H, W)`` / ``(H, W, 1)`` uint8
  grayscale, which becomes ``(H, W, 3)`` with the channel repeated (a read-only view, no copy).

Each becomes a ``core.items.ImageItem``; decoding is the image tower's preprocessor's job.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from contralign.core.errors import DataError
from contralign.core.items import ImageItem
from contralign.data.readers import printable, value_kind


def parse_image(path: Path, line: int, field: str, value: Any) -> ImageItem:
    """The ``ImageItem`` of one image value of the data file ``path``.

    Args:
        path: the data file: relative image paths start at its folder, and an array row is
            named ``<path>#<line>``.
        line: the row's line (row number for parquet and ``.npz``).
        field: the column, for messages.
        value: a path string, bytes, an image struct or an array row.

    Raises:
        DataError: ``file:line: column: what is wrong``: a missing value, an image file that is
            not there or not a file, empty bytes, an array row of the wrong shape or type, or a
            value of another kind.
    """
    match value:
        case None:
            raise DataError(path, line, field, "missing value (null)")
        case str():
            return _image_file(path, line, field, value)
        case bytes() | bytearray() | memoryview():
            if not len(value):
                raise DataError(path, line, field, "empty image bytes")
            return ImageItem.from_bytes(bytes(value))
        case {"bytes": data, **rest} if data is not None and set(rest) <= {"path"}:
            return parse_image(path, line, field, data)
        case {"path": str() as file, **rest} if set(rest) <= {"bytes"}:
            return _image_file(path, line, field, file)
        case np.ndarray():
            return ImageItem.from_array(_rgb(path, line, field, value), path, line)
    raise DataError(path, line, field, f"expected an image path, image bytes or an array, got "
                    f"{value_kind(value)}")


def _image_file(path: Path, line: int, field: str, text: str) -> ImageItem:
    name = text.strip()
    if not name:
        raise DataError(path, line, field, "empty image path")
    if "\x00" in name:
        raise DataError(path, line, field, f"not a path: it holds a NUL character: "
                        f"{printable(name)}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(path, line, field, f"not valid Unicode: a lone surrogate at character "
                        f"{exc.start + 1}") from None
    file = Path(name)
    if not file.is_absolute():
        file = path.parent / file
    shown = printable(str(file))
    try:
        mode = os.stat(file).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(path, line, field, f"image file not found: {shown}") from None
    except OSError as exc:
        raise DataError(path, line, field, f"cannot check the image file {shown}: "
                        f"{exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise DataError(path, line, field, f"is a folder, not an image file: {shown}")
    if not stat.S_ISREG(mode):
        raise DataError(path, line, field, f"not a regular file: {shown}")
    return ImageItem.from_path(file)


def _rgb(path: Path, line: int, field: str, pixels: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels; grayscale becomes a read-only view with the channel
    repeated."""
    if pixels.dtype != np.uint8:
        raise DataError(path, line, field, f"expected uint8 pixels (0..255), got {pixels.dtype}")
    shape = pixels.shape
    if len(shape) in (2, 3) and 0 in shape[:2]:
        raise DataError(path, line, field, f"an image of no pixels: shape {shape}")
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        pixels = pixels.reshape(shape[0], shape[1], 1)
        return np.broadcast_to(pixels, (shape[0], shape[1], 3))
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(path, line, field, f"expected an (H, W, 3) or (H, W) image, got an "
                        f"array of shape {shape}")
    return pixels
