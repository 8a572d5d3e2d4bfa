"""Outputs: what contralign may create, replace or delete, decided in one place.

contralign replaces only a folder that it made itself and recognises by the manifest it wrote
there (an ``OutputKind``: a run directory's ``run.json``, an index folder's ``index.json``, a model
folder's ``contralign.json``, a checkpoint's ``state.json``). It never writes over the working
directory, a folder that holds an input of the command, an input itself, or a file it did not
make; and the commands replace nothing until everything else has been validated. A folder is
replaced by writing the new one beside it and swapping it in at the end
(``core.io.atomic_directory``), so a failure leaves the old one intact.

One writer per folder: ``hold_lock`` takes an exclusive lock that the operating system releases
when the process dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from contralign.core.errors import ContralignError


class OutputError(ContralignError):
    """An output path contralign may not write: ``key: path: why, and what to do instead``."""


@dataclass(frozen=True)
class OutputKind:
    """A kind of folder contralign makes, recognised by its manifest.

    Attributes:
        label: how messages name it (``"run directory"``).
        manifest: the file contralign writes into every such folder.
        marker: a key the manifest's JSON object always holds.
    """

    label: str
    manifest: str
    marker: str


RUN = OutputKind("run directory", "run.json", "run_format")
INDEX = OutputKind("index folder", "index.json", "fingerprint")
MODEL = OutputKind("model folder", "contralign.json", "tower")
CHECKPOINT = OutputKind("checkpoint", "state.json", "state")


def read_manifest(folder: Path, kind: OutputKind) -> dict | None:
    """``folder``'s manifest of ``kind`` as a dict, or None when it is absent or not ours."""
    path = folder / kind.manifest
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and kind.marker in data else None


def is_owned(folder: Path, kind: OutputKind) -> bool:
    """Whether ``folder`` is a folder of ``kind`` that contralign wrote."""
    return folder.is_dir() and read_manifest(folder, kind) is not None


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def check_not_over_inputs(path: Path, inputs: Iterable[str | Path], key: str) -> None:
    """Refuse an output ``path`` that is the working directory, holds it, or holds (or is) an
    input of the command.

    Raises:
        OutputError: naming ``key``, the path and the input it would cover.
    """
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise OutputError(f"{key}: {path} is the working directory or holds it; name a new "
                          "folder for the output")
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if source == target or target in source.parents:
            raise OutputError(f"{key}: {path} holds {item}, an input of this command; choose "
                              "another output path")


def check_replaceable(path: Path, kind: OutputKind, key: str, *, replace: bool,
                      flag: str = "--overwrite") -> bool:
    """Whether ``path`` already holds a folder of ``kind`` that may be replaced.

    Returns:
        False when ``path`` does not exist or is an empty folder (nothing would be replaced);
        True when it holds a ``kind`` folder of ours and ``replace`` allows replacing it.

    Raises:
        OutputError: ``path`` is a file, holds files contralign did not make, or holds one of
            ours while ``replace`` is off (the message names ``flag``).
    """
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_dir():
        raise OutputError(f"{key}: {path} is a file, not a {kind.label}; choose another path")
    if is_empty_dir(path):
        return False
    if not is_owned(path, kind):
        raise OutputError(f"{key}: {path} holds files contralign did not make (no "
                          f"{kind.manifest}); it replaces only a {kind.label} of its own: "
                          "choose a new or empty folder")
    if not replace:
        raise OutputError(f"{key}: {path} already holds a {kind.label}; pass {flag} to replace "
                          "it, or choose another path")
    return True


def check_output_folder(path: Path, kind: OutputKind, key: str, *, inputs: Iterable[str | Path],
                        replace: bool, flag: str = "--overwrite") -> bool:
    """Every check before a command writes (or replaces) the output folder ``path``.

    Returns:
        Whether an existing folder of ours will be replaced.

    Raises:
        OutputError: see ``check_not_over_inputs`` and ``check_replaceable``.
    """
    check_not_over_inputs(path, inputs, key)
    return check_replaceable(path, kind, key, replace=replace, flag=flag)


def check_output_file(path: Path, key: str, *, inputs: Iterable[str | Path],
                      suffix: str, overwrite: bool) -> None:
    """Checks before a command writes the file ``path``.

    A plain file carries no manifest, so nothing tells ours from the user's: an existing one is
    replaced only when the user says so (``--overwrite``).

    Raises:
        OutputError: ``path`` lacks ``suffix``, is a folder, is an input of the command, or
            exists and ``overwrite`` is false.
    """
    if path.suffix.lower() != suffix:
        raise OutputError(f"{key}: {path}: the output must be a {suffix} file (name it "
                          f"{path.name}{suffix} or similar)")
    if path.is_dir():
        raise OutputError(f"{key}: {path} is a folder; name a {suffix} file")
    target = path.resolve()
    for item in inputs:
        if Path(item).expanduser().resolve() == target:
            raise OutputError(f"{key}: {path} is an input of this command; choose another path")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{key}: {path} already exists; pass --overwrite to replace it, or "
                          "choose another path")


def make_parent(path: Path, key: str) -> None:
    """Create the folders above ``path``.

    Raises:
        OutputError: one cannot be made (a file in the way, no permission), naming it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{key}: cannot create {err.filename or path.parent} ({err.strerror})"
                          ) from None


def umask() -> int:
    """The process's file-creation mask (read without changing it for long)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path, *, folder: bool) -> None:
    """Give ``path`` (made by ``mkdtemp``/``mkstemp``, 0700/0600) the user's usual mode."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


@contextmanager
def hold_lock(folder: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (its ``.lock`` file) while the body runs.

    The operating system releases the lock when the process ends, killed or not.

    Raises:
        OutputError: another process holds the lock (named by its process id when known).
    """
    path = folder / ".lock"
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115  (held for the body)
    except OSError as err:
        raise OutputError(f"{key}: cannot write in {folder} ({err.strerror})") from None
    try:
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise OutputError(f"{key}: {folder} is in use by another contralign process (pid "
                              f"{holder}); wait for it to finish, or choose another path")
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock


def _try_lock(handle: IO[str]) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
