"""``contralign export MODEL --onnx [--int8] -o DIR``, and the ``--backend`` option the
commands that embed share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import typer

from contralign.cli.common import command, console, print_json

Backend = Literal["torch", "onnx", "onnx-int8"]
BACKEND_HELP = ("What runs the model: torch, onnx (its fp32 ONNX export under onnxruntime: the "
                "same model) or onnx-int8 (its int8 export: another model); the ONNX backends "
                "need a folder from `contralign export MODEL --onnx`.")


def backend_option() -> Any:
    """The ``--backend`` option of ``encode``, ``index``, ``search``, ``eval`` and ``serve``."""
    return typer.Option("torch", "--backend", help=BACKEND_HELP)


@command
def export_command(
    model: str = typer.Argument(..., help="Model folder, run directory, installed model package, "
                                "static vectors, image network or hub id."),
    output: Path = typer.Option(..., "--output", "-o", help="The model folder to write."),
    onnx: bool = typer.Option(False, "--onnx", help="Add the whole tower as an ONNX graph "
                              "(fp32) for --backend onnx."),
    int8: bool = typer.Option(False, "--int8", help="Also add its int8 graph (dynamic "
                              "quantisation) for --backend onnx-int8."),
    tower: str | None = typer.Option(None, "--tower", help="In a model of several towers, "
                                     "the one to export (its name, or image / text); default: "
                                     "every tower."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace a model folder contralign wrote."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write MODEL's folder with its ONNX export: the torch backend still loads the folder (same
    fingerprint); `--backend onnx` runs the graph under onnxruntime. The export is checked on
    a few items against torch before the folder is written."""
    from contralign.core.errors import ContralignError
    from contralign.core.outputs import MODEL, check_output_folder
    from contralign.encoders.loading import load_model, load_tower
    from contralign.encoders.onnx_export import export_onnx

    if not onnx:
        raise ContralignError("export: choose what to export: --onnx (with --int8 for the int8 "
                              "graph too)")
    check_output_folder(output, MODEL, "--output", inputs=[model], replace=overwrite)
    loaded: Any = load_tower(model, tower=tower) if tower else load_model(model)
    entries = export_onnx(loaded, output, int8=int8, overwrite=overwrite)
    if "files" in entries:  # one tower
        entries = {"tower": entries}
    if as_json:
        print_json({"output": str(output), "towers": entries})
        return
    for name, entry in entries.items():
        where = output if len(entries) == 1 else output / name
        shown = [f"{entry['files']['fp32']['path']} (fp32, max abs difference from torch "
                 f"{entry['fp32_max_abs_diff']:.1e})"]
        if "int8" in entry["files"]:
            shown.append(f"{entry['files']['int8']['path']} (int8, smallest cosine to torch "
                         f"{entry['int8_min_cosine']:.4f})")
        console.print(f"Exported {model} → {where}: {', '.join(shown)}", highlight=False,
                      soft_wrap=True)
