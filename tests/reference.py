"""Naive references for the objectives, written from the papers' formulas with explicit loops.

Slow on purpose: no matrix products, no masked_fill, no cross_entropy. Each value is built from
float64 torch scalars so autograd still gives gradients to compare against the fast code.
"""

from __future__ import annotations

import torch
from torch import Tensor


def naive_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_d a_d · b_d for two ``(D,)`` vectors."""
    return (a.double() * b.double()).sum()


def naive_similarity(a: Tensor, b: Tensor, normalize: bool) -> Tensor:
    """Cosine of two ``(D,)`` vectors when ``normalize``, else their dot product."""
    dot = naive_dot(a, b)
    if not normalize:
        return dot
    return dot / (torch.sqrt(naive_dot(a, a)) * torch.sqrt(naive_dot(b, b)))


def naive_row_loss(
    anchor: Tensor, target: Tensor, candidates: list[Tensor], temperature: float, normalize: bool
) -> Tensor:
    """−log( exp(s(a, t)/τ) / Σ_c exp(s(a, c)/τ) ); ``candidates`` must include ``target``."""
    numerator = torch.exp(naive_similarity(anchor, target, normalize) / temperature)
    denominator = torch.zeros((), dtype=torch.float64)
    for candidate in candidates:
        denominator = denominator + torch.exp(
            naive_similarity(anchor, candidate, normalize) / temperature
        )
    return -torch.log(numerator / denominator)


def _naive_direction(
    anchors: Tensor,
    candidates: list[Tensor],
    candidate_ids: list[int] | None,
    temperature: float,
    normalize: bool,
) -> Tensor:
    """Mean over rows i of the row loss; the target of row i is candidate i.

    Candidate j is dropped for row i when ``candidate_ids[j] == candidate_ids[i]`` and j != i
    (candidate i is row i's positive, so its id is the row's).
    """
    total = torch.zeros((), dtype=torch.float64)
    rows = anchors.shape[0]
    for i in range(rows):
        kept = []
        for j, candidate in enumerate(candidates):
            is_duplicate = (
                candidate_ids is not None and j != i and candidate_ids[j] == candidate_ids[i]
            )
            if not is_duplicate:
                kept.append(candidate)
        total = total + naive_row_loss(anchors[i], candidates[i], kept, temperature, normalize)
    return total / rows


def naive_info_nce(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float = 0.05,
    symmetric: bool = False,
    normalize: bool = True,
    key_ids: Tensor | None = None,
    query_ids: Tensor | None = None,
    negative_ids: Tensor | None = None,
) -> Tensor:
    """InfoNCE (arXiv:1807.03748) with in-batch and hard negatives, row by row.

    Row i's candidates are all keys then all hard negatives flattened row-major (``B + B·K``);
    its target is key i. A candidate other than key i whose id equals ``key_ids[i]`` is dropped.
    ``symmetric`` averages with the key → query direction (candidates: all queries, dropped by
    ``query_ids``).

    Args:
        query: ``(B, D)``.
        key: ``(B, D)``.
        negatives: ``(B, K, D)`` or None.
        temperature: τ.
        symmetric: also the key → query direction.
        normalize: cosine similarity instead of the dot product.
        key_ids: ``(B,)`` or None.
        query_ids: ``(B,)`` or None.
        negative_ids: ``(B, K)`` or None.

    Returns:
        The float64 scalar loss.
    """
    rows = query.shape[0]
    candidates = [key[j] for j in range(rows)]
    candidate_ids = None if key_ids is None else [int(key_ids[j]) for j in range(rows)]
    if negatives is not None:
        for b in range(negatives.shape[0]):
            for k in range(negatives.shape[1]):
                candidates.append(negatives[b, k])
                if candidate_ids is not None:
                    assert negative_ids is not None
                    candidate_ids.append(int(negative_ids[b, k]))
    loss = _naive_direction(query, candidates, candidate_ids, temperature, normalize)
    if not symmetric:
        return loss
    queries = [query[j] for j in range(rows)]
    q_ids = None if query_ids is None else [int(query_ids[j]) for j in range(rows)]
    reverse = _naive_direction(key, queries, q_ids, temperature, normalize)
    return (loss + reverse) / 2
