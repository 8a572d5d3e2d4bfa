"""Atomic writes: a kill never leaves a half-written file or folder behind.

Both follow the user's umask (``tempfile`` creates 0600 files and 0700 folders), and a folder
replaces only a folder of its own kind (``core.outputs``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from contralign.core.outputs import (
    OutputError,
    OutputKind,
    check_replaceable,
    follow_umask,
    make_parent,
)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """Yield a binary file beside ``path``; on success it is fsynced and renamed over ``path``.

    Raises:
        OutputError: the folder of ``path`` cannot be made or written (one line naming it).
        Whatever the body raises; the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    make_parent(path, "output")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"output: {path}: cannot write here ({err.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        follow_umask(Path(tmp), folder=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_file``)."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write_bytes`` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_directory(path: str | Path, kind: OutputKind, key: str = "output") -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` in one rename.

    ``key`` names the folder in error messages (``output``, or the setting it came from).

    The body must write ``kind``'s manifest into the folder. ``path`` itself may be absent, an
    empty folder, or a ``kind`` folder contralign wrote; anything else is refused before the
    body runs.

    Raises:
        OutputError: ``path`` is a file or holds files that are not a ``kind`` folder of ours.
        Whatever the body raises; the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    check_replaceable(path, kind, key, replace=True)
    make_parent(path, key)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as err:
        raise OutputError(f"{key}: {path}: cannot write here ({err.strerror})") from None
    try:
        follow_umask(tmp, folder=True)
        yield tmp
        _settle(tmp)
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(new: Path, path: Path) -> None:
    """Put the folder ``new`` at ``path``; an old ``path`` (ours: checked by the caller) is moved
    aside first so the new one appears in a single rename, then deleted."""
    if path.exists():
        # A fresh name of our own for the old folder: nothing of the user's is in the way.
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.rmdir(old)
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


# The names tempfile gives the temporaries above: ".<name>.<8 random characters>.tmp|.old".
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)$")


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files and folders that a kill left in ``folder`` — a folder of
    contralign's own (a run directory, its checkpoints): only names ``atomic_file`` and
    ``atomic_directory`` make."""
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if _TEMPORARY.match(child.name):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _settle(folder: Path) -> None:
    """Give everything in ``folder`` the user's usual modes (safetensors writes 0600 files) and
    put its files on disk before the rename makes it the folder."""
    for child in sorted(folder.rglob("*")):
        follow_umask(child, folder=child.is_dir())
        if child.is_file():
            with open(child, "rb") as f:
                os.fsync(f.fileno())


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(folder: Path, names: list[str]) -> dict[str, str]:
    """``{name: sha256}`` of the files ``names`` (paths relative to ``folder``)."""
    return {name: file_sha256(folder / name) for name in names}


def damaged_files(folder: Path, checksums: dict[str, str]) -> list[str]:
    """The files of ``checksums`` that are missing from ``folder`` or whose bytes changed."""
    damaged = []
    for name, expected in checksums.items():
        path = folder / name
        try:
            if file_sha256(path) != expected:
                damaged.append(name)
        except OSError:
            damaged.append(name)
    return damaged
