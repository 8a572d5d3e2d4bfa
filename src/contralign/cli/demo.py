"""``contralign demo``: the embedded default run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from contralign.cli.common import command, console, print_json


@command
def demo_command(
    output_dir: Path = typer.Option(
        Path("runs/demo"), "--output-dir", "-o",
        help="Run directory (a demo run there is replaced once the new one finishes)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Fine-tune the default model to align paper titles with their abstracts (bundled corpus),
    evaluate before and after on held-out papers, and search the corpus."""
    from contralign.core.outputs import RUN, check_output_folder
    from contralign.training.demo import DEMO_METRICS, run_demo

    check_output_folder(output_dir, RUN, "--output-dir", inputs=[], replace=True)
    if not as_json:
        console.print("[bold]contralign demo[/]: all-MiniLM-L6-v2, titles → abstracts, "
                      "150 train / 54 test papers")
    result = run_demo(output_dir, progress=not as_json)
    if as_json:
        print_json({"before": result.before, "after": result.after,
                    "run_dir": str(result.run.run_dir), "query": result.query,
                    "hits": [{"title": t, "score": s} for t, s in result.hits]})
        return
    table = Table(title="Held-out titles → abstracts (54 papers)")
    for column in ("metric", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, higher_is_better in DEMO_METRICS:
        before, after = result.before[name], result.after[name]
        label = f"{name} ({'↑' if higher_is_better else '↓'} better)"
        table.add_row(label, f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}")
    console.print(table)
    console.print(f"Trained {result.run.steps} steps in {result.run.seconds:.1f} s "
                  f"({result.run.pairs_per_second:.1f} pairs/s); model saved to "
                  f"[bold]{result.run.model_dir}[/]")
    console.print(f'\nSearch: "{result.query}"')
    for rank, (title, score) in enumerate(result.hits, 1):
        console.print(f"  {rank}. {score:.3f}  {title}", markup=False, highlight=False)
