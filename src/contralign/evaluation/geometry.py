"""Geometry of an embedding space: alignment, uniformity and the modality gap (and, from
``evaluation.diagnostics``, effective rank and hubness).

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
from contralign.evaluation.bootstrap import Resampling
from contralign.evaluation.diagnostics import HUBNESS_K, effective_rank, hubness
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
    """The geometry of the space the pairs are embedded in: alignment of the positive pairs,
    and uniformity, effective rank and hubness of the embedded items, and the modality gap
    between the two sides. Primary metric: ``alignment`` (lower is better).

    Anchors are embedded by the query tower, positives by the document tower. The *points* are
    the union of both sides, each distinct embedding once: with one tower a text that is both an
    anchor and a positive, or repeated, is one point (not paired with itself); with two towers
    it is one point per tower. Uniformity, effective rank (``diagnostics.effective_rank``) and
    hubness (``diagnostics.hubness``, k = 10) are taken over the points: the spread of the one
    shared space both views live in (the paper's training loss instead averages the uniformity
    of each side). Alignment is over the pairs marked ``paired`` (all by default; STS dev sets
    mark their high-scoring pairs, ``geometry_from_sts``). The modality gap compares the
    centroids of the anchors' and the positives' embeddings over all pairs (``modality_gap``);
    with one tower on text pairs it is small but defined.

    Args:
        anchors: ``N`` items (texts or images).
        positives: ``N`` items, ``positives[i]`` the other side of ``anchors[i]``.
        name: prefix for ``evaluate_all`` (``geometry/alignment``).
        batch_size: passed to each tower's ``encode``.
        alpha: alignment exponent.
        t: uniformity temperature.
        paired: ``N`` flags, which pairs are positives for alignment (default: all).
        k: the neighbours per point for hubness.

    Raises:
        ValueError: lengths differ, no pairs, no pair marked ``paired``, or fewer than 2
            distinct items.
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
        paired: Sequence[bool] | None = None,
        k: int = HUBNESS_K,
    ) -> None:
        if len(anchors) != len(positives) or not anchors:
            raise ValueError(
                f"anchors ({len(anchors)}) and positives ({len(positives)}) must be equal, > 0"
            )
        if len({item_key(item) for item in [*anchors, *positives]}) < 2:
            raise ValueError("uniformity needs at least 2 distinct items")
        mask = np.ones(len(anchors), bool) if paired is None else np.asarray(paired, bool)
        if mask.shape != (len(anchors),) or not mask.any():
            raise ValueError(f"paired: need {len(anchors)} flags with at least one true")
        self.anchors = list(anchors)
        self.positives = list(positives)
        self.paired = mask
        self.name = name
        self.batch_size = batch_size
        self.alpha = alpha
        self.t = t
        self.k = k

    def __call__(self, sides: Encoder | Sides) -> dict[str, float]:
        """Embed each distinct item once per tower and return ``{"alignment", "uniformity",
        "modality_gap", "effective_rank", "hubness"}``."""
        points, anchor_rows, positive_rows = self._embed(sides)
        return self._metrics(points, anchor_rows, positive_rows)

    def _embed(self, sides: Encoder | Sides) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(U, D)`` unit float64 points and the ``(N,)`` point rows of anchors and
        positives."""
        embeddings, anchor_rows, positive_rows = encode_sides(
            Sides.of(sides), self.anchors, self.positives, self.batch_size
        )
        return l2_normalize(embeddings.astype(np.float64)), anchor_rows, positive_rows

    def _metrics(self, points: np.ndarray, anchor_rows: np.ndarray,
                 positive_rows: np.ndarray) -> dict[str, float]:
        x, y = points[anchor_rows], points[positive_rows]  # (N, D) each
        return {
            "alignment": alignment(x[self.paired], y[self.paired], self.alpha),
            "uniformity": uniformity(points, self.t),
            "modality_gap": modality_gap(x, y),
            "effective_rank": effective_rank(points),
            "hubness": hubness(points, self.k),
        }

    def resampling(self, sides: Encoder | Sides) -> tuple[dict[str, float], list[Resampling]]:
        """The metrics and their bootstrap over pairs (``evaluation.bootstrap``) for alignment
        and uniformity.

        A resample weighs each point by how often the resampled pairs hold it, relative to the
        whole set (so the identity resample gives the metric itself), and uniformity becomes
        the weighted mean of the kernel over pairs of distinct points. Effective rank and
        hubness get no interval: a resample repeats rows, and repeated rows are each other's
        nearest neighbours and add no direction, so their bootstrap would measure the
        duplication. Nor does the modality gap: the norm of a mean difference is biased upward
        by its noise (``E||mean||² = ||μ||² + tr Σ / n``) and resampling adds that bias again,
        so on small sets its percentile interval lies above the estimate. Uniformity gets one
        when the ``(U, U)`` kernel fits in ``MAX_KERNEL_ELEMENTS``.
        """
        points, anchor_rows, positive_rows = self._embed(sides)
        metrics = self._metrics(points, anchor_rows, positive_rows)
        pairs = PairGeometry(points, anchor_rows, positive_rows, self.paired, self.alpha, self.t)
        return metrics, [Resampling(len(anchor_rows), pairs.score, pairs.score_batch)]


# Uniformity's bootstrap holds the (U, U) float64 kernel of the points: up to 4096 points.
MAX_KERNEL_ELEMENTS = 1 << 24


class PairGeometry:
    """Alignment and uniformity of weighted resamples of pairs (see
    ``GeometryEvaluator.resampling``).

    Args:
        points: ``(U, D)`` unit rows.
        anchor_rows: ``(N,)`` point of each pair's anchor.
        positive_rows: ``(N,)`` point of each pair's positive.
        paired: ``(N,)`` which pairs count for alignment.
        alpha: alignment exponent.
        t: uniformity temperature.
    """

    def __init__(self, points: np.ndarray, anchor_rows: np.ndarray, positive_rows: np.ndarray,
                 paired: np.ndarray, alpha: float, t: float) -> None:
        x, y = points[anchor_rows], points[positive_rows]  # (N, D) each
        self.units = len(anchor_rows)
        self.distance = np.linalg.norm(x - y, axis=1) ** alpha * paired  # (N,), 0 if unpaired
        self.paired = paired.astype(np.float64)  # (N,)
        u = len(points)
        # Occurrences of each point in each pair: (N, U), and over all pairs: (U,).
        self.holds = np.zeros((self.units, u))
        np.add.at(self.holds, (np.arange(self.units), anchor_rows), 1.0)
        np.add.at(self.holds, (np.arange(self.units), positive_rows), 1.0)
        self.total = self.holds.sum(axis=0)
        self.kernel: np.ndarray | None = None
        if u * u <= MAX_KERNEL_ELEMENTS:
            norms = np.einsum("ud,ud->u", points, points)  # (U,), 1 except for zero rows
            squared = norms[:, None] + norms[None, :] - 2.0 * (points @ points.T)  # (U, U)
            self.kernel = np.exp(-t * np.maximum(squared, 0.0))

    def score_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """``(R, N)`` resampled pair indices -> each metric's ``(R,)`` values (NaN where a
        resample has no paired pair)."""
        counts = np.stack([np.bincount(row, minlength=self.units) for row in indices]
                          ).astype(np.float64)  # (R, N)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {"alignment": (counts @ self.distance) / (counts @ self.paired)}
        if self.kernel is not None:
            weights = counts @ self.holds / self.total  # (R, U)
            diagonal = (weights**2) @ np.diag(self.kernel)  # (R,)
            kernel_sum = np.einsum("ru,ru->r", weights @ self.kernel, weights) - diagonal
            pairs = weights.sum(axis=1) ** 2 - (weights**2).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out["uniformity"] = np.log(kernel_sum / pairs)
        return out

    def score(self, indices: np.ndarray) -> dict[str, float]:
        """One resample's ``(N,)`` indices -> its metrics."""
        return {key: float(values[0]) for key, values in self.score_batch(indices[None]).items()}


