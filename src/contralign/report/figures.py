"""The report's figures: each a function from runs to a matplotlib ``Figure``, one colour per run.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot: no
global state, no window, nothing left open (a notebook user's backend is untouched).
matplotlib is imported inside the functions, so ``import contralign`` stays light.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from contralign.report.analysis import MapMethod, map_2d
from contralign.report.runs import Run
from contralign.training.layout import pair_cosines

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
# Tableau 10, matplotlib's default cycle: one colour per run, in the order the runs were given.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
PANEL = (3.6, 2.7)  # inches per panel: 360 x 270 px at DPI
SMOOTH_FROM = 10  # loss curves of at least this many points are also drawn smoothed
SMOOTHING = 0.6  # TensorBoard's default weight


def smooth(values: Sequence[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's scalar smoothing: an exponential moving average, debiased so that the first
    points are not pulled towards 0 (``s_t = w s_{t-1} + (1 - w) v_t``, divided by
    ``1 - w^t``)."""
    out, last = [], 0.0
    for t, value in enumerate(values, start=1):
        last = weight * last + (1 - weight) * value
        out.append(last / (1 - weight ** t))
    return out


def _step_axis(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def _figure(rows: int, cols: int, title: str | None = None) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows x cols`` panels (``axes`` as a 2-D object array)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows + (0.3 if title else 0)), dpi=DPI,
                 layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False), dtype=object)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, axes


