"""Make a report of one or more runs and write it: ``report.html`` and its figures beside it.

Files: the page at the output path (``NAME.html``) and each figure as ``NAME-<figure>.png`` in
the same folder, so two reports can share a folder. Both carry a mark of ours (the page a
``<meta name="generator">``, each PNG a ``Software`` text chunk): an existing file is replaced
only with ``--overwrite`` and only when it carries the mark, so a user's file is never replaced.
Everything is checked before anything is written, and each file is written atomically.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contralign.core.io import atomic_write_bytes, atomic_write_text
from contralign.core.outputs import OutputError, check_output_file
from contralign.report import figures as fig
from contralign.report.analysis import MapMethod, umap_available
from contralign.report.page import GENERATOR, render_page
from contralign.report.runs import Run, final_metrics, read_run

FIGURES = ("training", "dev-metrics", "diagnostics", "alignment-uniformity", "similarity",
           "embedding-map")
PNG_MARK = "Software"  # the PNG text chunk that marks a figure as ours
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Report:
    """A rendered report: the page and its figures (name -> PNG bytes)."""

    runs: list[Run]
    html: str
    figures: dict[str, bytes] = field(default_factory=dict)
    map_method: MapMethod = "pca"


def make_report(runs: Sequence[Run], map_method: MapMethod | None = None) -> Report:
    """Draw every figure the runs have data for and render the page.

    Args:
        runs: one run, or several to overlay (one colour per run, in this order).
        map_method: the 2-D map's projection; default UMAP when ``umap`` is installed, else
            PCA.
    """
    method: MapMethod = map_method or ("umap" if umap_available() else "pca")
    figures: dict[str, bytes] = {}
    for name, draw in _figure_plan(runs, method).items():
        drawn = draw()
        figures[name] = fig.png_bytes(drawn, {PNG_MARK: GENERATOR, "Title": name})
    html = render_page(runs, figures, method)
    return Report(list(runs), html, figures, method)


def _figure_plan(runs: Sequence[Run], method: MapMethod) -> dict[str, Callable[[], Any]]:
    """The figures that some run has data for, as name -> a function drawing it."""
    plan: dict[str, Callable[[], Any]] = {}
    if fig.training_keys(runs):
        plan["training"] = lambda: fig.training_curves(runs)
    if dev := fig.metric_keys(runs, geometry=False):
        plan["dev-metrics"] = lambda: fig.metric_grid(runs, dev)
    if geometry := fig.metric_keys(runs, geometry=True):
        plan["diagnostics"] = lambda: fig.metric_grid(runs, geometry)
    if any(fig.has_plane(run) for run in runs):
        plan["alignment-uniformity"] = lambda: fig.alignment_uniformity(runs)
    if any(run.snapshots and run.sample is not None for run in runs):
        plan["similarity"] = lambda: fig.similarity_histograms(runs)
        plan["embedding-map"] = lambda: fig.embedding_maps(runs, method)
    return plan


def default_output(runs: Sequence[Path]) -> Path:
    """``RUN_DIR/report/report.html`` for one run.

    Raises:
        OutputError: several runs (a comparison has no run directory of its own).
    """
    if len(runs) != 1:
        raise OutputError("--output: a comparison of several runs needs --output NAME.html "
                          "(its figures go beside it as NAME-<figure>.png)")
    return runs[0] / "report" / "report.html"


def figure_path(html: Path, name: str) -> Path:
    return html.with_name(f"{html.stem}-{name}.png")


def check_outputs(html: Path, inputs: Sequence[Path], *, overwrite: bool) -> None:
    """Every check before a report is written to ``html`` and the PNGs beside it.

    Raises:
        OutputError: ``html`` is not an .html path, is a folder or an input; it or one of the
            figure files exists and ``overwrite`` is off, or exists without our mark (a file
            contralign did not write is never replaced).
    """
    check_output_file(html, "--output", inputs=inputs, suffix=".html", overwrite=overwrite)
    if html.exists() and not is_our_page(html):
        raise OutputError(f"--output: {html} is not a report contralign wrote; it replaces only "
                          "its own: choose another path")
    for name in FIGURES:
        path = figure_path(html, name)
        check_output_file(path, "--output", inputs=inputs, suffix=".png", overwrite=overwrite)
        if (path.exists() or path.is_symlink()) and not is_our_png(path):
            raise OutputError(f"--output: {path} (a figure of this report) is a file "
                              "contralign did not write; move it, or choose another --output")


def write_report(report: Report, html: Path) -> list[Path]:
    """Write the figures, then the page (checked first with ``check_outputs``), and remove
    figures of an earlier report of this name that this one no longer draws (ours only).

    Returns:
        The PNG paths written, in ``FIGURES`` order.
    """
    written = []
    for name in FIGURES:
        path = figure_path(html, name)
        if name in report.figures:
            atomic_write_bytes(path, report.figures[name])
            written.append(path)
        elif path.is_file() and is_our_png(path):
            path.unlink()
    atomic_write_text(html, report.html)
    return written


def is_our_page(path: Path) -> bool:
    """Whether the HTML file ``path`` carries our generator mark (in its first 4 KiB)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">' in head


def is_our_png(path: Path) -> bool:
    """Whether ``path`` is a PNG whose ``Software`` text chunk names our generator."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return png_text(data).get(PNG_MARK) == GENERATOR


def png_text(data: bytes) -> dict[str, str]:
    """The ``tEXt`` and ``zTXt`` chunks of PNG ``data`` as keyword -> text (empty when not a
    PNG). Reads chunk headers only, no image decoding."""
    if not data.startswith(_PNG_SIGNATURE):
        return {}
    out, at = {}, len(_PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b"tEXt" and b"\0" in body:
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt" and b"\0" in body:
            key, _, rest = body.partition(b"\0")
            try:
                out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
            except zlib.error:
                pass
        elif kind == b"IEND":
            break
        at += 12 + length
    return out


@dataclass
class Written:
    """What ``report_runs`` wrote: the page, the figures, each run's final metrics."""

    html: Path
    figures: list[Path]
    runs: list[dict[str, Any]]


def report_runs(paths: Sequence[Path], output: Path | None = None, *,
                overwrite: bool = False, map_method: MapMethod | None = None) -> Written:
    """Read the runs, check the outputs, draw, and write the report.

    Args:
        paths: run directories (one; or several, compared, which needs ``output``).
        output: the .html to write; default ``RUN_DIR/report/report.html``.
        overwrite: replace a report of ours already there.
        map_method: as ``make_report``.

    Raises:
        DataError: a run directory or one of its files is malformed (one line naming it).
        OutputError: as ``default_output`` and ``check_outputs``.
    """
    html = output if output is not None else default_output(paths)
    runs = [read_run(path) for path in paths]
    _unique_names(runs)
    check_outputs(html, list(paths), overwrite=overwrite)
    report = make_report(runs, map_method)
    pngs = write_report(report, html)
    return Written(html, pngs, [{"name": run.name, "path": str(run.path),
                                 "final": final_metrics(run)} for run in runs])


def _unique_names(runs: Sequence[Run]) -> None:
    """Runs named alike (``a/run`` and ``b/run``) are told apart by their parent folders."""
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
    for run in runs:
        if seen[run.name] > 1:
            parent = run.path.resolve().parent.name
            run.name = re.sub(r"^/+", "", f"{parent}/{run.name}")
