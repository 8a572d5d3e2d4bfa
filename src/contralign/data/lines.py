"""Data files as numbered physical lines: the byte-level layer under ``data.readers``.

Bytes are decoded one physical line at a time (a byte-order mark before the first is dropped), so
a byte that is not UTF-8 is reported at its own line, never at a line the decoder read ahead to;
every OS refusal (missing, a folder, a pipe, no permission, a failing disk) is a one-line
:class:`~contralign.core.errors.DataError`.
"""

from __future__ import annotations

import codecs
import re
import stat
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from contralign.core.errors import DataError

_UNDECODED = re.compile("[\udc80-\udcff]")


def check_readable(path: Path) -> None:
    """Raise the one-line error for a data path that is not an existing regular file.

    Raises:
        DataError: ``file not found``, a folder, a device or pipe, or a ``stat`` the OS refuses.
    """
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(path, None, None, "file not found") from None
    except OSError as exc:
        raise unreadable(path, exc) from None
    if stat.S_ISDIR(mode):
        raise DataError(path, None, None, "is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise DataError(path, None, None, "not a regular file")


def unreadable(path: Path, exc: OSError) -> DataError:
    return DataError(path, None, None, f"cannot read the file: {exc.strerror or exc}")


def open_binary(path: Path) -> BinaryIO:
    """The one place a data file is opened (tests replace it to simulate an OS refusal)."""
    return path.open("rb")


def open_binary_checked(path: Path) -> BinaryIO:
    try:
        return open_binary(path)
    except OSError as exc:
        raise unreadable(path, exc) from None


def rawnumbered_lines(path: Path) -> Iterator[bytes]:
    with open_binary_checked(path) as f:
        while True:
            try:
                raw = f.readline()
            except OSError as exc:
                raise unreadable(path, exc) from None
            if not raw:
                return
            yield raw


class Line(NamedTuple):
    """A physical line: its number, its text with terminator (an undecodable byte kept as a lone
    surrogate) and, for bytes that are not UTF-8, what is wrong with them."""

    number: int
    text: str
    problem: str | None = None

    def error(self, path: Path) -> DataError:
        """What is wrong with this line's bytes, at this line."""
        assert self.problem is not None, "only a line with undecodable bytes has an error"
        return DataError(path, self.number, None, self.problem)

    def shown(self) -> str:
        """The text for a rejects file, an undecodable byte written as ``\\xNN``."""
        if self.problem is None:
            return self.text
        return self.text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def decode(number: int, raw: bytes) -> Line:
    try:
        return Line(number, raw.decode("utf-8"))
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "surrogateescape")
    bad = _UNDECODED.search(text)
    assert bad is not None, "strict decoding failed, so surrogateescape escaped a byte"
    byte = ord(bad.group()) - 0xDC00
    problem = f"not valid UTF-8: byte 0x{byte:02x} at column {bad.start() + 1} (save as UTF-8)"
    return Line(number, text, problem)


def numbered_lines(path: Path, *, split_cr: bool) -> Generator[Line, None, None]:
    """Each physical line, decoded on its own; ``split_cr`` also ends a line at a lone ``\\r``."""
    number = 0
    for raw in rawnumbered_lines(path):
        if number == 0 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        # bytes.splitlines splits at \n, \r\n and \r only; \r\n never straddles two raw lines.
        for piece in raw.splitlines(keepends=True) if split_cr and b"\r" in raw else (raw,):
            number += 1
            yield decode(number, piece)


def joined(lines: Iterable[Line]) -> str:
    return "".join(line.shown() for line in lines).rstrip("\r\n")