def geometry_from_records(
    records: Sequence[PairRecord], name: str = "geometry", batch_size: int = 32
) -> GeometryEvaluator:
    """A ``GeometryEvaluator`` over records' (anchor, positive) pairs.

    Raises:
        ValueError: a record lacks a positive (the message names its line).
    """
    anchors, positives, _ = record_pairs(records)
    return GeometryEvaluator(anchors, positives, name=name, batch_size=batch_size)


# STS pairs scoring at least this fraction of the top score are positives (for STS-B's 0-5:
# 4 and up, "mostly equivalent"), as Wang & Isola's and SimCSE's (arXiv:2104.08821, Figure 2)
# alignment on STS-B takes the pairs scored above 4.
STS_POSITIVE_FRACTION = 0.8


def geometry_from_sts(
    records: Sequence[PairRecord], name: str = "geometry", batch_size: int = 32
) -> GeometryEvaluator:
    """A ``GeometryEvaluator`` over scored STS pairs: alignment over the pairs scoring at least
    ``STS_POSITIVE_FRACTION`` of the top score (the top-scoring pairs when no score is
    positive), everything else over all sentences and pairs.

    Raises:
        ValueError: a record lacks a positive or a score (the message names its line).
    """
    anchors, positives, scores = record_pairs(records, with_score=True)
    gold = np.asarray(scores, dtype=np.float64)
    top = float(gold.max())
    paired = gold >= STS_POSITIVE_FRACTION * top if top > 0 else gold == top
    return GeometryEvaluator(anchors, positives, name=name, batch_size=batch_size,
                             paired=paired.tolist())
