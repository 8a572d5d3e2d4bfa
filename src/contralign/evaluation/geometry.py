"""Geometry of an embedding space: alignment and uniformity on the hypersphere.

Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere", arXiv:2005.10242. Both functions are numpy (float64), for
evaluation; they L2-normalise their inputs first, as the paper defines both on the unit sphere.
Lower is better for both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import logsumexp

from contralign.evaluation.protocol import Encoder, PairRecord, encode_unique, record_pairs
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


class GeometryEvaluator:
    """Alignment over (anchor, positive) pairs and uniformity of the embedded texts.

    Uniformity is taken over the union of both sides, each distinct text once (a text that is
    both an anchor and a positive, or repeated, is not paired with itself). This measures the
    spread of the one shared space both views live in; the paper's training loss instead
    averages the uniformity of each side. Primary metric: ``alignment`` (lower is better).

    Args:
        anchors: ``N`` texts.
        positives: ``N`` texts, ``positives[i]`` matching ``anchors[i]``.
        name: prefix for ``evaluate_all`` (``geometry/alignment``).
        batch_size: passed to ``encoder.encode``.
        alpha: alignment exponent.
        t: uniformity temperature.

    Raises:
        ValueError: lengths differ, no pairs, or fewer than 2 distinct texts.
    """

    primary = "alignment"

    def __init__(
        self,
        anchors: Sequence[str],
        positives: Sequence[str],
        name: str = "geometry",
        batch_size: int = 32,
        alpha: float = 2.0,
        t: float = 2.0,
    ) -> None:
        if len(anchors) != len(positives) or not anchors:
            raise ValueError(
                f"anchors ({len(anchors)}) and positives ({len(positives)}) must be equal, > 0"
            )
        if len(set(anchors) | set(positives)) < 2:
            raise ValueError("uniformity needs at least 2 distinct texts")
        self.anchors = list(anchors)
        self.positives = list(positives)
        self.name = name
        self.batch_size = batch_size
        self.alpha = alpha
        self.t = t

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        """Embed each distinct text once and return ``{"alignment", "uniformity"}``."""
        n = len(self.anchors)
        embeddings, index = encode_unique(encoder, self.anchors + self.positives, self.batch_size)
        return {
            "alignment": alignment(embeddings[index[:n]], embeddings[index[n:]], self.alpha),
            "uniformity": uniformity(embeddings, self.t),
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
