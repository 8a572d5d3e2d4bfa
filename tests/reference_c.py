"""Naive references for MoCo, SwAV and WhitenedCSE, written from the papers with explicit loops.

Slow on purpose: per-row and per-entry loops, no batched linear algebra, no cross_entropy, no
masked_fill. Values are float64 torch scalars so autograd still gives gradients to compare.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from reference import naive_dot, naive_info_nce, naive_row_loss
from torch import Tensor

# --- MoCo (arXiv:1911.05722) ----------------------------------------------------------------


class NaiveQueue:
    """The paper's FIFO queue as a Python deque of rows, oldest first."""

    def __init__(self, size: int) -> None:
        self.rows: deque[Tensor] = deque(maxlen=size)

    def enqueue(self, keys: Tensor) -> None:
        for row in keys:
            self.rows.append(row.detach().clone())

    def negatives(self, dim: int) -> Tensor:
        if not self.rows:
            return torch.zeros(0, dim, dtype=torch.float64)
        return torch.stack(list(self.rows))


def naive_moco_loss(query: Tensor, key: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Mean over rows of −log( e^{cos(q,k)/τ} / (e^{cos(q,k)/τ} + Σ_j e^{cos(q,n_j)/τ}) ); the
    key and the queue are constants (detached)."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(query.shape[0]):
        positive = key[i].detach()
        candidates = [positive] + [queue[j].detach() for j in range(queue.shape[0])]
        total = total + naive_row_loss(query[i], positive, candidates, temperature,
                                       normalize=True)
    return total / query.shape[0]


# --- SwAV (arXiv:2006.09882) ----------------------------------------------------------------


def naive_sinkhorn(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """Algorithm 1 of the paper, entry by entry: Q = exp(scores/ε)ᵀ (K × B), Q /= ΣQ, then
    ``iterations`` times: rows (prototypes) scaled to r = 1/K, columns (samples) to c = 1/B;
    finally columns scaled to sum to 1, returned as (B, K)."""
    rows, n_prototypes = scores.shape
    q = [[math.exp(float(scores[b, k]) / epsilon) for b in range(rows)]
         for k in range(n_prototypes)]  # q[k][b]
    total = sum(sum(row) for row in q)
    q = [[value / total for value in row] for row in q]
    for _ in range(iterations):
        for k in range(n_prototypes):
            u = sum(q[k])
            q[k] = [value * (1.0 / n_prototypes) / u for value in q[k]]
        for b in range(rows):
            column = sum(q[k][b] for k in range(n_prototypes))
            for k in range(n_prototypes):
                q[k][b] = q[k][b] * (1.0 / rows) / column
    codes = torch.zeros(rows, n_prototypes, dtype=torch.float64)
    for b in range(rows):
        column = sum(q[k][b] for k in range(n_prototypes))
        for k in range(n_prototypes):
            codes[b, k] = q[k][b] / column
    return codes


def _naive_unit(v: Tensor) -> Tensor:
    return v / torch.sqrt(naive_dot(v, v))


def _naive_scores(z: Tensor, prototypes: Tensor) -> list[list[Tensor]]:
    """scores[b][k] = ẑ_b · c_k (prototypes used as given)."""
    return [[naive_dot(_naive_unit(z[b]), prototypes[k]) for k in range(prototypes.shape[0])]
            for b in range(z.shape[0])]


def naive_swav_loss(views: list[Tensor], prototypes: Tensor, temperature: float,
                    epsilon: float, iterations: int, assign: int | None = None,
                    queues: list[Tensor] | None = None) -> Tensor:
    """mean_{i<A} mean_{v≠i} −mean_b Σ_k q^i_bk log softmax_k(s^v_b / τ), q^i = Sinkhorn(s^i)
    (over the rows of ``queues[i]`` stacked above the batch's, keeping the batch's rows)."""
    scores = [_naive_scores(z, prototypes) for z in views]
    assign = len(views) if assign is None else assign
    codes = []
    for i in range(assign):
        rows = [[float(s.detach()) for s in row] for row in scores[i]]
        if queues is not None:
            rows = [[float(s) for s in row]
                    for row in _naive_scores(queues[i], prototypes.detach())] + rows
        full = naive_sinkhorn(torch.tensor(rows, dtype=torch.float64), epsilon, iterations)
        codes.append(full[-len(scores[i]):])
    total = torch.zeros((), dtype=torch.float64)
    pairs = 0
    for i in range(assign):
        for v in range(len(views)):
            if v == i:
                continue
            pairs += 1
            rows = len(scores[v])
            for b in range(rows):
                denominator = torch.zeros((), dtype=torch.float64)
                for s in scores[v][b]:
                    denominator = denominator + torch.exp(s / temperature)
                for k, s in enumerate(scores[v][b]):
                    log_p = s / temperature - torch.log(denominator)
                    total = total - float(codes[i][b, k]) * log_p / rows
    return total / pairs


# --- WhitenedCSE (arXiv:2305.17746) ---------------------------------------------------------


def _naive_whitening_matrix(cov: Tensor, method: str) -> Tensor:
    if method == "zca":
        values, vectors = torch.linalg.eigh(cov)  # one small group at a time
        s = cov.shape[0]
        w = torch.zeros(s, s, dtype=torch.float64)
        for a in range(s):
            for b in range(s):
                for j in range(s):
                    w[a, b] = w[a, b] + vectors[a, j] * vectors[b, j] / torch.sqrt(values[j])
        return w
    lower = torch.linalg.cholesky(cov)
    return torch.linalg.inv(lower).T  # rows x ↦ x L^{-T}


def naive_group_whiten(x: Tensor, groups: int, permutation: Tensor | None, eps: float,
                       method: str = "zca") -> Tensor:
    """Group by group: group g holds dimensions permutation[g*s:(g+1)*s]; centre, biased
    covariance + eps·I, multiply by the whitening matrix, write back to those dimensions."""
    rows, dim = x.shape
    size = dim // groups
    order = list(range(dim)) if permutation is None else [int(p) for p in permutation]
    columns: dict[int, Tensor] = {}
    for g in range(groups):
        dims = order[g * size:(g + 1) * size]
        centred = []
        for d in dims:
            mean = sum(x[b, d] for b in range(rows)) / rows
            centred.append(torch.stack([x[b, d] - mean for b in range(rows)]))  # (B,)
        cov = torch.zeros(size, size, dtype=torch.float64)
        for a in range(size):
            for c in range(size):
                cov[a, c] = naive_dot(centred[a], centred[c]) / rows + (eps if a == c else 0.0)
        w = _naive_whitening_matrix(cov, method)
        for out_index, d in enumerate(dims):
            column = torch.zeros(rows, dtype=torch.float64)
            for a in range(size):
                column = column + centred[a] * w[a, out_index]
            columns[d] = column
    return torch.stack([columns[d] for d in range(dim)], dim=1)


def naive_whitened_cse_loss(anchor: Tensor, positives: Tensor, permutations: Tensor, groups: int,
                            temperature: float, eps: float, method: str = "zca") -> Tensor:
    """Σ_p InfoNCE(SGW_{π_0}(anchor), SGW_{π_p}(positive_p)) with in-batch negatives."""
    white_anchor = naive_group_whiten(anchor, groups, permutations[0], eps, method)
    total = torch.zeros((), dtype=torch.float64)
    for p in range(positives.shape[1]):
        white = naive_group_whiten(positives[:, p], groups, permutations[p + 1], eps, method)
        total = total + naive_info_nce(white_anchor, white, temperature=temperature)
    return total
