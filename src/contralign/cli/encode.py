"""``contralign encode MODEL INPUT -o OUT.npy``."""

from __future__ import annotations

from pathlib import Path

import typer

from contralign.cli.common import command, console


@command
def encode_command(
    model: str = typer.Argument(..., help="Model folder, run directory, installed model package, "
                                "static vectors or hub id."),
    input_file: Path = typer.Argument(..., help="Texts: .txt (one per line), .jsonl, .csv, .tsv, "
                                      ".parquet."),
    output: Path = typer.Option(..., "--output", "-o",
                                help="The .npy file to write (replaced if it exists)."),
    column: str | None = typer.Option(None, "--column", help="Column holding the texts."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
) -> None:
    """Embed every text of INPUT with MODEL; writes a float32 (N, D) array in input order."""
    import numpy as np

    from contralign.core.io import atomic_file
    from contralign.core.outputs import check_output_file
    from contralign.data import DataConfig, load_records
    from contralign.encoders.loading import load_tower

    check_output_file(output, "--output", inputs=[input_file, model], suffix=".npy")
    columns = {"anchor": column} if column else {}
    texts = [r.anchor for r in load_records(DataConfig(path=str(input_file),
                                                       columns=columns)).records]
    encoder = load_tower(model)
    embeddings = encoder.encode(texts, batch_size=batch_size, show_progress=len(texts) > 256)
    with atomic_file(output) as f:  # exactly the path named: np.save(path) would add .npy
        np.save(f, embeddings, allow_pickle=False)
    console.print(f"{embeddings.shape[0]} × {embeddings.shape[1]} float32 → {output}")
