"""IDX array files, the format of MNIST and Fashion-MNIST (LeCun et al., "THE MNIST DATABASE";
Xiao et al. 2017, arXiv:1708.07747), plain or gzip-compressed.

An IDX file is a 4-byte magic number — two zero bytes, a type code (``0x08`` uint8, ``0x09``
int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64) and the number of
dimensions — then each dimension's size as a big-endian uint32, then the values, big-endian, in
C order. Images and labels are two files: ``train-images-idx3-ubyte.gz`` (``(N, 28, 28)``
uint8) beside ``train-labels-idx1-ubyte.gz`` (``(N,)`` uint8).

The header is checked before any data is read: a file whose header claims more values than the
file can hold (for a gzip file, more than deflate's largest ratio allows) is a one-line error,
never an attempt to allocate them.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from contralign.core.errors import DataError
from contralign.data.lines import check_readable, open_binary_checked

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
MAX_DEFLATE_RATIO = 1032  # deflate's largest expansion of a compressed byte
_NAME = re.compile(r"idx[1-9]-ubyte(\.gz)?$", re.IGNORECASE)
_IMAGES = re.compile(r"images-idx3-ubyte", re.IGNORECASE)


def is_idx_path(path: str | Path) -> bool:
    """Whether ``path`` is named like an IDX file (``…-idx3-ubyte`` or ``…-idx1-ubyte.gz``)."""
    return bool(_NAME.search(Path(path).name))


def read_idx(path: str | Path) -> np.ndarray:
    """The array of the IDX file ``path`` (plain or gzip-compressed), in native byte order.

    Raises:
        DataError: a missing or unreadable file, a bad magic number or type code, a
            dimension of size 0, a header that claims more data than the file can hold, or
            data shorter or longer than the header says (the message names what).
    """
    path = Path(path)
    check_readable(path)
    with open_binary_checked(path) as raw:
        start = raw.read(2)
        raw.seek(0)
        size = raw.seek(0, 2)
        raw.seek(0)
        if start == GZIP_MAGIC:
            with gzip.GzipFile(fileobj=raw) as unzipped:
                return _read(path, unzipped, size * MAX_DEFLATE_RATIO)
        return _read(path, raw, size)


def _read(path: Path, f: BinaryIO | gzip.GzipFile, limit: int) -> np.ndarray:
    """Read the header and data from ``f``, whose data can be at most ``limit`` bytes."""
    try:
        magic = f.read(4)
        if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in IDX_TYPES:
            raise DataError(path, None, None, f"not an IDX file: magic number {magic.hex()} "
                            "(expected 0000 then a type code 08/09/0b/0c/0d/0e and the number "
                            "of dimensions)")
        dtype, ndim = IDX_TYPES[magic[2]], magic[3]
        if ndim < 1:
            raise DataError(path, None, None, "IDX header: 0 dimensions")
        sizes = f.read(4 * ndim)
        if len(sizes) < 4 * ndim:
            raise DataError(path, None, None, f"IDX header cut short: {ndim} dimension sizes "
                            "announced")
        shape = tuple(int(s) for s in np.frombuffer(sizes, dtype=">u4"))
        needed = math.prod(shape) * dtype.itemsize
        if 0 in shape or needed > limit:
            raise DataError(path, None, None, f"IDX header: shape {shape} {dtype.name} "
                            f"({needed} bytes) does not fit the file")
        data = f.read(needed)
        extra = f.read(1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip: a damaged or truncated stream
        raise DataError(path, None, None, f"damaged file: {exc}") from None
    if len(data) != needed or extra:
        got = f"{len(data)} bytes" if len(data) != needed else "more"
        raise DataError(path, None, None, f"IDX data: header says {shape} {dtype.name} "
                        f"({needed} bytes), file holds {got}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def labels_path_for(images: str | Path) -> Path:
    """The labels file beside an images file: ``images-idx3-ubyte`` becomes
    ``labels-idx1-ubyte`` in the name.

    Raises:
        DataError: the name holds no ``images-idx3-ubyte``.
    """
    images = Path(images)
    if not _IMAGES.search(images.name):
        raise DataError(images, None, None, "an IDX images file is named like "
                        "train-images-idx3-ubyte(.gz), with its labels beside it in "
                        "train-labels-idx1-ubyte(.gz)")
    return images.with_name(_IMAGES.sub("labels-idx1-ubyte", images.name))


def read_idx_labelled(images: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and their labels from an IDX images file and the labels file beside it.

    Returns:
        ``(images, labels)``: ``(N, H, W)`` uint8 and ``(N,)`` int64.

    Raises:
        DataError: either file is missing or malformed, the images are not ``(N, H, W)``
            uint8, the labels not ``(N,)`` integers, or their counts differ.
    """
    images, labels_path = Path(images), labels_path_for(images)
    pixels = read_idx(images)
    if pixels.ndim != 3 or pixels.dtype != np.uint8:
        raise DataError(images, None, None, f"expected (N, H, W) uint8 images, got "
                        f"{pixels.shape} {pixels.dtype.name}")
    labels = read_idx(labels_path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(labels_path, None, None, f"expected (N,) integer labels, got "
                        f"{labels.shape} {labels.dtype.name}")
    if len(labels) != len(pixels):
        raise DataError(labels_path, None, None, f"{len(labels)} labels for {len(pixels)} "
                        f"images in {images.name}")
    return pixels, labels.astype(np.int64)
