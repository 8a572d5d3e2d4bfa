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
    eye = torch.eye(len(flat_labels), dtype=torch.bool, device=views.device)
    positive = (flat_labels[:, None] == flat_labels[None, :]) & ~eye  # (N, N)
    anchors = positive.any(dim=1)
    if not anchors.any():
        return (flat * 0.0).sum()  # no positive anywhere: 0, still attached to the graph
    # Only anchors with a positive: an all -inf row would give NaN gradients through logsumexp.
    sims = flat[anchors] @ flat.T / temperature  # (M, N)
    log_prob = sims.masked_fill(eye[anchors], float("-inf")).log_softmax(dim=1)  # (M, N)
    positive = positive[anchors]
    counts = positive.sum(dim=1)  # (M,) |P(i)| ≥ 1
    match variant:
        case "out":
            per_anchor = torch.where(positive, log_prob, 0.0).sum(dim=1) / counts
        case "in":
            positive_log_prob = log_prob.masked_fill(~positive, float("-inf"))
            per_anchor = positive_log_prob.logsumexp(dim=1) - counts.to(log_prob.dtype).log()
    loss = -per_anchor.mean()
    if base_temperature is not None:
        loss = loss * (temperature / base_temperature)
    return loss


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

    def forward(self, batch: Embedded) -> Tensor:
        batch.require("supcon", "labels")
        assert batch.labels is not None
        return supcon(views_with_labels(batch), batch.labels, temperature=self.temperature,
                      variant=self.variant, base_temperature=self.base_temperature)
