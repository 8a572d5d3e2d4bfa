"""``.npz`` array files (format ``npz``): named arrays whose rows are records.

An ``.npz`` file (``numpy.savez``) holds named arrays, e.g. ``images (N, 32, 32, 3) uint8``,
``labels (N,) int64`` and ``classes (10,) <U10``. Its *columns* are the arrays whose first
dimension is the row count ``N``: the first dimension of its arrays of two or more dimensions
(they must agree), or, when every array is 1-D, the longest length. A 1-D array of another
length (``classes``) is not a column but metadata, which captions can name; every 1-D array is
available as metadata. Rows are numbered ``1..N`` in messages, as parquet rows are.

A row's value is a Python scalar for a 1-D column (``str`` for a string array, ``bytes`` for a
byte-string array, ``int``, ``float``, ``bool``) and a read-only view of the row for an array of
more dimensions (an image: ``(H, W, 3)`` or ``(H, W)`` uint8).

Arrays are read with ``numpy.load(..., allow_pickle=False)`` only: a file that holds an object
array is refused before anything is loaded. The headers of the arrays are read first (no data),
so a damaged header that claims more data than the file holds is a one-line error, not an
attempt to allocate it.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from contralign.core.errors import DataError
from contralign.data.lines import check_readable, open_binary_checked
from contralign.data.readers import first_line, printable

NPY_SUFFIX = ".npy"
# What zipfile and numpy raise for bytes that are not a readable archive (a damaged central
# directory makes zipfile seek to a negative offset: OSError EINVAL).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, NotImplementedError,
            RuntimeError, struct.error, UnicodeDecodeError, OverflowError, OSError)
# Keys in the npz header dict that numpy reads; a larger header is refused by numpy itself.
MAX_HEADER_SIZE = 10_000


@dataclass(frozen=True)
class ArrayInfo:
    """One array of an ``.npz`` file, as its header describes it (no data read)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def describe(self) -> str:
        """``(5000, 32, 32, 3) uint8``."""
        return f"{self.shape} {self.dtype}"


@dataclass(frozen=True)
class NpzLayout:
    """The arrays of an ``.npz`` file: ``rows`` records, their ``columns`` (first dimension
    ``rows``) and ``metadata`` (every 1-D array, whatever its length), in file order."""

    rows: int
    columns: dict[str, ArrayInfo]
    metadata: dict[str, ArrayInfo]


def read_layout(path: Path, f: BinaryIO) -> NpzLayout:
    """The arrays of the ``.npz`` file open as ``f``, from their headers.

    Raises:
        DataError: not a zip archive of ``.npy`` arrays, a damaged or unsupported array header,
            an object array, a header that claims more data than its member holds, no arrays,
            or arrays of two or more dimensions with different first dimensions.
    """
    try:
        with zipfile.ZipFile(f) as archive:
            infos = [_member_info(path, archive, member) for member in archive.infolist()
                     if member.filename.endswith(NPY_SUFFIX)]
    except _DAMAGED as exc:
        raise DataError(path, None, None, f"not a readable .npz file: {first_line(exc)}") \
            from None
    if not infos:
        raise DataError(path, None, None, "holds no arrays (write one with numpy.savez)")
    blocks = [info for info in infos if len(info.shape) >= 2]
    if blocks:
        rows = blocks[0].shape[0]
        for info in blocks[1:]:
            if info.shape[0] != rows:
                raise DataError(path, None, printable(info.name), f"has {info.shape[0]} rows, but "
                                f"{printable(blocks[0].name)} has {rows}: the arrays of a file are "
                                "the columns of its records and need the same number of rows")
    else:
        rows = max((info.shape[0] for info in infos if len(info.shape) == 1), default=0)
    columns = {info.name: info for info in infos if info.shape and info.shape[0] == rows}
    metadata = {info.name: info for info in infos if len(info.shape) == 1}
    return NpzLayout(rows, columns, metadata)


def _member_info(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> ArrayInfo:
    name = member.filename[: -len(NPY_SUFFIX)]
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream, MAX_HEADER_SIZE)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream, MAX_HEADER_SIZE)
        else:
            raise DataError(path, None, printable(name), f"unsupported .npy format version "
                            f"{version[0]}.{version[1]} (save plain arrays with numpy.savez)")
        header = stream.tell()
    if dtype.hasobject:
        raise DataError(path, None, printable(name), "holds Python objects (dtype object), which "
                        "are not loaded (loading them would run pickle); save strings as a "
                        "fixed-width string array: numpy.array(values, dtype=str)")
    needed = math.prod(shape) * dtype.itemsize
    if header + needed > member.file_size:
        raise DataError(path, None, printable(name), f"damaged: its header says {shape} {dtype} "
                        f"({needed} bytes), but it holds {member.file_size - header} bytes")
    return ArrayInfo(name, tuple(shape), dtype)


