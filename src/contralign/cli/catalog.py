"""``contralign objectives``: what can be trained, with its parameters and paper."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from contralign.cli.common import command, console, print_json


@command
def objectives_command(
    as_json: bool = typer.Option(False, "--json", help="Print the catalogue as JSON."),
) -> None:
    """List every registered objective with its parameters (and defaults) and its paper."""
    from contralign.objectives import OBJECTIVES

    # defaults() reads the constructors' source: listing imports no objective (and no torch).
    catalogue: dict[str, dict[str, Any]] = {
        name: {"summary": info.summary, "paper": info.paper, "requires": list(info.requires),
               "parameters": {key: _jsonable(default)
                              for key, default in info.defaults().items()}}
        for name, info in sorted(OBJECTIVES.items())
    }
    if as_json:
        print_json(catalogue)
        return
    table = Table(title="Objectives (objective: {name: …, <parameter>: …} in a config)")
    for column in ("name", "parameters", "needs", "paper"):
        table.add_column(column)
    for name, entry in catalogue.items():
        params = ", ".join(f"{k}={v}" for k, v in entry["parameters"].items())
        table.add_row(name, params, ", ".join(entry["requires"]), entry["paper"])
    console.print(table)


def _jsonable(value: object) -> object:
    import inspect

    if value is inspect.Parameter.empty:
        return None
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


@command
def recipes_command(
    as_json: bool = typer.Option(False, "--json", help="Print the recipes as JSON."),
) -> None:
    """List the bundled recipes: one config per published system, with the paper it follows.

    Run one with ``contralign train NAME --data FILE`` (or ``recipes/NAME.yaml``)."""
    from contralign.training.recipes import list_recipes

    recipes = list_recipes()
    if as_json:
        print_json({r.name: {"path": str(r.path), "objective": r.objective, "about": r.about}
                    for r in recipes})
        return
    table = Table(title="Recipes (contralign train NAME --data FILE)")
    for column in ("name", "objective", "about"):
        table.add_column(column)
    for recipe in recipes:
        table.add_row(recipe.name, recipe.objective, recipe.about)
    console.print(table)
