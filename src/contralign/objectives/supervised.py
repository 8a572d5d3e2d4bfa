"""Supervised contrastive learning, SupCon (Khosla et al. 2020, arXiv:2004.11362).

Every embedding of the batch (all views of all items) is an anchor; every other embedding with
the same class label is a positive, and every other embedding is a candidate. With one label per
item and two views this is SimCLR's NT-Xent.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded
from contralign.objectives.temperature import Temperature, check_temperature

Variant = Literal["out", "in"]

# SupCon's temperature: 0.1, the paper's setting as recalled (not re-checked against its text)
# and pytorch-metric-learning's default; the official repository's scripts default to 0.07.
SUPCON_TEMPERATURE = 0.1


def _check_variant(variant: str) -> None:
    if variant not in get_args(Variant):
        raise ValueError(f"supcon: variant must be one of out, in, got {variant!r}")


def supcon(
    views: Tensor,
    labels: Tensor,
    *,
    temperature: float | Tensor = SUPCON_TEMPERATURE,
    variant: Variant = "out",
    base_temperature: float | None = None,
    normalize: bool = True,
    rows: slice | None = None,
) -> Tensor:
    """The SupCon loss over ``N = B·V`` embeddings.

    For anchor i: ``A(i)`` = all other embeddings, ``P(i)`` = those with i's label, and
    ``log p_ip = s_ip − log Σ_{a∈A(i)} e^{s_ia}`` with ``s = cos/τ``.

    - ``"out"`` (L_out, the paper's Eq. 2 and its recommended form):
      ``ℓ_i = −1/|P(i)| Σ_{p∈P(i)} log p_ip``.
    - ``"in"`` (L_in, Eq. 3): ``ℓ_i = −log( 1/|P(i)| Σ_{p∈P(i)} p_ip )``.

    The loss is the mean of ``ℓ_i`` over the anchors that have at least one positive; anchors
    with none are left out of the mean (as pytorch-metric-learning does; the official code
    counts them as 0 in the mean). It is 0 when no anchor has a positive.

    Args:
        views: ``(B, V, D)`` embeddings, or ``(B, D)`` for one view.
        labels: ``(B,)`` integer class ids; all views of an item share its label.
        temperature: τ (a tensor for a learned one); 0.1 as in the paper.
        variant: ``"out"`` or ``"in"``.
        base_temperature: if given, multiply the loss by ``τ / base_temperature``, as the official
            code does (its defaults τ = base = 0.07 make the factor 1). None: the paper's formula.
        normalize: compare by cosine (L2-normalise first) rather than by dot product.
        rows: the items ``R`` of one process of a multi-process run
            (``contralign.training.distributed``): only the anchors among their views, against
            every embedding (``V·|R| × N`` logits). The mean is still over the anchors of the
            whole batch that have a positive (M, counted from the labels), so the loss returned
            is ``(B/|R|) · Σ_{its anchors} ℓ_i / M``, whose ``|R|/B``-weighted sum over
            processes is the whole batch's loss.

    Returns:
        The scalar loss.

    Raises:
        ValueError: ``views`` not ``(B, D)`` or ``(B, V, D)``, ``labels`` not ``(B,)``, or an
            unknown variant.
    """
    _check_variant(variant)
    if views.dim() == 2:
        views = views[:, None]  # (B, 1, D)
    if views.dim() != 3 or labels.shape != views.shape[:1]:
        raise ValueError(f"supcon: views {tuple(views.shape)} must be (B, V, D) and labels "
                         f"{tuple(labels.shape)} (B,)")
    if normalize:
        views = F.normalize(views, dim=-1)
    batch, num_views, dim = views.shape
    flat = views.reshape(batch * num_views, dim)  # (N, D), row b·V + v
    flat_labels = labels.repeat_interleave(num_views)  # (N,)
    if rows is not None:
        loss = _supcon_rows(flat, flat_labels, temperature, variant, rows, num_views)
    else:
        eye = torch.eye(len(flat_labels), dtype=torch.bool, device=views.device)
        positive = (flat_labels[:, None] == flat_labels[None, :]) & ~eye  # (N, N)
        anchors = positive.any(dim=1)
        if not anchors.any():
            return (flat * 0.0).sum()  # no positive anywhere: 0, still attached to the graph
        # Only anchors with a positive: an all -inf row would give NaN gradients (logsumexp).
        sims = flat[anchors] @ flat.T / temperature  # (M, N)
        loss = -_per_anchor(sims, eye[anchors], positive[anchors], variant).mean()
    if base_temperature is not None:
        loss = loss * (temperature / base_temperature)
    return loss


def _per_anchor(sims: Tensor, own: Tensor, positive: Tensor, variant: Variant) -> Tensor:
    """``(M,)`` ``−ℓ_i`` of anchors with a positive, from their ``(M, N)`` logits, the
    anchor's own column and its positives' columns."""
    log_prob = sims.masked_fill(own, float("-inf")).log_softmax(dim=1)  # (M, N)
    counts = positive.sum(dim=1)  # (M,) |P(i)| ≥ 1
    match variant:
        case "out":
            return torch.where(positive, log_prob, 0.0).sum(dim=1) / counts
        case "in":
            positive_log_prob = log_prob.masked_fill(~positive, float("-inf"))
            return positive_log_prob.logsumexp(dim=1) - counts.to(log_prob.dtype).log()


def _supcon_rows(flat: Tensor, flat_labels: Tensor, temperature: float | Tensor,
                 variant: Variant, rows: slice, num_views: int) -> Tensor:
    """SupCon's share of the items ``rows`` (``supcon``), from ``(N, D)`` embeddings and
    ``(N,)`` labels: M, the anchors with a positive, is counted from the labels alone (an
    anchor has one when its label occurs twice among the N), so no ``N × N`` mask is built."""
    batch = flat.shape[0] // num_views
    start, stop, _ = rows.indices(batch)
    _, inverse, occurrences = torch.unique(flat_labels, return_inverse=True, return_counts=True)
    has_positive = occurrences[inverse] > 1  # (N,)
    total = int(has_positive.sum())
    if total == 0:
        return (flat * 0.0).sum()  # no positive anywhere: 0, still attached to the graph
    index = torch.arange(start * num_views, stop * num_views, device=flat.device)
    index = index[has_positive[index]]  # (A,) this share's anchors with a positive
    own = index[:, None] == torch.arange(flat.shape[0], device=flat.device)[None, :]  # (A, N)
    positive = (flat_labels[index, None] == flat_labels[None, :]) & ~own  # (A, N)
    sims = flat[index] @ flat.T / temperature  # (A, N)
    share = -_per_anchor(sims, own, positive, variant).sum() / total
    return share * (batch / (stop - start))


def views_with_labels(batch: Embedded) -> Tensor:
    """``(B, V, D)``: ``batch.views``, else ``query`` (and ``key`` when given) stacked."""
    if batch.views is not None:
        return batch.views
    if batch.key is None:
        return batch.query[:, None]  # (B, 1, D)
    return torch.stack([batch.query, batch.key], dim=1)  # (B, 2, D)


class SupConLoss(nn.Module):
    """``supcon`` on ``batch.labels`` with ``views``, or ``query`` and an optional ``key``.

    Args:
        temperature: τ; 0.1 as in SupCon (arXiv:2004.11362).
        variant: ``"out"`` (L_out, recommended by the paper) or ``"in"`` (L_in).
        base_temperature: scale the loss by ``τ / base_temperature`` as the official code does;
            None (default) keeps the paper's formula.

    Raises:
        ValueError: a temperature or base temperature that is not positive and finite, or an
            unknown variant.
    """

    def __init__(
        self, temperature: Temperature = SUPCON_TEMPERATURE, variant: Variant = "out",
        base_temperature: Temperature | None = None,
    ) -> None:
        super().__init__()
        check_temperature("supcon", temperature)
        if base_temperature is not None and not 0 < base_temperature < math.inf:
            raise ValueError("supcon: base_temperature must be finite and > 0, "
                             f"got {base_temperature}")
        _check_variant(variant)
        self.temperature = temperature
        self.variant: Variant = variant
        self.base_temperature = base_temperature

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows``, those items' share of it (``supcon``)."""
        batch.require("supcon", "labels")
        assert batch.labels is not None
        return supcon(views_with_labels(batch), batch.labels, temperature=self.temperature,
                      variant=self.variant, base_temperature=self.base_temperature, rows=rows)