def read_arrays(path: Path, f: BinaryIO, layout: NpzLayout,
                names: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the ``.npz`` file open as ``f`` (read-only).

    Raises:
        DataError: damaged array data, or an array that differs from ``layout`` (the file
            changed while it was read).
    """
    arrays: dict[str, np.ndarray] = {}
    name = None
    try:
        loaded = np.load(f, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(path, None, None, "not an .npz archive (numpy reads it as a single "
                            "array: save named arrays with numpy.savez)")
        with loaded as npz:
            for name in names:
                arrays[name] = npz[name]
    except _DAMAGED as exc:
        where = f"damaged data in array {printable(name)}" if name is not None else \
            "not a readable .npz file"
        raise DataError(path, None, None, f"{where}: {first_line(exc)}") from None
    for name, array in arrays.items():
        info = layout.columns.get(name) or layout.metadata[name]
        if array.shape != info.shape or array.dtype != info.dtype:
            raise DataError(path, None, printable(name), f"changed while it was read "
                            f"({info.describe()}, then {array.shape} {array.dtype})")
        array.flags.writeable = False  # rows are shared by records and their items
    return arrays


def rows_of(layout: NpzLayout, arrays: dict[str, np.ndarray]) -> Iterator[tuple[int, dict]]:
    """``(row number, {column: value})`` for rows ``1..N``: Python scalars from 1-D columns,
    read-only row views from the others."""
    values: dict[str, Any] = {}
    for name in layout.columns:
        array = arrays[name]
        values[name] = array.tolist() if array.ndim == 1 else array
    for index in range(layout.rows):
        yield index + 1, {name: column[index] for name, column in values.items()}


def is_image_array(info: ArrayInfo) -> bool:
    """Whether a column holds images (3 or 4 dimensions); a role that holds it is an image
    role unless ``modalities`` says otherwise."""
    return len(info.shape) in (3, 4)


def image_array_problem(info: ArrayInfo) -> str | None:
    """What keeps a column from being images, or None.

    Images are ``(N, H, W, 3)`` uint8 RGB, or ``(N, H, W)`` (also ``(N, H, W, 1)``) uint8
    grayscale, which towers receive as RGB with the channel repeated. A 1-D column of strings
    (paths, relative to the data file's folder) or byte strings (encoded images) also holds
    images.
    """
    shape = info.shape
    if len(shape) == 1:
        if info.dtype.kind in "US":
            return None
        return f"is a 1-D {info.dtype} array; images are a (N, H, W, 3) uint8 array, paths or " \
               "encoded bytes"
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))):
        return f"expected images of shape (N, H, W, 3), or (N, H, W) for grayscale, got {shape}"
    if info.dtype != np.uint8:
        return f"expected uint8 pixels (0..255), got {info.dtype}: save them as uint8"
    if shape[1] == 0 or shape[2] == 0:
        return f"holds images of no pixels: {shape}"
    return None


def read_npz_layout(path: Path) -> NpzLayout:
    """The arrays of the ``.npz`` file ``path``, from their headers (:func:`read_layout`).

    Raises:
        DataError: the file cannot be read, or is not a readable ``.npz`` file of plain arrays.
    """
    check_readable(path)
    with open_binary_checked(path) as f:
        return read_layout(path, f)


def read_npz_arrays(path: Path, layout: NpzLayout, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the ``.npz`` file ``path`` (:func:`read_arrays`).

    Raises:
        DataError: the file cannot be read, or its array data is damaged.
    """
    with open_binary_checked(path) as f:
        return read_arrays(path, f, layout, names)


def read_npz_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Every row of the ``.npz`` file ``path`` (:func:`rows_of`)."""
    layout = read_npz_layout(path)
    yield from rows_of(layout, read_npz_arrays(path, layout, list(layout.columns)))


def npz_names(path: str | Path, name: str) -> list[str] | None:
    """The 1-D array ``name`` of the ``.npz`` file ``path`` as strings (class names), or None
    when the file is not an ``.npz`` file or has no such array.

    Raises:
        DataError: the file cannot be read, or its array data is damaged.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return None
    layout = read_npz_layout(path)
    if name not in layout.metadata:
        return None
    return [str(value) for value in read_npz_arrays(path, layout, [name])[name].tolist()]
