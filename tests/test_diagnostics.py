"""Effective rank and hubness against naive loops written from the papers, and the geometry
evaluator that reports them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from contralign.evaluation import (
    GeometryEvaluator,
    effective_rank,
    geometry_from_sts,
    hubness,
    k_occurrence,
)


def naive_effective_rank(x: np.ndarray) -> float:
    """Roy & Vetterli 2007, eq. 1-2, on the uncentred matrix of unit rows."""
    rows = [row / np.linalg.norm(row) for row in x]
    singular = np.linalg.svd(np.array(rows), compute_uv=False)
    total = sum(singular)
    entropy = 0.0
    for sigma in singular:
        p = sigma / total
        if p > 0:
            entropy -= p * math.log(p)
    return math.exp(entropy)


def naive_k_occurrence(x: np.ndarray, k: int) -> list[int]:
    """For each i, sort the others by (-cosine, index) and count the first k."""
    n = len(x)
    unit = [row / np.linalg.norm(row) for row in x]
    counts = [0] * n
    for i in range(n):
        scored = []
        for j in range(n):
            if j != i:
                scored.append((-float(unit[i] @ unit[j]), j))
        for _, j in sorted(scored)[:k]:
            counts[j] += 1
    return counts


@pytest.mark.parametrize(("n", "d"), [(50, 8), (20, 64), (5, 5)])
def test_effective_rank_matches_a_naive_loop(n: int, d: int) -> None:
    x = np.random.default_rng(n).normal(size=(n, d))
    assert effective_rank(x) == pytest.approx(naive_effective_rank(x), rel=1e-12)


def test_effective_rank_known_values() -> None:
    # Orthonormal rows: equal singular values, the rank itself; one repeated direction: 1.
    assert effective_rank(np.eye(6)) == pytest.approx(6.0)
    assert effective_rank(np.tile([[3.0, 4.0, 0.0]], (10, 1))) == pytest.approx(1.0)
    # Row scale does not matter (rows are normalised), nor the order of rows.
    x = np.random.default_rng(1).normal(size=(30, 10))
    scaled = x * np.random.default_rng(2).uniform(0.1, 10, size=(30, 1))
    assert effective_rank(scaled) == pytest.approx(effective_rank(x[::-1]), rel=1e-12)
    with pytest.raises(ValueError, match="every row is zero"):
        effective_rank(np.zeros((3, 4)))


@pytest.mark.parametrize(("n", "k"), [(60, 10), (30, 3), (11, 10), (4, 10)])
def test_k_occurrence_matches_a_naive_loop(n: int, k: int) -> None:
    x = np.random.default_rng(n + k).normal(size=(n, 16))
    got = k_occurrence(x, k, max_block_elements=7 * n)  # several row blocks
    assert got.tolist() == naive_k_occurrence(x, min(k, n - 1))
    assert got.sum() == n * min(k, n - 1)


def test_k_occurrence_breaks_ties_by_the_lower_row() -> None:
    # Rows 1, 2 and 3 are the same direction: for row 0 they tie, and k=2 takes rows 1 and 2.
    x = np.array([[1.0, 0.2], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [-1.0, 0.0]])
    assert k_occurrence(x, 2).tolist() == naive_k_occurrence(x, 2)


def test_hubness_is_scipy_skew_of_the_k_occurrence() -> None:
    # A hub: one point near the centre of a cloud is everybody's neighbour.
    x = np.random.default_rng(0).normal(size=(200, 32))
    counts = naive_k_occurrence(x, 10)
    assert hubness(x) == pytest.approx(stats.skew(counts), rel=1e-10)
    assert hubness(x) > 0  # high-dimensional Gaussian data is hubby (the paper's Figure 1)
    # Points on a regular polygon: everyone equally popular, skewness 0 (scipy: NaN).
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    assert hubness(np.stack([np.cos(angles), np.sin(angles)], axis=1), k=2) == 0.0


def test_geometry_evaluator_reports_the_diagnostics_of_its_points() -> None:
    from contralign import load_tower

    tower = load_tower("wordllama-256")
    anchors = [f"sentence number {i} about {w}" for i, w in enumerate(
        ["cats", "dogs", "rain", "markets", "bread", "music", "trains", "code", "moon", "bikes",
         "coffee", "museums"])]
    positives = [a.replace("sentence", "text") for a in anchors]
    got = GeometryEvaluator(anchors, positives, batch_size=4)(tower)
    points = tower.encode([*anchors, *positives])
    assert got["effective_rank"] == pytest.approx(naive_effective_rank(points), rel=1e-6)
    assert got["hubness"] == pytest.approx(stats.skew(naive_k_occurrence(points, 10)), abs=1e-9)


class Scored:
    def __init__(self, anchor: str, positive: str, score: float) -> None:
        self.anchor, self.positive, self.score = anchor, positive, score


def test_sts_geometry_aligns_only_the_high_scoring_pairs() -> None:
    from contralign import load_tower
    from contralign.evaluation import alignment, uniformity

    records = [Scored("a man plays a guitar", "someone plays guitar", 4.8),
               Scored("a cat sleeps", "a dog barks", 0.5),
               Scored("the sun is up", "it is daytime", 4.0),
               Scored("prices rose", "a boy swims", 3.7)]
    evaluator = geometry_from_sts(records)
    assert evaluator.paired.tolist() == [True, False, True, False]  # >= 0.8 x 4.8
    tower = load_tower("wordllama-256")
    got = evaluator(tower)
    first = tower.encode([r.anchor for r in records])
    second = tower.encode([r.positive for r in records])
    assert got["alignment"] == pytest.approx(alignment(first[[0, 2]], second[[0, 2]]))
    assert got["uniformity"] == pytest.approx(uniformity(np.concatenate([first, second])))
