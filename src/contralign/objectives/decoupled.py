"""Decoupled contrastive learning (DCL and DCLW; Yeh et al. 2022, arXiv:2110.06848).

NT-Xent with the positive removed from the denominator (the paper's eq. 6), which removes the
negative–positive coupling that slows small-batch training:

    loss_i = −w_i · s(z_i, z_i⁺)/t + log Σ_{negatives n of i} e^{s(z_i, n)/t}

Every anchor of both views is used (symmetric, as the paper and lightly's ``DCLLoss`` do), and
its negatives are all other items of both views. DCLW weights the positive term with the negative
von Mises–Fisher weight ``w_i = 2 − B · softmax_j(s(z_j, z_j⁺)/σ)_i`` (mean 1, computed without
gradient as in lightly's ``negative_mises_fisher_weights``); DCL has ``w_i = 1``.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Gt, Lt
from torch import Tensor, nn

from contralign.core.errors import BatchError
from contralign.objectives.debiased import (
    CANDIDATES,
    Candidates,
    check_pairs,
    masked_logsumexp,
    pair_logits,
)
from contralign.objectives.inputs import Embedded
from contralign.objectives.temperature import Temperature, check_temperature


def von_mises_fisher_weights(query: Tensor, key: Tensor, sigma: float = 0.5) -> Tensor:
    """``(B,)`` DCLW positive weights ``2 − B · softmax_i(cos(q_i, k_i) / σ)``, without gradient.

    Args:
        query: ``(B, D)``.
        key: ``(B, D)``.
        sigma: σ, the weighting temperature (0.5 in the paper).
    """
    with torch.no_grad():
        cosine = (F.normalize(query, dim=-1) * F.normalize(key, dim=-1)).sum(-1)  # (B,)
        return 2.0 - query.shape[0] * torch.softmax(cosine / sigma, dim=0)


def _check(temperature: float, weight_sigma: float | None, candidates: str) -> None:
    check_temperature("decoupled", temperature)
    if weight_sigma is not None and not 0 < weight_sigma < math.inf:
        raise ValueError(f"decoupled: weight_sigma must be finite and > 0, got {weight_sigma}")
    if candidates not in CANDIDATES:
        raise ValueError(f"decoupled: candidates must be one of {CANDIDATES}, got {candidates!r}")


def decoupled_contrastive(
    query: Tensor,
    key: Tensor,
    *,
    negatives: Tensor | None = None,
    temperature: float = 0.1,
    weight_sigma: float | None = None,
    candidates: Candidates = "both_views",
    symmetric: bool = True,
    rows: slice | None = None,
) -> Tensor:
    """Decoupled contrastive loss (arXiv:2110.06848), optionally vMF-weighted (DCLW).

    Args:
        query: ``(B, D)`` first view (anchors).
        key: ``(B, D)`` second view (positives).
        negatives: ``(B, K, D)`` hard negatives: extra negatives of every query row.
        temperature: t (0.1, lightly's default).
        weight_sigma: σ of the DCLW weighting (the paper uses 0.5); None is plain DCL.
        candidates: ``"both_views"`` (the paper: 2B − 2 negatives) or ``"other_view"`` (B − 1).
        symmetric: also use the keys as anchors (the paper); the loss is the mean over anchors.
        rows: only the anchors of these pairs, the mean over them (``pair_logits``); the DCLW
            weights still come from the whole batch. The ``|R|/B``-weighted sum over the
            processes of a multi-process run is the whole loss.

    Returns:
        The scalar loss (it can be negative: the positive is not in the denominator).

    Raises:
        ValueError: mismatched shapes, a hyperparameter out of range, or an anchor with no
            negative (a batch of one pair).
    """
    check_pairs("decoupled", query, key, negatives)
    _check(temperature, weight_sigma, candidates)
    positive, logits, keep = pair_logits(query, key, negatives, temperature=temperature,
                                         candidates=candidates, symmetric=symmetric,
                                         rows=rows)
    if not bool(keep.any(dim=1).all()):
        raise BatchError("decoupled: every anchor needs a negative; got a batch of "
                         f"{query.shape[0]} pair(s) without enough candidates (raise "
                         "train.batch_size, or set train.drop_last: true)")
    if weight_sigma is not None:
        weights = von_mises_fisher_weights(query, key, weight_sigma)  # (B,), same both ways
        weights = weights if rows is None else weights[rows]  # (R,) a batch softmax's rows
        positive = positive * (torch.cat([weights, weights]) if symmetric else weights)
    return (masked_logsumexp(logits, keep) - positive).mean()


class DecoupledContrastiveLoss(nn.Module):
    """``decoupled_contrastive`` as a module: DCL, or DCLW with ``weight_sigma`` set.

    Args:
        temperature: t (0.1, lightly's default).
        weight_sigma: σ of the DCLW weighting (0.5 in the paper); None for plain DCL.
        candidates: ``"both_views"`` or ``"other_view"``.
        symmetric: also use the keys as anchors.

    Raises:
        ValueError: a hyperparameter out of range or an unknown ``candidates``.
    """

    def __init__(
        self, temperature: Temperature = 0.1,
        weight_sigma: Annotated[float, Gt(0), Lt(math.inf)] | None = None,
        candidates: Candidates = "both_views", symmetric: bool = True,
    ) -> None:
        super().__init__()
        _check(temperature, weight_sigma, candidates)
        self.temperature, self.weight_sigma = temperature, weight_sigma
        self.candidates: Candidates = candidates
        self.symmetric = symmetric

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows``, that of those pairs' anchors."""
        batch.require("decoupled", "key")
        assert batch.key is not None
        return decoupled_contrastive(
            batch.query, batch.key, negatives=batch.negatives, temperature=self.temperature,
            weight_sigma=self.weight_sigma, candidates=self.candidates, symmetric=self.symmetric,
            rows=rows,
        )
