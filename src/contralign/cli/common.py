"""What every command shares: one-line errors with exit code 2, console, JSON output."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

# Set by the --verbose callback in app.py.
VERBOSE = {"on": False}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user mistake into one line on stderr and exit code 2 (traceback with --verbose)."""
    from contralign.core.errors import ContralignError

    try:
        yield
    except ContralignError as err:
        if VERBOSE["on"]:
            traceback.print_exc()
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a command body so that ContralignError exits with code 2 and one line."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper


def parse_columns(spec: str | None) -> dict[str, str]:
    """``"anchor=title,positive=abstract"`` -> ``{"anchor": "title", "positive": "abstract"}``."""
    from contralign.core.errors import ConfigError

    if not spec:
        return {}
    columns = {}
    for item in spec.split(","):
        role, sep, column = item.partition("=")
        if not sep or not role.strip() or not column.strip():
            raise ConfigError(f"--columns: {item!r}: expected role=column")
        columns[role.strip()] = column.strip()
    return columns


def quiet_libraries() -> None:
    """Keep transformers' own progress bars and warnings out of our output."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
