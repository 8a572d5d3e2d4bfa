"""``contralign train CONFIG.yaml``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from contralign.cli.common import command, console, print_json


@command
def train_command(
    config: Path = typer.Argument(..., help="YAML training config, or a recipe name."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set optim.lr=1e-5"),
    data: str | None = typer.Option(None, "--data", help="Training data file (sets data.path)."),
    output_dir: str | None = typer.Option(None, "--output-dir", "-o", help="Run directory."),
    resume: bool = typer.Option(False, "--resume",
                                help="Continue the run from its newest intact checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an existing run (once the new one finishes)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train text or image encoders with a contrastive objective, as CONFIG describes."""
    from contralign.core.config import load_config
    from contralign.training.config import TrainConfig
    from contralign.training.distributed import launched_rank
    from contralign.training.loop import fit
    from contralign.training.recipes import find_config

    overrides = list(set_)
    if data is not None:
        overrides.append(f"data.path={data}")
    if output_dir is not None:
        overrides.append(f"output_dir={output_dir}")
    config_path = find_config(config)
    train_config = load_config(TrainConfig, config_path, overrides)
    result = fit(train_config, resume=resume, overwrite=overwrite, progress=not as_json,
                 inputs=[config_path])
    if launched_rank() != 0:  # under torchrun every process gets here; rank 0 reports
        return
    summary = {"run_dir": str(result.run_dir), "model_dir": str(result.model_dir),
               "steps": result.steps, "seconds": round(result.seconds, 2),
               "pairs_per_second": round(result.pairs_per_second, 2),
               "skipped_records": result.skipped_records,
               "rejects": str(result.rejects_path) if result.rejects_path else None,
               "metrics": result.metrics}
    if result.intervals:
        summary["ci"] = {name: list(bounds) for name, bounds in result.intervals.items()}
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"Run {result.run_dir}")
    table.add_column("key")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if key not in ("metrics", "ci") and value is not None:
            table.add_row(key, str(value))
    for name, value in result.metrics.items():
        bounds = result.intervals.get(name)
        shown = f"{value:.4f}" + (f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else "")
        table.add_row(name, shown)
    console.print(table)
    if result.skipped_records:
        console.print(f"[yellow]{result.skipped_records} bad records skipped; see "
                      f"{result.rejects_path}[/]")
