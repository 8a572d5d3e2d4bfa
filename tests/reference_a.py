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


def naive_poly_view(views: Tensor, temperature: float) -> Tensor:
    """Poly-view, geometric (arXiv:2403.05490), transcribed with loops from a public
    re-implementation rather than from our reading: ``PVCLoss.forward`` with
    ``method="geometric"`` and its ``get_mask``, pakoromilas/Multi-View-CL, ``models/losses.py``
    (the paper's equations could not be read).

    There, with k items and m views, ``scores[j, α, n, k2] = cos(z_{j,α}, z_{k2,n}) / τ``; for
    each α and each β ≠ α, row j takes the m·k logits ``scores[j, α]`` with the entries
    ``k2 = j, n ≠ β`` masked out (the anchor itself and its other views), target ``(n, k2) =
    (β, j)``; ``F.cross_entropy`` (mean over the k rows); the mean over β (geometric), then over
    α and the samples.
    """
    k, m, _ = views.shape

    def score(j: int, alpha: int, n: int, k2: int) -> Tensor:
        return naive_similarity(views[j, alpha], views[k2, n], True) / temperature

    def masked(j: int, n: int, k2: int, beta: int) -> bool:
        return k2 == j and n != beta  # get_mask: the self-sample index, the views other than β

    losses_alpha = []
    for alpha in range(m):
        losses_alpha_beta = []
        for beta in range(m):
            if alpha == beta:
                continue
            cross_entropy = _zero()
            for j in range(k):
                kept = [score(j, alpha, n, k2) for n in range(m) for k2 in range(k)
                        if not masked(j, n, k2, beta)]
                denominator = _zero()
                for logit in kept:
                    denominator = denominator + torch.exp(logit)
                target = score(j, alpha, beta, j)
                cross_entropy = cross_entropy - torch.log(torch.exp(target) / denominator)
            losses_alpha_beta.append(cross_entropy / k)
        losses_alpha.append(sum(losses_alpha_beta, _zero()) / len(losses_alpha_beta))
    return sum(losses_alpha, _zero()) / m


def naive_nt_xent(views: Tensor, temperature: float, aggregation: str) -> Tensor:
    """The naive loop for ``nt_xent(views, aggregation=…)``."""
    if aggregation == "multi_positive":
        return naive_multi_positive(views, temperature)
    if aggregation == "pairwise":
        return naive_pairwise(views, temperature)
    return naive_poly_view(views, temperature)


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
