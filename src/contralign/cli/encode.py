"""``contralign encode MODEL INPUT -o OUT.npy``."""

from __future__ import annotations

from pathlib import Path

import typer

from contralign.cli.common import command, console


@command
def encode_command(
    model: str = typer.Argument(..., help="Model folder, installed model package or hub id."),
    input_file: Path = typer.Argument(..., help="Texts: .txt (one per line), .jsonl, .csv, .tsv, "
                                      ".parquet."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the .npy array."),
    column: str | None = typer.Option(None, "--column", help="Column holding the texts."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
) -> None:
    """Embed every text of INPUT with MODEL; writes a float32 (N, D) array in input order."""
    import numpy as np

    from contralign.data import DataConfig, load_records
    from contralign.encoders.text import TextEncoder

    columns = {"anchor": column} if column else {}
    texts = [r.anchor for r in load_records(DataConfig(path=str(input_file),
                                                       columns=columns)).records]
    encoder = TextEncoder.from_pretrained(model)
    embeddings = encoder.encode(texts, batch_size=batch_size, show_progress=len(texts) > 256)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, embeddings, allow_pickle=False)
    console.print(f"{embeddings.shape[0]} × {embeddings.shape[1]} float32 → {output}")
