"""1-to-K contrastive learning (Nie et al., KDD 2024, arXiv:2406.18254).

One anchor (an image) is aligned with its K views (its captions in K languages) in a single
softmax, so that no language is the pivot and none is favoured. With anchors ``a_i`` ``(B, D)``,
views ``v_{i,k}`` ``(B, K, D)``, ``s = cos / τ``, the loss is the one the authors' released code
computes (BUAADreamer/CCRK, ``models/xvlm.py``, ``XVLMBase.get_unialign_contrastive_loss`` with its
default ``need_divm = 0``):

    L_i2t = −(1/B) Σ_i Σ_k log( e^{s(a_i, v_{i,k})} / Σ_j Σ_k' e^{s(a_i, v_{j,k'})} )
    L_t2i = −(1/(B·K)) Σ_i Σ_k log( e^{s(v_{i,k}, a_i)} / Σ_j e^{s(v_{i,k}, a_j)} )
    L     = (L_i2t + L_t2i) / (2K)

Each anchor row is one softmax over all ``B·K`` views whose target puts mass 1 on each of its own K
views (the other K − 1 views of the same item stay in the denominator), summed over those K and
averaged over the B anchors; each view row is a softmax over the B anchors, averaged over the
``B·K`` views. Dividing the sum by 2K averages the anchor → views term over its K views but divides
the views → anchor term, already a mean, by K once more: per (anchor, view) pair the views → anchor
direction weighs 1/K of the other. That is the authors' weighting, kept as released. (The paper's
own equation could not be read here; only its abstract could.) K = 1 is CLIP's symmetric InfoNCE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded
from contralign.objectives.temperature import (
    Temperature,
    check_temperature,
    register_log_scale,
    temperature_of,
)


def one_to_k_contrastive(
    query: Tensor,
    views: Tensor,
    *,
    temperature: float | Tensor = 0.07,
    symmetric: bool = True,
    rows: slice | None = None,
) -> Tensor:
    """1-to-K contrastive loss between anchors and their K aligned views (arXiv:2406.18254).

    Args:
        query: ``(B, D)`` anchors (e.g. images).
        views: ``(B, K, D)`` the K aligned views of each anchor (e.g. K languages' captions).
        temperature: τ (0.07 in the authors' configs); a tensor for a learned one.
        symmetric: the authors' two-direction loss ``(L_i2t + L_t2i) / (2K)``; otherwise the
            anchors → views direction alone, ``L_i2t / K`` (ours: the authors' code has no
            one-direction form).
        rows: the items ``R`` of one process of a multi-process run
            (``contralign.training.distributed``): their anchors against every view and (when
            symmetric) their views against every anchor, means over ``|R|`` anchors and
            ``|R|·K`` views; ``|R| × B·K`` and ``|R|·K × B`` logits. The ``|R|/B``-weighted sum
            over processes is the whole batch's loss.

    Returns:
        The scalar loss.

    Raises:
        ValueError: shapes other than ``(B, D)`` and ``(B, K, D)`` with K ≥ 1.
    """
    if (query.dim() != 2 or views.dim() != 3 or views.shape[0] != query.shape[0]
            or views.shape[2] != query.shape[1] or views.shape[1] < 1):
        raise ValueError(f"one_to_k: query {tuple(query.shape)} must be (B, D) and views "
                         f"{tuple(views.shape)} (B, K, D) with K >= 1")
    batch, k = views.shape[:2]
    anchors = F.normalize(query, dim=-1)
    flat = F.normalize(views, dim=-1).flatten(0, 1)  # (B·K, D); row i·K + k is v_{i,k}
    if rows is not None:
        return _one_to_k_rows(anchors, flat, k, temperature, symmetric, rows)
    logits = anchors @ flat.T / temperature  # (B, B·K)
    log_probs = F.log_softmax(logits, dim=1).view(batch, batch, k)  # (B, B, K)
    # [i, i, k] is anchor i's log-probability of its own view k.
    own = log_probs.diagonal(dim1=0, dim2=1)  # (K, B)
    anchors_to_views = -own.mean()  # L_i2t / K: the sum over K views, mean over B anchors, / K
    if not symmetric:
        return anchors_to_views
    reverse = F.log_softmax(logits.T, dim=1)  # (B·K, B)
    target = torch.arange(batch, device=query.device).repeat_interleave(k)  # (B·K,) = row // K
    views_to_anchors = F.nll_loss(reverse, target)  # L_t2i: mean over the B·K views
    # (L_i2t + L_t2i) / (2K), as the authors' code: the views → anchors mean is divided by K too.
    return (anchors_to_views + views_to_anchors / k) / 2


def _one_to_k_rows(anchors: Tensor, flat: Tensor, k: int, temperature: float | Tensor,
                   symmetric: bool, rows: slice) -> Tensor:
    """``one_to_k_contrastive`` of the items ``rows`` only, from unit ``(B, D)`` anchors and
    unit ``(B·K, D)`` views: the same terms, each averaged over these items' rows."""
    batch = anchors.shape[0]
    logits = anchors[rows] @ flat.T / temperature  # (R, B·K)
    log_probs = F.log_softmax(logits, dim=1).view(-1, batch, k)  # (R, B, K)
    own = log_probs[:, rows].diagonal(dim1=0, dim2=1)  # (K, R): row i's own views, item start + i
    anchors_to_views = -own.mean()
    if not symmetric:
        return anchors_to_views
    start, stop, _ = rows.indices(batch)
    reverse = F.log_softmax(flat[start * k : stop * k] @ anchors.T / temperature, dim=1)  # (R·K, B)
    target = torch.arange(start, stop, device=anchors.device).repeat_interleave(k)  # (R·K,)
    return (anchors_to_views + F.nll_loss(reverse, target) / k) / 2


class OneToKContrastiveLoss(nn.Module):
    """``one_to_k_contrastive`` with a fixed or learned temperature; reads ``query`` and
    ``views``.

    A learned temperature is kept as a log logit scale, clamped at ``log(100)`` as in CLIP.

    Args:
        temperature: τ, or its initial value when learned (0.07 in the authors' configs, where
            it is learned).
        learnable_temperature: learn τ with the towers.
        symmetric: both directions, weighted as the authors' code (see the module docstring).

    Raises:
        ValueError: a temperature that is not finite and > 0.
    """

    def __init__(
        self, temperature: Temperature = 0.07, learnable_temperature: bool = False,
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        check_temperature("one_to_k", temperature)
        self.symmetric = symmetric
        register_log_scale(self, temperature, learnable_temperature)

    @property
    def temperature(self) -> Tensor:
        return temperature_of(self)

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows``, that of those items (``one_to_k_contrastive``)."""
        batch.require("one_to_k", "views")
        assert batch.views is not None
        if batch.key is not None or batch.negatives is not None:
            raise ValueError("one_to_k: reads query (anchors) and views (their K aligned views) "
                             "only; put every aligned view in views, not in key or negatives")
        return one_to_k_contrastive(batch.query, batch.views, temperature=self.temperature,
                                    symmetric=self.symmetric, rows=rows)
