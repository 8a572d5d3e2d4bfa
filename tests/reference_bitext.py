"""Naive references for bitext scoring and mining, written from the formulas with explicit loops.

Slow on purpose: the whole ``N × M`` cosine matrix in float64, neighbours found by sorting each
row and column with Python's ``sorted`` (ties: lower id first), the margin written as in
Artetxe & Schwenk 2019 (arXiv:1811.01136, eq. 3: ``Σ cos / 2k`` over each neighbourhood), and
mining as LASER's ``mine_bitexts.py`` describes it (candidates = each sentence's ``k`` nearest
neighbours; ``union`` = the best match of every sentence of both sides, taken by descending score,
each sentence once).
"""

from __future__ import annotations

import numpy as np


def naive_cosines(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """The full ``(N, M)`` cosine matrix in float64."""
    x = np.asarray(src, np.float64)
    y = np.asarray(tgt, np.float64)
    x = x / np.sqrt((x * x).sum(axis=1, keepdims=True))
    y = y / np.sqrt((y * y).sum(axis=1, keepdims=True))
    return x @ y.T


def _nearest(values: list[float], count: int) -> list[int]:
    return sorted(range(len(values)), key=lambda j: (-values[j], j))[:count]


def naive_matches(src: np.ndarray, tgt: np.ndarray, scoring: str, k: int
                  ) -> tuple[list[int], list[float], list[int], list[float]]:
    """``(forward ids, forward scores, backward ids, backward scores)``."""
    cos = naive_cosines(src, tgt)
    n, m = cos.shape
    kx, ky = min(k, m), min(k, n)
    nn_x = [_nearest([float(cos[i, j]) for j in range(m)], kx) for i in range(n)]
    nn_y = [_nearest([float(cos[i, j]) for i in range(n)], ky) for j in range(m)]
    sum_x = [sum(float(cos[i, z]) for z in nn_x[i]) for i in range(n)]
    sum_y = [sum(float(cos[z, j]) for z in nn_y[j]) for j in range(m)]

    def score(i: int, j: int) -> float:
        c = float(cos[i, j])
        if scoring == "cosine":
            return c
        denominator = sum_x[i] / (2 * kx) + sum_y[j] / (2 * ky)
        return c / denominator if scoring == "margin" else c - denominator

    forward_ids, forward_scores, backward_ids, backward_scores = [], [], [], []
    for i in range(n):
        candidates = range(m) if scoring == "cosine" else nn_x[i]
        j = min(candidates, key=lambda j: (-score(i, j), j))
        forward_ids.append(j)
        forward_scores.append(score(i, j))
    for j in range(m):
        candidates = range(n) if scoring == "cosine" else nn_y[j]
        i = min(candidates, key=lambda i: (-score(i, j), i))
        backward_ids.append(i)
        backward_scores.append(score(i, j))
    return forward_ids, forward_scores, backward_ids, backward_scores


def naive_mine(src: np.ndarray, tgt: np.ndarray, scoring: str, k: int, mode: str,
               threshold: float | None) -> list[tuple[int, int, float]]:
    """Mined ``(source, target, score)`` triples, by descending score, then source, then target."""
    f_ids, f_scores, b_ids, b_scores = naive_matches(src, tgt, scoring, k)
    if mode == "intersect":
        pairs = [(i, j, f_scores[i]) for i, j in enumerate(f_ids) if b_ids[j] == i]
    else:
        pooled = [(i, j, f_scores[i]) for i, j in enumerate(f_ids)]
        pooled += [(i, j, b_scores[j]) for j, i in enumerate(b_ids)]
        pooled.sort(key=lambda p: (-p[2], p[0], p[1]))
        pairs, seen_src, seen_tgt = [], set(), set()
        for i, j, s in pooled:
            if i not in seen_src and j not in seen_tgt:
                seen_src.add(i)
                seen_tgt.add(j)
                pairs.append((i, j, s))
    pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    return [p for p in pairs if threshold is None or p[2] > threshold]


def naive_f1(mined: list[tuple[int, int]], gold: set[tuple[int, int]]) -> float:
    correct = len(set(mined) & gold)
    if correct == 0:
        return 0.0
    precision, recall = correct / len(set(mined)), correct / len(gold)
    return 2 * precision * recall / (precision + recall)
