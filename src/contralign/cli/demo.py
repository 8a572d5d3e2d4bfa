"""``contralign demo``: the embedded default run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from contralign.cli.common import command, console, print_json


@command
def demo_command(
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="Run directory (default runs/demo, or "
        "runs/demo-images; a demo run there is replaced once the new one finishes)."),
    images: bool = typer.Option(False, "--images", help="The image-text demo (LiT) instead."),
    data: Path | None = typer.Option(None, "--data", help="With --images: an .npz of images, "
                                     "labels and classes (e.g. CIFAR-10 images)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Fine-tune the default model to align paper titles with their abstracts (bundled corpus),
    evaluate before and after on held-out papers, and search the corpus. With --images: align
    labelled images with captions (LiT), zero-shot accuracy before and after, and search the
    held-out images by text."""
    from contralign.core.errors import ContralignError
    from contralign.core.outputs import RUN, check_output_folder
    from contralign.training.demo import DEMO_METRICS, run_demo

    if images:
        if data is None:
            raise ContralignError("demo --images: give --data FILE.npz (images, labels and "
                                  "classes arrays, e.g. CIFAR-10 images)")
        _image_demo(data, output_dir or Path("runs/demo-images"), as_json)
        return
    output_dir = output_dir or Path("runs/demo")
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


def _image_demo(data: Path, output_dir: Path, as_json: bool) -> None:
    from contralign.core.outputs import RUN, check_output_folder
    from contralign.training.demo_images import run_image_demo

    check_output_folder(output_dir, RUN, "--output-dir", inputs=[data], replace=True)
    if not as_json:
        console.print("[bold]contralign demo --images[/]: LiT, EfficientNet-Lite0 + "
                      "all-MiniLM-L6-v2 locked, projections trained, captions from class names")
    result = run_image_demo(data, output_dir, progress=not as_json)
    if as_json:
        print_json({"before": result.before, "after": result.after, "classes": result.classes,
                    "train_images": result.train_images, "test_images": result.test_images,
                    "run_dir": str(result.run.run_dir), "hits": result.hits})
        return
    table = Table(title=f"Held-out images ({result.test_images}) against the prompts of all "
                        f"{len(result.classes)} class names")
    for column in ("metric", "before", "after"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in ("zero_shot/top1", "zero_shot/top5", "zero_shot/mean_per_class",
                 "geometry/modality_gap"):
        if name in result.after:
            table.add_row(name, f"{result.before[name]:.4f}", f"{result.after[name]:.4f}")
    console.print(table)
    console.print(f"Trained on {result.train_images} images, {result.run.steps} steps in "
                  f"{result.run.seconds:.1f} s; model saved to [bold]{result.run.model_dir}[/]")
    for query, hits in result.hits.items():
        labels = ", ".join(f"{label} ({score:.2f})" for label, score in hits)
        console.print(f'Search "{query}": {labels}', markup=False, highlight=False)
