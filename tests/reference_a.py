"""Naive references for the multi-view, CLIP, SigLIP and SupCon objectives.

Written from the papers' formulas with explicit loops over anchors and candidates: no matrix
products, no masks, no cross_entropy, no logsumexp. Every value is a float64 torch scalar so that
autograd gives gradients to compare against the fast code.
"""

from __future__ import annotations

import math

import torch
from reference import naive_similarity
from torch import Tensor


def _zero() -> Tensor:
    return torch.zeros((), dtype=torch.float64)


def _log_ratio(anchor: Tensor, target: Tensor, candidates: list[Tensor], temperature: float,
               normalize: bool = True) -> Tensor:
    """log( exp(s(a, t)/τ) / Σ_c exp(s(a, c)/τ) ); ``candidates`` must include ``target``."""
    numerator = torch.exp(naive_similarity(anchor, target, normalize) / temperature)
    denominator = _zero()
    for candidate in candidates:
        denominator = denominator + torch.exp(
            naive_similarity(anchor, candidate, normalize) / temperature
        )
    return torch.log(numerator / denominator)


def naive_simclr(query: Tensor, key: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent (arXiv:2002.05709, Algorithm 1) on 2N interleaved embeddings.

    ``z_{2k} = query_k``, ``z_{2k+1} = key_k``; ``ℓ(i, j) = −log e^{s_ij/τ} / Σ_{m≠i} e^{s_im/τ}``;
    ``L = 1/(2N) Σ_k [ℓ(2k, 2k+1) + ℓ(2k+1, 2k)]``.
    """
    z: list[Tensor] = []
    for k in range(query.shape[0]):
        z += [query[k], key[k]]
    total = _zero()
    for k in range(query.shape[0]):
        for i, j in ((2 * k, 2 * k + 1), (2 * k + 1, 2 * k)):
            others = [z[m] for m in range(len(z)) if m != i]
            total = total - _log_ratio(z[i], z[j], others, temperature)
    return total / len(z)


def naive_multi_positive(views: Tensor, temperature: float) -> Tensor:
    """Each (item, view) against all B·V − 1 others; mean log-prob of its V − 1 positives."""
    batch, num_views, _ = views.shape
    total = _zero()
    for i in range(batch):
        for a in range(num_views):
            others = [views[j, b] for j in range(batch) for b in range(num_views)
                      if (j, b) != (i, a)]
            row = _zero()
            for b in range(num_views):
                if b != a:
                    row = row + _log_ratio(views[i, a], views[i, b], others, temperature)
            total = total - row / (num_views - 1)
    return total / (batch * num_views)


def naive_pairwise(views: Tensor, temperature: float) -> Tensor:
    """CMC full graph: mean over ordered view pairs (α ≠ β) of the α → β two-view NT-Xent.

    Anchor ``z_{i,α}``, target ``z_{i,β}``; candidates: view β of every item and view α of the
    other items.
    """
    batch, num_views, _ = views.shape
    total = _zero()
    for a in range(num_views):
        for b in range(num_views):
            if a == b:
                continue
            for i in range(batch):
                candidates = [views[j, b] for j in range(batch)]
                candidates += [views[j, a] for j in range(batch) if j != i]
                total = total - _log_ratio(views[i, a], views[i, b], candidates, temperature)
    return total / (num_views * (num_views - 1) * batch)


def naive_poly_view(views: Tensor, temperature: float, mean: str) -> Tensor:
    """Poly-view (arXiv:2403.05490): ratios against the positive and all other items' views.

    ``r_{αβ} = e^{s(a,p)} / (e^{s(a,p)} + Σ_{j≠i,γ} e^{s(a, z_{jγ})})``; geometric: −mean_β log r;
    arithmetic: −log mean_β r; mean over all anchors. Written from ``nt_xent``'s docstring, not
    from the paper's equations, which could not be read (see ``nt_xent``).
    """
    batch, num_views, _ = views.shape
    total = _zero()
    for i in range(batch):
        for a in range(num_views):
            negatives = [views[j, c] for j in range(batch) if j != i for c in range(num_views)]
            ratios = [
                torch.exp(_log_ratio(views[i, a], views[i, b], [views[i, b]] + negatives,
                                     temperature))
                for b in range(num_views) if b != a
            ]
            if mean == "geometric":
                total = total - sum((torch.log(r) for r in ratios), _zero()) / len(ratios)
            else:
                total = total - torch.log(sum(ratios, _zero()) / len(ratios))
    return total / (batch * num_views)


def naive_nt_xent(views: Tensor, temperature: float, aggregation: str, mean: str) -> Tensor:
    """The naive loop for ``nt_xent(views, aggregation=…, poly_view_mean=…)``."""
    if aggregation == "multi_positive":
        return naive_multi_positive(views, temperature)
    if aggregation == "pairwise":
        return naive_pairwise(views, temperature)
    return naive_poly_view(views, temperature, mean)


def naive_clip(query: Tensor, key: Tensor, logit_scale: float, label_smoothing: float = 0.0
               ) -> Tensor:
    """CLIP (arXiv:2103.00020): mean of the image→text and text→image cross-entropies.

    Target of row i: ``(1 − ε)·[j = i] + ε/B`` over the B columns.
    """
    batch = query.shape[0]

    def direction(rows: Tensor, columns: Tensor) -> Tensor:
        total = _zero()
        for i in range(batch):
            logits = [logit_scale * naive_similarity(rows[i], columns[j], True)
                      for j in range(batch)]
            denominator = sum((torch.exp(x) for x in logits), _zero())
            for j in range(batch):
                weight = (1 - label_smoothing) * (i == j) + label_smoothing / batch
                total = total - weight * torch.log(torch.exp(logits[j]) / denominator)
        return total / batch

    return (direction(query, key) + direction(key, query)) / 2


def naive_sigmoid(query: Tensor, key: Tensor, logit_scale: float, logit_bias: float) -> Tensor:
    """SigLIP (arXiv:2303.15343): −1/B Σ_i Σ_j log σ(z_ij (t·cos_ij + b)), σ(x) = 1/(1 + e^{−x})."""
    batch = query.shape[0]
    total = _zero()
    for i in range(batch):
        for j in range(batch):
            z = 1.0 if i == j else -1.0
            x = z * (logit_scale * naive_similarity(query[i], key[j], True) + logit_bias)
            total = total - torch.log(1 / (1 + torch.exp(-x)))
    return total / batch


def naive_supcon(views: Tensor, labels: Tensor, temperature: float, variant: str) -> Tensor:
    """SupCon (arXiv:2004.11362) Eq. 2 (L_out) or Eq. 3 (L_in) over all B·V anchors.

    Anchors without a positive are left out of the mean.
    """
    batch, num_views, _ = views.shape
    points = [(views[j, b], int(labels[j])) for j in range(batch) for b in range(num_views)]
    total, anchors = _zero(), 0
    for i, (anchor, label) in enumerate(points):
        others = [x for m, (x, _) in enumerate(points) if m != i]
        positives = [x for m, (x, y) in enumerate(points) if m != i and y == label]
        if not positives:
            continue
        anchors += 1
        log_ratios = [_log_ratio(anchor, p, others, temperature) for p in positives]
        if variant == "out":
            total = total - sum(log_ratios, _zero()) / len(positives)
        else:
            mean_ratio = sum((torch.exp(x) for x in log_ratios), _zero()) / len(positives)
            total = total - torch.log(mean_ratio)
    return total / anchors if anchors else total


def log1p_exp(x: float) -> float:
    """log(1 + e^x), for the known answers."""
    return math.log1p(math.exp(x))
