"""``contralign index MODEL CORPUS -o DIR`` and ``contralign search DIR "query"``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from contralign.cli.common import command, console, print_json


@command
def index_command(
    model: str = typer.Argument(..., help="Model folder, installed model package or hub id."),
    corpus: Path = typer.Argument(..., help="Texts: .txt (one per line), .jsonl, .csv, .tsv, "
                                  ".parquet."),
    output: Path = typer.Option(..., "--output", "-o", help="Index folder to write."),
    column: str | None = typer.Option(None, "--column", help="Column holding the texts."),
    id_column: str | None = typer.Option(None, "--id-column",
                                         help="Column holding ids (default: line numbers)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
) -> None:
    """Embed CORPUS with MODEL and write a searchable index folder."""
    from contralign.data import DataConfig, load_records
    from contralign.encoders.text import TextEncoder
    from contralign.index import save_index

    columns = {"anchor": column} if column else {}
    if id_column:
        columns["label"] = id_column
    records = load_records(DataConfig(path=str(corpus), columns=columns)).records
    encoder = TextEncoder.from_pretrained(model)
    texts = [r.anchor for r in records]
    vectors = encoder.encode(texts, batch_size=batch_size, show_progress=len(texts) > 256)
    ids = [r.label if id_column and r.label is not None else str(r.line) for r in records]
    save_index(output, vectors, ids, texts, model_fingerprint=encoder.fingerprint(),
               model_name=model)
    console.print(f"Indexed {len(texts)} texts ({vectors.shape[1]}-d) → {output}")


@command
def search_command(
    index_dir: Path = typer.Argument(..., help="Index folder written by `contralign index`."),
    query: list[str] = typer.Argument(..., help="One or more queries."),
    k: int = typer.Option(5, "-k", "--top-k", min=1, help="Results per query."),
    model: str | None = typer.Option(None, "--model",
                                     help="Query model (default: the one the index was built "
                                          "with); must embed exactly like it."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON."),
) -> None:
    """Search an index for the texts nearest to each QUERY."""
    from contralign.encoders.text import TextEncoder
    from contralign.index import load_index

    index = load_index(index_dir)
    encoder = TextEncoder.from_pretrained(model or index.model_name)
    results = index.search(encoder, list(query), k)
    if as_json:
        print_json([{"query": q, "hits": [{"id": h.id, "text": h.text, "score": h.score}
                                          for h in hits]}
                    for q, hits in zip(query, results, strict=True)])
        return
    for text, hits in zip(query, results, strict=True):
        table = Table(title=f"“{text}”")
        for column in ("rank", "score", "id", "text"):
            table.add_column(column, justify="right" if column in ("rank", "score") else "left")
        for rank, hit in enumerate(hits, 1):
            table.add_row(str(rank), f"{hit.score:.3f}", hit.id, hit.text)
        console.print(table)
