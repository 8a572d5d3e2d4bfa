"""``contralign report RUN_DIR [RUN_DIR ...] [-o report.html]``: plots of a run, or runs
compared."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from contralign.cli.common import command, console, print_json

OUTPUT_HELP = ("The .html to write; each figure goes beside it as NAME-<figure>.png. Default "
               "for one run: RUN_DIR/report/report.html; required for several.")
MAP_HELP = "The 2-D map's projection: umap when umap-learn is installed (auto), else pca."


@command
def report_command(
    runs: list[Path] = typer.Argument(..., help="Run directories: one, or several to compare "
                                      "(the same plots overlaid, one colour per run)."),
    output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a report of ours at "
                                   "OUTPUT (never a file contralign did not write)."),
    projection: Literal["auto", "pca", "umap"] = typer.Option("auto", "--map", help=MAP_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the paths written and each run's "
                                 "final metrics as JSON."),
) -> None:
    """Write a self-contained HTML report of a training run (curves, dev metrics, geometry
    diagnostics, the alignment-uniformity plane, similarity histograms, a map of the space,
    nearest neighbours before and after, config, machine), with every figure also as a PNG.
    Works on any run directory; what an older run lacks is said in its section."""
    from contralign.core.errors import ConfigError
    from contralign.report.analysis import umap_available
    from contralign.report.build import report_runs

    if projection == "umap" and not umap_available():
        raise ConfigError("--map: umap needs the umap-learn package (pip install umap-learn), "
                          "or use --map pca")
    written = report_runs(runs, output, overwrite=overwrite,
                          map_method=None if projection == "auto" else projection)
    if as_json:
        print_json({"html": str(written.html), "figures": [str(p) for p in written.figures],
                    "runs": written.runs})
        return
    console.print(f"report → {written.html} ({len(written.figures)} figures beside it as PNG)",
                  markup=False, highlight=False, soft_wrap=True)
    for run in written.runs:
        final = run["final"]
        if final:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in list(final["metrics"].items())[:4]
                              if v is not None)
            console.print(f"{run['name']}: step {final['step']}: {shown}", markup=False,
                          highlight=False, soft_wrap=True)
