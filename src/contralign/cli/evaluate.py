"""``contralign eval MODEL --sts FILE --retrieval FILE``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from contralign.cli.common import command, console, parse_columns, print_json

STS_COLUMNS = {"anchor": "sentence1", "positive": "sentence2", "score": "score"}


@command
def eval_command(
    model: str = typer.Argument(..., help="Model folder, run directory, installed model package, "
                                "static vectors or hub id."),
    sts: Path | None = typer.Option(None, "--sts", help="STS pairs: sentence1, sentence2, score."),
    retrieval: Path | None = typer.Option(None, "--retrieval", help="(query, relevant) pairs."),
    columns: str | None = typer.Option(
        None, "--columns", help="Roles of the retrieval file's columns: anchor=q,positive=doc."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Evaluate MODEL: STS (Spearman, Pearson ×100), retrieval (Recall@k, MRR@10, nDCG@10, MAP)
    and the geometry of the retrieval pairs (alignment, uniformity)."""
    from contralign.core.errors import ContralignError
    from contralign.data import DataConfig
    from contralign.encoders.loading import load_tower
    from contralign.evaluation import (
        evaluate_all,
        geometry_from_records,
        read_pairs,
        retrieval_from_records,
        sts_from_records,
    )

    if sts is None and retrieval is None:
        raise ContralignError("eval: give --sts FILE and/or --retrieval FILE")
    evaluators: list = []
    if sts is not None:
        records = read_pairs(DataConfig(path=str(sts), columns=STS_COLUMNS), scored=True)
        evaluators.append(sts_from_records(records, batch_size=batch_size))
    if retrieval is not None:
        records = read_pairs(DataConfig(path=str(retrieval), columns=parse_columns(columns)))
        evaluators += [retrieval_from_records(records, batch_size=batch_size),
                       geometry_from_records(records, batch_size=batch_size)]
    encoder = load_tower(model)
    metrics = evaluate_all(encoder, evaluators)
    if as_json:
        print_json({"model": model, "metrics": metrics})
        return
    table = Table(title=f"Evaluation of {model}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
