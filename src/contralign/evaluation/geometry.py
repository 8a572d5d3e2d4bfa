"""Geometry of an embedding space: alignment, uniformity and the modality gap.

Alignment and uniformity: Wang & Isola 2020, "Understanding Contrastive Representation Learning
through Alignment and Uniformity on the Hypersphere", arXiv:2005.10242; lower is better for both.
Modality gap: Liang et al. 2022, "Mind the Gap: Understanding the Modality Gap in Multi-modal
Contrastive Representation Learning", arXiv:2203.02053. All three are numpy (float64), for
evaluation; they L2-normalise their inputs first, as the papers define them on the unit sphere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import logsumexp

from contralign.core.items import item_key
from contralign.evaluation.protocol import (
    Encoder,
    Item,
    PairRecord,
    Sides,
    encode_sides,
    record_pairs,
)
from contralign.index.exact import l2_normalize

# Pairwise-distance entries held at once: (row block) x (N) float64.
MAX_BLOCK_ELEMENTS = 1 << 22


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2.0) -> float:
    """``E ||f(x) - f(y)||^alpha`` over positive pairs (row ``i`` of ``x`` with row ``i`` of ``y``).

    Args:
        x: ``(N, D)`` embeddings, L2-normalised here.
        y: ``(N, D)`` embeddings of their positives, L2-normalised here.
        alpha: the exponent (the paper's default is 2).

    Returns:
        The mean, in ``[0, 2^alpha]``.

    Raises:
        ValueError: shapes differ or there are no pairs.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or len(x) == 0:
        raise ValueError(f"alignment needs two equal (N, D) arrays, N >= 1 ({x.shape}, {y.shape})")
    x, y = l2_normalize(x), l2_normalize(y)
    return float(np.mean(np.linalg.norm(x - y, axis=1) ** alpha))


def uniformity(
    x: np.ndarray, t: float = 2.0, max_block_elements: int = MAX_BLOCK_ELEMENTS
) -> float:
    """``log E exp(-t ||f(x_i) - f(x_j)||^2)`` over the ``N (N - 1) / 2`` pairs ``i < j``.

    Computed in row blocks with a log-sum-exp, so memory stays ``O(block x N)``.

    Args:
        x: ``(N, D)`` embeddings, L2-normalised here.
        t: the temperature (the paper's default is 2).
        max_block_elements: bound on the distance block computed at once.

    Returns:
        A value in ``[-4t, 0]``; lower means more uniformly spread.

    Raises:
        ValueError: fewer than 2 rows.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"uniformity needs an (N, D) array with N >= 2 (got {x.shape})")
    x = l2_normalize(x)
    n = len(x)
    squared_norms = np.einsum("nd,nd->n", x, x)  # (N,), 1 except for zero rows
    rows = max(1, max_block_elements // n)
    parts = []
    for start in range(0, n - 1, rows):
        stop = min(start + rows, n - 1)
        # Pairs (i, j) with start <= i < stop and j > i: columns from start + 1 on.
        dots = x[start:stop] @ x[start + 1 :].T  # (B, N - start - 1)
        sq = squared_norms[start:stop, None] + squared_norms[None, start + 1 :] - 2.0 * dots
        i = np.arange(start, stop)[:, None]
        j = np.arange(start + 1, n)[None, :]
        parts.append(logsumexp(np.where(j > i, -t * np.maximum(sq, 0.0), -np.inf)))
    return float(logsumexp(parts) - np.log(n * (n - 1) / 2.0))


def modality_gap(x: np.ndarray, y: np.ndarray) -> float:
    """``|| mean_i f(x_i) - mean_i f(y_i) ||_2``: the distance between the centroids of two
    sides' unit-normalised embeddings (Liang et al. 2022, arXiv:2203.02053).

    The paper's gap vector and the distance its authors' code reports ("Euclidean distance
    between mass centers" of the normalised image and text features of the pairs). Each row
    counts once, so an item paired several times weighs as often as it is paired.

    Args:
        x: ``(N, D)`` embeddings of one side (images), L2-normalised here.
        y: ``(M, D)`` embeddings of the other side (captions), L2-normalised here.

    Returns:
        A value in ``[0, 2]``: 0 when the centroids coincide.

    Raises:
        ValueError: not two 2-d arrays of the same width with at least one row each.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise ValueError(f"modality_gap needs (N, D) and (M, D) arrays, N, M >= 1 ({x.shape}, "
                         f"{y.shape})")
    gap = l2_normalize(x).mean(axis=0) - l2_normalize(y).mean(axis=0)  # (D,)
    return float(np.linalg.norm(gap))


class GeometryEvaluator:
    """Alignment over (anchor, positive) pairs, uniformity of the embedded items, and the
    modality gap between the two sides.

    Anchors are embedded by the query tower, positives by the document tower. Uniformity is
    taken over the union of both sides, each distinct embedding once: with one tower a text that
    is both an anchor and a positive, or repeated, is one point (not paired with itself); with
    two towers it is one point per tower. This measures the spread of the one shared space both
    views live in; the paper's training loss instead averages the uniformity of each side. The
    modality gap compares the centroids of the anchors' and the positives' embeddings, pair by
    pair (``modality_gap``); with one tower on text pairs it is small but defined. Primary
    metric: ``alignment`` (lower is better).

    Args:
        anchors: ``N`` items (texts or images).
        positives: ``N`` items, ``positives[i]`` matching ``anchors[i]``.
        name: prefix for ``evaluate_all`` (``geometry/alignment``).
        batch_size: passed to each tower's ``encode``.
        alpha: alignment exponent.
        t: uniformity temperature.

    Raises:
        ValueError: lengths differ, no pairs, or fewer than 2 distinct items.
    """

    primary = "alignment"

    def __init__(
        self,
        anchors: Sequence[Item],
        positives: Sequence[Item],
        name: str = "geometry",
        batch_size: int = 32,
        alpha: float = 2.0,
        t: float = 2.0,
    ) -> None:
        if len(anchors) != len(positives) or not anchors:
            raise ValueError(
                f"anchors ({len(anchors)}) and positives ({len(positives)}) must be equal, > 0"
            )
        if len({item_key(item) for item in [*anchors, *positives]}) < 2:
            raise ValueError("uniformity needs at least 2 distinct items")
        self.anchors = list(anchors)
        self.positives = list(positives)
        self.name = name
        self.batch_size = batch_size
        self.alpha = alpha
        self.t = t

    def __call__(self, sides: Encoder | Sides) -> dict[str, float]:
        """Embed each distinct item once per tower and return ``{"alignment", "uniformity",
        "modality_gap"}``."""
        embeddings, anchor_rows, positive_rows = encode_sides(
            Sides.of(sides), self.anchors, self.positives, self.batch_size
        )
        x, y = embeddings[anchor_rows], embeddings[positive_rows]  # (N, D) each
        return {
            "alignment": alignment(x, y, self.alpha),
            "uniformity": uniformity(embeddings, self.t),
            "modality_gap": modality_gap(x, y),
        }


def geometry_from_records(
    records: Sequence[PairRecord], name: str = "geometry", batch_size: int = 32
) -> GeometryEvaluator:
    """A ``GeometryEvaluator`` over records' (anchor, positive) pairs.

    Raises:
        ValueError: a record lacks a positive (the message names its line).
    """
    anchors, positives, _ = record_pairs(records)
    return GeometryEvaluator(anchors, positives, name=name, batch_size=batch_size)
