"""``contralign index MODEL CORPUS -o DIR`` and ``contralign search DIR "query"``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from contralign.cli.common import command, console, print_json

if TYPE_CHECKING:
    from contralign.data import Record


@command
def index_command(
    model: str = typer.Argument(..., help="Model folder, run directory, installed model package, "
                                "static vectors or hub id."),
    corpus: Path = typer.Argument(..., help="Texts: .txt (one per line), .jsonl, .csv, .tsv, "
                                  ".parquet."),
    output: Path = typer.Option(..., "--output", "-o", help="Index folder to write."),
    column: str | None = typer.Option(None, "--column", help="Column holding the texts."),
    id_column: str | None = typer.Option(None, "--id-column",
                                         help="Column holding ids (default: line numbers)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an index folder that is already there."),
) -> None:
    """Embed CORPUS with MODEL and write a searchable index folder."""
    from contralign.core.outputs import INDEX, check_output_folder
    from contralign.data import DataConfig, load_records
    from contralign.encoders.loading import load_tower, model_source
    from contralign.index import save_index

    check_output_folder(output, INDEX, "--output", inputs=[corpus, model], replace=overwrite)
    columns = {"anchor": column} if column else {}
    if id_column:
        columns["label"] = id_column
    records = load_records(DataConfig(path=str(corpus), columns=columns)).records
    ids = _item_ids(records, corpus, id_column)
    encoder = load_tower(model)
    texts = [r.anchor for r in records]
    vectors = encoder.encode(texts, batch_size=batch_size, show_progress=len(texts) > 256)
    save_index(output, vectors, ids, texts, model_fingerprint=encoder.fingerprint(),
               model_name=_stored_name(model_source(model)))
    console.print(f"Indexed {len(texts)} texts ({vectors.shape[1]}-d) → {output}")


def _item_ids(records: list[Record], corpus: Path, id_column: str | None) -> list[str]:
    """Each record's id: its ``id_column`` value, else its line number.

    Raises:
        DataError: an id that repeats, naming both lines (found before anything is embedded).
    """
    from contralign.core.errors import DataError

    if not id_column:
        return [str(r.line) for r in records]
    first_line: dict[str, int] = {}
    for record in records:
        assert record.label is not None  # the label role is required once mapped
        seen = first_line.setdefault(record.label, record.line)
        if seen != record.line:
            raise DataError(corpus, record.line, id_column,
                            f"duplicate id {record.label!r} (also on line {seen}); ids must be "
                            "distinct")
    return [str(r.label) for r in records]


def _stored_name(model: str) -> str:
    """A local model folder as an absolute path (so `search` works from any folder); a
    package name or hub id as it is."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


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
    from contralign.core.errors import ContralignError
    from contralign.encoders.loading import load_tower
    from contralign.index import load_index

    for number, text in enumerate(query, start=1):
        if not text.strip():
            raise ContralignError(f"search: query {number} is empty; give the text to search for")
    index = load_index(index_dir)
    encoder = load_tower(model or index.model_name)
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
