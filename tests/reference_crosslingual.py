"""Naive references for cross-lingual training, written from the papers' formulas with loops.

Slow on purpose: no matrix products, no masking tensors, no cross_entropy; float64 torch scalars,
so autograd still gives gradients to compare against the fast code.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    dot = (a.double() * b.double()).sum()
    return dot / (torch.sqrt((a.double() ** 2).sum()) * torch.sqrt((b.double() ** 2).sum()))


def _margin_direction(rows: Tensor, candidates: list[Tensor], ids: list[int] | None,
                      temperature: float, margin: float) -> Tensor:
    """LaBSE's additive margin softmax (arXiv:2007.01852, eq. 1), mean over rows i:

        −log( e^{(φ(x_i, y_i) − m)/τ} / ( e^{(φ(x_i, y_i) − m)/τ} + Σ_{n ≠ i} e^{φ(x_i, y_n)/τ} ) )

    with φ the cosine; candidate n ≠ i is left out when ``ids[n] == ids[i]`` (a duplicate of
    the positive is no negative).
    """
    total = torch.zeros((), dtype=torch.float64)
    for i in range(rows.shape[0]):
        positive = torch.exp((_cosine(rows[i], candidates[i]) - margin) / temperature)
        denominator = positive
        for n, candidate in enumerate(candidates):
            if n == i or (ids is not None and ids[n] == ids[i]):
                continue
            denominator = denominator + torch.exp(_cosine(rows[i], candidate) / temperature)
        total = total - torch.log(positive / denominator)
    return total / rows.shape[0]


def naive_margin_info_nce(
    query: Tensor, key: Tensor, negatives: Tensor | None = None, *, temperature: float,
    margin: float, symmetric: bool = False, query_ids: Tensor | None = None,
    key_ids: Tensor | None = None, negative_ids: Tensor | None = None,
) -> Tensor:
    """InfoNCE with an additive margin on cosines, row by row; ``symmetric`` averages the
    x → y and y → x directions (LaBSE adds them; contralign averages, as for CLIP).

    Row i's candidates are every key, then every hard negative flattened row-major; the
    reverse direction's are every query.

    Args:
        query: ``(B, D)``.
        key: ``(B, D)``.
        negatives: ``(B, K, D)`` or None.
        temperature: τ.
        margin: m, subtracted from the positive's cosine.
        symmetric: also key → query.
        query_ids, key_ids: ``(B,)`` or None; negative_ids: ``(B, K)`` or None.

    Returns:
        The float64 scalar loss.
    """
    batch = query.shape[0]
    candidates = [key[n] for n in range(batch)]
    ids = None if key_ids is None else [int(key_ids[n]) for n in range(batch)]
    if negatives is not None:
        for b in range(negatives.shape[0]):
            for k in range(negatives.shape[1]):
                candidates.append(negatives[b, k])
                if ids is not None:
                    assert negative_ids is not None
                    ids.append(int(negative_ids[b, k]))
    loss = _margin_direction(query, candidates, ids, temperature, margin)
    if not symmetric:
        return loss
    reverse_ids = None if query_ids is None else [int(query_ids[n]) for n in range(batch)]
    reverse = _margin_direction(key, [query[n] for n in range(batch)], reverse_ids,
                                temperature, margin)
    return (loss + reverse) / 2


def naive_distill_mse(student_source: Tensor, student_target: Tensor, teacher: Tensor
                      ) -> Tensor:
    """Reimers & Gurevych 2020 (arXiv:2004.09813, eq. 1) with the released code's scaling:

        1/2 · ( 1/(B·D) Σ_j Σ_d (M̂(s_j)_d − M(s_j)_d)²  +  1/(B·D) Σ_j Σ_d (M̂(t_j)_d − M(s_j)_d)² )

    ``M`` the teacher, ``M̂`` the student, s_j a source sentence and t_j its translation.
    """
    batch, dim = teacher.shape
    total = torch.zeros((), dtype=torch.float64)
    for student in (student_source, student_target):
        for j in range(batch):
            for d in range(dim):
                total = total + (student[j, d].double() - teacher[j, d].double()) ** 2 \
                    / (2 * batch * dim)
    return total
