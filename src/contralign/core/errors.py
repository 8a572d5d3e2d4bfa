"""User-facing errors: each renders as one line that names the file, line and field (or key)."""

from __future__ import annotations

from pathlib import Path


class ContralignError(Exception):
    """An error caused by user input; the CLI prints it as one line and exits with code 2."""


class DataError(ContralignError):
    """A malformed record: ``file:line: column: what is wrong``.

    Args:
        path: the data file.
        line: 1-based line number in the file (the header is line 1 for CSV/TSV), or None.
        field: the column (or role) at fault, or None when the whole line is at fault.
        message: what is wrong.
    """

    def __init__(
        self, path: str | Path, line: int | None, field: str | None, message: str
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = message if field is None else f"{field}: {message}"
        super().__init__(f"{where}: {what}")


class ConfigError(ContralignError):
    """An unknown key or a bad value in a config: ``config.yaml: key: what is wrong``."""


class ModelNotFoundError(ContralignError):
    """A model name or path that resolves to nothing loadable."""


class BatchError(ContralignError, ValueError):
    """A batch the configured objective cannot score: its settings do not fit the batch (a
    whitening group wider than the batch, an anchor left without a negative). A ``ValueError``
    for library callers, one line for the CLI; the message says which setting to change."""
