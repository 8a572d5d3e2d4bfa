"""``contralign check CONFIG``: do the fast paths train like the plain one on this config?"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from contralign.cli.common import command, console, print_json

if TYPE_CHECKING:
    from contralign.training.check import CheckReport


@command
def check_command(
    config: Path = typer.Argument(..., help="YAML training config, or a recipe name."),
    data: str | None = typer.Option(None, "--data", help="Training data file (sets data.path)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set train.batch_size=16"),
    steps: int = typer.Option(3, "--steps", help="Optimiser steps along each path."),
    paths: str | None = typer.Option(
        None, "--paths", help="Paths to compare with the plain one, comma-separated: cached, "
        "tiled, distributed, compiled (default: the first three, and compiled when the config "
        "sets train.compile)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run a few steps of CONFIG along the plain path (one process, whole batch) and along the
    gradient cache, the tiled loss and two gloo processes (and torch.compile, when the config
    sets train.compile), from the same weights on the same
    batches, with dropout off, in float32 on the CPU; report the largest relative difference
    of each from the plain path in loss, first-step gradient and parameter updates. Exit code
    1 when a path differs by more than the tolerance. Writes nothing into output_dir."""
    from contralign.core.config import load_config
    from contralign.training.check import check
    from contralign.training.config import TrainConfig
    from contralign.training.recipes import find_config

    overrides = list(set_)
    if data is not None:
        overrides.append(f"data.path={data}")
    train_config = load_config(TrainConfig, find_config(config), overrides)
    chosen = None if paths is None else [name.strip() for name in paths.split(",")
                                         if name.strip()]
    report = check(train_config, steps=steps, paths=chosen)
    if as_json:
        print_json(report.to_json())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(code=1)


def _print_report(report: CheckReport) -> None:
    table = Table(title=f"{report.objective}, batch {report.batch_size}, {report.steps} steps "
                        "(dropout off, float32, CPU)")
    for name in ("path", "setting", "loss", "gradient", "params", "verdict", "s"):
        table.add_column(name, justify="left" if name in ("path", "setting") else "right")
    table.add_row("plain", "reference", "", "", "", "", f"{report.seconds:.1f}")
    for name, result in report.paths.items():
        verdict = {True: "[green]ok[/]", False: "[red]DIFFERENT[/]", None: "n/a"}[result.ok]
        if result.ok is False and result.loss is None:
            verdict = "[red]failed[/]"
        table.add_row(name, result.setting, *(_number(value) for value in (
            result.loss, result.gradient, result.parameters)), verdict, f"{result.seconds:.1f}")
    console.print(table)
    console.print(f"Largest relative difference from the plain path in the loss of each step, "
                  f"the gradient of step 1 and the parameter updates; a path agrees when all "
                  f"three are at most {report.tolerance:g} (or the tolerance its setting "
                  "names).", highlight=False)
    for name, result in report.paths.items():
        if result.reason:
            console.print(f"{name}: {result.reason}", markup=False, highlight=False)
        elif result.ok is False:
            console.print(f"[red]{name} differs from the plain path[/] (most in "
                          f"{result.worst_tensor})", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"
