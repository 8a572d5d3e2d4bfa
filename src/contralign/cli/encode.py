"""``contralign encode MODEL INPUT -o OUT.npy``."""

from __future__ import annotations

from pathlib import Path

import typer

from contralign.cli.common import command, console, print_json
from contralign.cli.export import Backend, backend_option

TOWER_HELP = "In a model of several towers, the one to use: its name, or image / text."


@command
def encode_command(
    model: str = typer.Argument(..., help="Model folder, run directory, installed model package, "
                                "static vectors, image network or hub id."),
    input_file: Path = typer.Argument(..., help="Texts (.txt, .jsonl, .csv, .tsv, .parquet) or "
                                      "images (.npz arrays; image paths or bytes in a column)."),
    output: Path = typer.Option(..., "--output", "-o", help="The .npy file to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
    column: str | None = typer.Option(None, "--column", help="Column holding the items."),
    tower: str | None = typer.Option(None, "--tower", help=TOWER_HELP),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    backend: Backend = backend_option(),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Embed every item of INPUT with MODEL; writes a float32 (N, D) array in input order."""
    import numpy as np

    from contralign.cli.common import read_items
    from contralign.core.io import atomic_file
    from contralign.core.outputs import check_output_file
    from contralign.encoders.loading import load_tower, tower_modality

    check_output_file(output, "--output", inputs=[input_file, model], suffix=".npy",
                      overwrite=overwrite)
    items = [r.anchor for r in read_items(input_file, column, tower_modality(model, tower))]
    encoder = load_tower(model, tower=tower, backend=backend)
    embeddings = encoder.encode(items, batch_size=batch_size, show_progress=len(items) > 256)
    with atomic_file(output) as f:  # exactly the path named: np.save(path) would add .npy
        np.save(f, embeddings, allow_pickle=False)
    if as_json:
        print_json({"output": str(output), "rows": int(embeddings.shape[0]),
                    "dimension": int(embeddings.shape[1]), "dtype": "float32"})
    else:
        console.print(f"{embeddings.shape[0]} × {embeddings.shape[1]} float32 → {output}")
