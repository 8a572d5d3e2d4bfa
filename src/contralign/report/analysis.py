"""The numbers behind the report's pictures of a snapshot: pair cosines, a 2-D map, neighbours.

A snapshot holds the same ``n`` dev pairs embedded at one step, ``anchors`` and ``positives``
``(n, D)``, L2-normalised, row i of both = pair i. Cosines are dot products.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import numpy as np

from contralign.report.runs import Snapshot

MapMethod = Literal["pca", "umap"]



def umap_available() -> bool:
    """Whether the ``umap`` package (umap-learn) is installed; contralign never installs it."""
    return importlib.util.find_spec("umap") is not None


def map_2d(snapshot: Snapshot, method: MapMethod = "pca") -> np.ndarray:
    """A 2-D map of the anchors and positives of a snapshot, fitted on both together.

    PCA takes the top two right singular vectors of the centred ``(2n, D)`` matrix (numpy SVD),
    each signed so that its largest-magnitude loading is positive (a fixed orientation, so maps
    of two runs do not mirror by chance). UMAP (McInnes et al. 2018, arXiv:1802.03426) uses
    cosine distance and a fixed seed.

    Returns:
        ``(2n, 2)``: rows ``0..n-1`` are the anchors, ``n..2n-1`` the positives.
    """
    points = np.concatenate([snapshot.anchors, snapshot.positives]).astype(np.float64)
    if method == "umap":
        import umap  # optional: only when installed (umap_available)

        reducer = umap.UMAP(n_components=2, metric="cosine", random_state=0)
        return np.asarray(reducer.fit_transform(points), dtype=np.float64)
    centred = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # vt (min(2n, D), D)
    axes = vt[:2]
    if axes.shape[0] < 2:  # a single point: no second direction
        axes = np.vstack([axes, np.zeros_like(axes)])
    signs = np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])
    return centred @ (axes * np.where(signs == 0, 1.0, signs)[:, None]).T


@dataclass
class Neighbours:
    """The top positives of one anchor by cosine: ``hits`` (index, cosine), best first, and the
    true positive's rank (1 = first) and cosine."""

    anchor: int
    hits: list[tuple[int, float]]
    true_rank: int
    true_cosine: float


def neighbours(snapshot: Snapshot, anchors: list[int], k: int = 3) -> list[Neighbours]:
    """The ``k`` nearest positives of each of ``anchors`` among the sample's positives.

    Ties are broken by index (a stable sort), so the ranks are reproducible.
    """
    out = []
    for i in anchors:
        scores = snapshot.positives.astype(np.float64) @ snapshot.anchors[i].astype(np.float64)
        order = np.argsort(-scores, kind="stable")
        rank = int(np.flatnonzero(order == i)[0]) + 1
        out.append(Neighbours(i, [(int(j), float(scores[j])) for j in order[:k]], rank,
                              float(scores[i])))
    return out


def example_anchors(n: int, count: int = 5) -> list[int]:
    """``count`` pairs spread evenly over a sample of ``n`` (deterministic, not cherry-picked)."""
    if n <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n - 1, num=min(count, n))})
