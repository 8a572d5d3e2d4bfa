"""What every command shares: one-line errors with exit code 2, console, JSON output."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

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


class OneLineUsageErrors(TyperGroup):
    """The command group, with click's usage errors (unknown option, missing argument, bad
    option value) as one line and exit code 2, like every other user mistake, instead of
    click's usage text and rich's error box."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None,
                     **extra: Any) -> Any:
        with _one_line_usage_errors(lambda: info_name or "contralign"):  # contralign --bogus
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        # The subcommand's name, arguments and options: contralign train --bogus
        with _one_line_usage_errors(lambda: " ".join(
                filter(None, (ctx.command_path, ctx.invoked_subcommand)))):
            return super().invoke(ctx)


def _usage_error_type() -> type[Exception]:
    """Click's ``UsageError`` as typer raises it: recent typer vendors click (``typer._click``),
    older typer uses click itself; ``typer.BadParameter`` derives from it either way."""
    return next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError")


@contextmanager
def _one_line_usage_errors(command: Callable[[], str]) -> Iterator[None]:
    """``command()``: the command to name when the error carries no context (a few do not)."""
    try:
        yield
    except _usage_error_type() as error:
        err: Any = error  # a click UsageError: ctx, format_message()
        if type(err).__name__ == "NoArgsIsHelpError":  # `contralign` alone: the help, as is
            raise
        if VERBOSE["on"]:
            traceback.print_exc()
        ctx = getattr(err, "ctx", None)
        path = ctx.command_path if ctx is not None else command()
        message = " ".join(err.format_message().split()).rstrip(".")
        err_console.print(f"error: {path}: {message} (see {path} --help)", markup=False,
                          highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a command body so that ContralignError exits with code 2 and one line, and each
    warning is one line too."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors(), one_line_warnings():
            return fn(*args, **kwargs)

    return wrapper


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show each warning as ``warning: message`` on stderr (Python's own format, with the file,
    line and source, under ``--verbose``)."""
    import warnings

    with warnings.catch_warnings():
        if not VERBOSE["on"]:
            warnings.showwarning = _show_warning
        yield


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


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
    """Keep transformers' own progress bars and warnings out of our output without importing
    it (listing commands never load it): set the environment variables it reads on import
    (a user's own values win), or flip its switches when it is already imported."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def read_items(path: Any, column: str | None, modality: str, *,
               id_column: str | None = None) -> list[Any]:
    """The records of an input file whose ``anchor`` (``column``, or the file's usual one) holds
    items of ``modality``; ``id_column`` maps to the ``label`` role (item ids).

    Raises:
        DataError: as ``load_records``.
    """
    from contralign.data import DataConfig, load_records

    columns = {"anchor": column} if column else {}
    if id_column:
        columns["label"] = id_column
    modalities: dict[str, Any] = {"anchor": modality} if modality == "image" else {}
    return load_records(DataConfig(path=str(path), columns=columns,
                                   modalities=modalities)).records
