"""``contralign index MODEL CORPUS -o DIR`` and ``contralign search DIR "query"``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from contralign.cli.common import command, console, print_json
from contralign.cli.encode import TOWER_HELP
from contralign.cli.export import Backend, backend_option

if TYPE_CHECKING:
    from contralign.data import Record
    from contralign.index import IndexConfig, SearchIndex

NPROBE_HELP = "IVF: cells visited per query (default nlist/32, at least 8)."
EF_SEARCH_HELP = "HNSW: candidate list size per query (efSearch)."


@command
def index_command(
    model: str = typer.Argument(..., help="Model folder, run directory, installed model package, "
                                "static vectors, image network or hub id."),
    corpus: Path = typer.Argument(..., help="Texts (.txt, .jsonl, .csv, .tsv, .parquet) or "
                                  "images (.npz arrays; image paths or bytes in a column)."),
    output: Path = typer.Option(..., "--output", "-o", help="Index folder to write."),
    column: str | None = typer.Option(None, "--column", help="Column holding the texts."),
    id_column: str | None = typer.Option(None, "--id-column",
                                         help="Column holding ids (default: line numbers)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an index folder that is already there."),
    tower: str | None = typer.Option(None, "--tower", help=TOWER_HELP + " Queries then go "
                                     "through the model's other tower."),
    as_json: bool = typer.Option(False, "--json", help="Print what was indexed as JSON."),
    backend: Backend = backend_option(),
    kind: str = typer.Option("exact", "--kind", help="Vector index: exact (scan every "
                             "vector), ivf (FAISS inverted lists) or hnsw (FAISS graph)."),
    nlist: int | None = typer.Option(None, "--nlist", help="IVF: cells (default 4*sqrt(N))."),
    nprobe: int | None = typer.Option(None, "--nprobe", help=NPROBE_HELP),
    pq: int | None = typer.Option(None, "--pq", help="IVF: compress vectors with a product "
                                  "quantiser of this many sub-vectors (must divide the "
                                  "dimension); default none (full vectors)."),
    pq_bits: int | None = typer.Option(None, "--pq-bits", help="IVF: bits per PQ code "
                                       "(default 8)."),
    m: int | None = typer.Option(None, "--m", help="HNSW: neighbours per node (M; default 32)."),
    ef_construction: int | None = typer.Option(None, "--ef-construction", help="HNSW: "
                                               "candidate list size while building (default 80)."),
    ef_search: int | None = typer.Option(None, "--ef-search", help=EF_SEARCH_HELP +
                                         " Default 64."),
) -> None:
    """Embed CORPUS with MODEL and write a searchable index folder."""
    from contralign.cli.common import read_items
    from contralign.core.outputs import INDEX, check_output_folder
    from contralign.encoders.loading import choose_tower, load_tower, model_source, tower_modality
    from contralign.index import save_index

    check_output_folder(output, INDEX, "--output", inputs=[corpus, model], replace=overwrite)
    modality = tower_modality(model, tower)
    records = read_items(corpus, column, modality, id_column=id_column)
    ids = _item_ids(records, corpus, id_column)
    config = _index_config(len(records), dict(kind=kind, nlist=nlist, nprobe=nprobe, pq=pq,
                                              pq_bits=pq_bits, m=m, ef_construction=ef_construction,
                                              ef_search=ef_search))
    source = model_source(model)
    chosen = Path(choose_tower(source, tower))
    encoder = load_tower(model, tower=tower, backend=backend)
    items = [r.anchor for r in records]
    vectors = encoder.encode(items, batch_size=batch_size, show_progress=len(items) > 256)
    shown = [item if isinstance(item, str) else item.key for item in items]  # an image: its key
    several = str(chosen) != source  # a tower of a model of several
    with _option_errors():
        save_index(output, vectors, ids, shown, model_fingerprint=encoder.fingerprint(),
                   model_name=_stored_name(source), tower=chosen.name if several else None,
                   modality=modality, config=config)
    if as_json:
        print_json({"output": str(output), "items": len(items), "modality": modality,
                    "dimension": int(vectors.shape[1]), "fingerprint": encoder.fingerprint(),
                    "kind": config.kind, "params": config.params()})
    else:
        console.print(f"Indexed {len(items)} {modality}s ({vectors.shape[1]}-d, {config.kind}) "
                      f"→ {output}")


@contextmanager
def _option_errors(command: str = "index") -> Iterator[None]:
    """An index setting that does not fit, as one line naming the option (``--nlist``)."""
    from contralign.core.errors import ContralignError
    from contralign.index import IndexConfigError

    try:
        yield
    except IndexConfigError as err:
        option = "--" + err.key.replace("_", "-")
        raise ContralignError(f"{command}: {option}: {err.message}") from None


def _index_config(count: int, options: dict[str, Any]) -> IndexConfig:
    """The ``IndexConfig`` of the options given (None: not given), checked against ``count``
    items before embedding.

    Raises:
        ContralignError: a bad value, or an option of another kind, naming the option.
    """
    from contralign.index import IndexConfig, IndexConfigError

    given = {key: value for key, value in options.items() if value is not None}
    with _option_errors():
        config = IndexConfig(**given)
        for key in sorted(set(given) - {"kind"} - set(config.params())):
            raise IndexConfigError(key, f"applies to --kind {IndexConfig.kind_of(key)} only "
                                        f"(not {config.kind})")
        config.resolved(count, None)
    return config


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


def _query_towers(index: SearchIndex, model: str | None, backend: Backend = "torch"
                  ) -> tuple[Any, Any]:
    """The tower that embeds text queries, and the one that embedded the index (None: the
    same). For a tower of a model of several, the queries go through the model's other tower.

    Raises:
        ContralignError: the query tower does not embed text.
    """
    from contralign.core.errors import ContralignError
    from contralign.encoders.loading import load_model, load_tower

    name = model or index.model_name
    if index.tower is None:
        return load_tower(name, backend=backend), None
    full = load_model(name, backend=backend)
    indexed_by = full.towers[index.tower]
    query = full.query_side(index.tower)
    if getattr(query, "modality", "text") != "text":
        raise ContralignError(f"search: the index holds {index.modality}s embedded by tower "
                              f"{index.tower}; its queries would go through a tower that embeds "
                              f"{query.modality}, and search takes text queries")
    return query, indexed_by


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
    nprobe: int | None = typer.Option(None, "--nprobe", help=NPROBE_HELP + " Default: the "
                                      "index's."),
    ef_search: int | None = typer.Option(None, "--ef-search", help=EF_SEARCH_HELP + " Default: "
                                         "the index's."),
    backend: Backend = backend_option(),
) -> None:
    """Search an index for the texts nearest to each QUERY."""
    from contralign.core.errors import ContralignError
    from contralign.index import load_index

    for number, text in enumerate(query, start=1):
        if not text.strip():
            raise ContralignError(f"search: query {number} is empty; give the text to search for")
    with _option_errors("search"):
        index = load_index(index_dir, nprobe=nprobe, ef_search=ef_search)
    encoder, indexed_by = _query_towers(index, model, backend)
    results = index.search(encoder, list(query), k, indexed_by=indexed_by)
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