def _finish_grid(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _legend(ax: Axes, runs: Sequence[Run]) -> None:
    if len(runs) > 1:
        ax.legend(fontsize=7, frameon=False)


def png_bytes(fig: Figure, metadata: dict[str, str] | None = None) -> bytes:
    """The figure as PNG bytes (Agg), with text ``metadata`` chunks (``Software``, ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata=metadata or {})
    return buffer.getvalue()


def training_keys(runs: Sequence[Run]) -> list[str]:
    """The train-line panels some run can fill: ``loss`` (with its parts), ``lr``,
    ``temperature``."""
    logged = {key for run in runs for _, values in run.train for key in values}
    return [key for key in ("loss", "lr", "temperature") if key in logged]


def training_curves(runs: Sequence[Run]) -> Figure:
    """Loss, learning rate and temperature over optimiser steps, one panel each (those some run
    logged). The loss panel also draws each ``*_loss`` part (dashed) that differs from the
    total."""
    keys = training_keys(runs)
    fig, axes = _figure(1, len(keys))
    titles = {"loss": "training loss", "lr": "learning rate", "temperature": "temperature"}
    for ax, key in zip(axes.flat, keys, strict=False):
        fixed = set()
        for i, run in enumerate(runs):
            steps, values = run.series(key)
            if key == "loss" and len(values) >= SMOOTH_FROM:
                ax.plot(steps, values, color=colour(i), lw=0.8, alpha=0.3)
                ax.plot(steps, smooth(values), color=colour(i), lw=1.4, label=run.name)
            else:
                ax.plot(steps, values, color=colour(i), lw=1.2, label=run.name)
            if key == "loss":
                _loss_parts(ax, run, values, colour(i))
            fixed.add(values[0] if values and min(values) == max(values) else None)
        title = titles[key]
        if key == "temperature" and len(fixed) == 1 and None not in fixed:
            title += f" (fixed at {fixed.pop():g})"
        ax.set_title(title, fontsize=10)
        _step_axis(ax)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        _legend(ax, runs)
    return fig


def _loss_parts(ax: Axes, run: Run, total: list[float], color: str) -> None:
    parts = sorted({k for _, v in run.train for k in v if k.endswith("_loss")})
    for part in parts:
        steps, values = run.series(part)
        if len(values) == len(total) and np.allclose(values, total):
            continue  # the whole loss under another name: drawn already
        ax.plot(steps, values, color=color, lw=0.9, ls="--", alpha=0.7, label=part)
    if len(parts) > 0 and ax.get_legend_handles_labels()[0][1:]:
        ax.legend(fontsize=7, frameon=False)


def metric_keys(runs: Sequence[Run], geometry: bool) -> list[str]:
    """Dev metrics some run measured, in first-seen order: the geometry diagnostics
    (``geometry/...``) or the others."""
    keys: dict[str, None] = {}
    for run in runs:
        for point in run.evals:
            for key in point.metrics:
                if key.startswith("geometry/") == geometry:
                    keys.setdefault(key, None)
    return list(keys)


def grid_shape(count: int, columns: int = 4) -> tuple[int, int]:
    """Rows and columns for ``count`` panels, at most ``columns`` wide, rows filled evenly
    (9 panels: 3 x 3, not 4 + 4 + 1)."""
    rows = -(-count // columns)
    return rows, -(-count // rows)


def metric_grid(runs: Sequence[Run], keys: Sequence[str], columns: int = 4) -> Figure:
    """One panel per metric over steps, one line per run; a bootstrap interval as an error bar
    where the evaluation has one, and the untrained model (step 0) as a hollow marker."""
    rows, cols = grid_shape(len(keys), columns)
    fig, axes = _figure(rows, cols)
    for ax, key in zip(axes.flat, keys, strict=False):
        for i, run in enumerate(runs):
            steps, values = run.eval_series(key)
            ax.plot(steps, values, color=colour(i), lw=1.2, marker="o", ms=3, label=run.name)
            if steps and steps[0] == 0:
                ax.plot([0], [values[0]], marker="o", ms=7, mfc="white", color=colour(i))
            bars = [(p.step, p.metrics[key], p.ci[key]) for p in run.evals
                    if key in p.ci and key in p.metrics]
            if bars:
                x, y, ci = zip(*bars, strict=True)
                err = np.array([[v - lo for v, (lo, _) in zip(y, ci, strict=True)],
                                [hi - v for v, (_, hi) in zip(y, ci, strict=True)]])
                ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="none", ecolor=colour(i),
                            capsize=3, lw=1)
        ax.set_title(key, fontsize=9)
        _step_axis(ax)
        ax.grid(alpha=0.3)
        _legend(ax, runs)
    _finish_grid(axes, len(keys))
    return fig


def has_plane(run: Run) -> bool:
    """Whether ``run`` measured alignment and uniformity at some evaluation."""
    return any({"geometry/alignment", "geometry/uniformity"} <= p.metrics.keys()
               for p in run.evals)


def alignment_uniformity(runs: Sequence[Run]) -> Figure:
    """The alignment-uniformity plane of Wang & Isola 2020 (arXiv:2005.10242), a run's
    trajectory drawn as SimCSE's Figure 2 (arXiv:2104.08821) draws one: x = l_uniform,
    y = l_align, both lower-better, so the lower left is better. Each run's evaluations are
    joined in order by arrows; the first evaluation (the untrained model,
    at step 0) is a hollow circle, the last a filled star."""
    fig, axes = _figure(1, 1)
    ax = axes[0, 0]
    fig.set_size_inches(5.4, 4.2)
    for i, run in enumerate(runs):
        points = [(p.step, p.metrics["geometry/uniformity"], p.metrics["geometry/alignment"])
                  for p in run.evals
                  if {"geometry/alignment", "geometry/uniformity"} <= p.metrics.keys()]
        if not points:
            continue
        steps, x, y = (list(v) for v in zip(*points, strict=True))
        for j in range(len(points) - 1):
            ax.annotate("", xy=(x[j + 1], y[j + 1]), xytext=(x[j], y[j]),
                        arrowprops={"arrowstyle": "->", "color": colour(i), "lw": 1.2})
        ax.plot(x, y, ls="none", marker="o", ms=3, color=colour(i),
                label=run.name if len(runs) > 1 else "evaluations")
        first = "untrained (step 0)" if steps[0] == 0 else f"first (step {steps[0]})"
        ax.plot([x[0]], [y[0]], ls="none", marker="o", ms=9, mfc="white", mec=colour(i),
                mew=1.5, label=first if len(runs) == 1 else None)
        ax.plot([x[-1]], [y[-1]], ls="none", marker="*", ms=13, color=colour(i),
                label=f"last (step {steps[-1]})" if len(runs) == 1 else None)
    if len(runs) > 1:  # what the markers mean, once for all runs
        ax.plot([], [], ls="none", marker="o", ms=8, mfc="white", mec="0.3",
                label="first evaluation (untrained at step 0)")
        ax.plot([], [], ls="none", marker="*", ms=11, color="0.3", label="last evaluation")
    ax.set_xlabel(r"$\mathcal{L}_{uniform}$  (lower: more uniform)", fontsize=9)
    ax.set_ylabel(r"$\mathcal{L}_{align}$  (lower: pairs closer)", fontsize=9)
    ax.set_title("alignment and uniformity (lower left is better)", fontsize=10)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig


def similarity_histograms(runs: Sequence[Run]) -> Figure:
    """Cosine similarity of positive pairs against every other (anchor, positive) pair of the
    dev sample, before (the oldest snapshot: the untrained model) and after (the newest)
    training: the two distributions behind alignment and uniformity. Densities, so that n
    positives and n(n-1) negatives share an axis."""
    fig, axes = _figure(1, 2)
    cosines = {(which, i): pair_cosines(snap.anchors, snap.positives)
               for which in ("before", "after") for i, run in enumerate(runs) if run.snapshots
               for snap in [run.snapshots[0 if which == "before" else -1]]}
    low = min(min(pos.min(), neg.min()) for pos, neg in cosines.values())
    low = max(-1.0, np.floor(low * 10) / 10 - 0.1)  # the range both panels share
    for ax, which in zip(axes.flat, ("before", "after"), strict=True):
        for i, run in enumerate(runs):
            if (which, i) not in cosines:
                continue
            pos, neg = cosines[which, i]
            # Fewer bins for the n positives than for the n(n - 1) negatives.
            pos_bins = np.linspace(low, 1, int(np.clip(4 * np.sqrt(len(pos)), 15, 80)) + 1)
            bins = np.linspace(low, 1, 81)
            pos_colour, neg_colour = ((COLOURS[0], COLOURS[1]) if len(runs) == 1
                                      else (colour(i), colour(i)))
            prefix = "" if len(runs) == 1 else f"{run.name}: "
            ax.hist(neg, bins=bins, density=True, histtype="stepfilled" if len(runs) == 1
                    else "step", alpha=0.5 if len(runs) == 1 else 1.0, color=neg_colour,
                    ls="--" if len(runs) > 1 else "-", label=f"{prefix}negative pairs")
            ax.hist(pos, bins=pos_bins, density=True, histtype="stepfilled" if len(runs) == 1
                    else "step", alpha=0.5 if len(runs) == 1 else 1.0, color=pos_colour,
                    lw=1.5, label=f"{prefix}positive pairs")
        steps = sorted({(r.snapshots[0] if which == "before" else r.snapshots[-1]).step
                        for r in runs if r.snapshots})
        ax.set_title(f"{which} (step {', '.join(map(str, steps))})", fontsize=10)
        ax.set_xlim(low, 1)
        ax.set_xlabel("cosine similarity", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(runs) == 1:
            ax.legend(fontsize=7, frameon=False)
        elif which == "after":  # 2 entries per run: beside the panels, not over the bars
            ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def embedding_maps(runs: Sequence[Run], method: MapMethod = "pca") -> Figure:
    """A 2-D map of each run's dev sample before and after training (one row per run): anchors
    as circles, positives as triangles, each pair joined by a grey line; coloured by label
    when the sample has at most 20 labels, else by side (anchor or positive, with its
    modality)."""
    with_maps = [run for run in runs if run.snapshots and run.sample is not None]
    fig, axes = _figure(len(with_maps), 2)
    fig.set_size_inches(PANEL[0] * 2 * 1.15, PANEL[1] * 1.3 * len(with_maps))
    for row, run in enumerate(with_maps):
        for col, snapshot in enumerate((run.snapshots[0], run.snapshots[-1])):
            ax = axes[row, col]
            _draw_map(ax, run, map_2d(snapshot, method))
            when = "before" if col == 0 else "after"
            name = f"{run.name}: " if len(runs) > 1 else ""
            ax.set_title(f"{name}{when} (step {snapshot.step}, {method.upper()})", fontsize=9)
    return fig


def _draw_map(ax: Axes, run: Run, xy: np.ndarray) -> None:
    """Draw ``xy`` ``(2n, 2)`` (anchors then positives) on ``ax``."""
    from matplotlib.collections import LineCollection

    assert run.sample is not None
    n = len(run.sample.anchors)
    a, p = xy[:n], xy[n:]
    ax.add_collection(LineCollection(list(np.stack([a, p], axis=1)), colors="0.6", lw=0.5,
                                     alpha=0.6, zorder=1))
    labels = run.sample.labels
    distinct = sorted(set(labels)) if labels is not None else []
    if labels is not None and 1 < len(distinct) <= 20:
        palette = _palette(len(distinct))
        index = {label: k for k, label in enumerate(distinct)}
        colours = [palette[index[label]] for label in labels]
        ax.scatter(a[:, 0], a[:, 1], c=colours, s=10, marker="o", zorder=2)
        ax.scatter(p[:, 0], p[:, 1], c=colours, s=12, marker="^", zorder=2)
        for label in distinct[:10]:  # a legend of 20 entries would hide the map
            ax.scatter([], [], c=[palette[index[label]]], s=10, label=_short(label))
    else:
        modality = run.sample.modalities
        ax.scatter(a[:, 0], a[:, 1], c=COLOURS[0], s=10, marker="o", zorder=2,
                   label=f"anchor ({modality.get('anchor', 'text')})")
        ax.scatter(p[:, 0], p[:, 1], c=COLOURS[1], s=12, marker="^", zorder=2,
                   label=f"positive ({modality.get('positive', 'text')})")
    ax.autoscale_view()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, frameon=False, loc="best")


def _palette(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(k) for k in range(count)]


def _short(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
