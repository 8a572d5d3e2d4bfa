"""Predicting one view's embedding from another's, without negatives: SimSiam and BYOL.

An online embedding ``z1`` goes through a small *predictor* MLP ``h``; the loss is the negative
cosine between ``h(z1)`` and the other view's embedding ``z2`` under a stop-gradient:
``D(p, z) = −mean_b cos(p_b, sg(z_b))``. The predictor and the stop-gradient are what keep the
embeddings from collapsing (SimSiam, Table 1 and §4; BYOL adds a momentum target).

* **SimSiam** (Chen & He 2021, arXiv:2011.10566): both views from the online tower (with its
  projection head), symmetric: ``(D(h(z1), z2) + D(h(z2), z1)) / 2``. The predictor is
  ``Linear → BN → ReLU → Linear``, a bottleneck (2048 → 512 → 2048 on ResNet-50).
* **BYOL** (Grill et al. 2020, arXiv:2006.07733): the target ``z2`` comes from a momentum copy
  of the tower and its head (``momentum_keys``: the trainer keeps it), and the predictor sits on
  the online side only: ``D(h(z1), z2)``. The paper symmetrises by also feeding each view to the
  other network; here each step has one direction (the views are drawn alike, so in expectation
  the same loss, with half the pairs). BYOL writes the loss as ``2 − 2·cos``; this is ``−cos``
  as in lightly's examples (the same gradient up to the factor 2).

The predictor lives in the objective, so it trains with the model and is never saved with the
tower (as the papers discard it). Its BatchNorm normalises over the rows the loss is given: the
whole batch on every path (the gradient cache and torchrun hand the objective every row).
"""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from annotated_types import Ge
from torch import Tensor, nn

from contralign.core.heads import ProjectionHead
from contralign.objectives.inputs import Embedded


def negative_cosine(predictions: Tensor, targets: Tensor) -> Tensor:
    """``−mean_b cos(predictions_b, sg(targets_b))``: the targets get no gradient.

    Args:
        predictions: ``(B, D)`` the predictor's outputs.
        targets: ``(B, D)`` the other view's embeddings.

    Raises:
        ValueError: shapes that differ or are not ``(B, D)``.
    """
    if predictions.dim() != 2 or predictions.shape != targets.shape:
        raise ValueError(f"negative_cosine: predictions {tuple(predictions.shape)} and targets "
                         f"{tuple(targets.shape)} must both be (B, D)")
    p = F.normalize(predictions, dim=-1)
    z = F.normalize(targets.detach(), dim=-1)
    return -(p * z).sum(dim=-1).mean()


def predictor(dim: int, hidden: int, batch_norm: bool = True) -> ProjectionHead:
    """SimSiam's / BYOL's predictor ``(B, dim) → (B, dim)``: ``Linear → [BN] → ReLU → Linear``
    (the first linear layer has a bias only without BatchNorm, as lightly's heads)."""
    return ProjectionHead(dim, [hidden, dim], batch_norm)


class SimSiamLoss(nn.Module):
    """SimSiam's symmetric loss with its predictor (module docstring).

    ``forward`` reads ``query`` and ``key`` (the first two views).

    Args:
        dim: the embedding width D (the head's output).
        hidden: the predictor's hidden width (SimSiam: a quarter of D, 512 for 2048; BYOL:
            4,096 for 256).
        batch_norm: BatchNorm in the predictor's hidden layer (both papers).

    Raises:
        ValueError: a width below 1.
    """

    symmetric = True
    name = "simsiam"

    def __init__(self, dim: int, hidden: Annotated[int, Ge(1)] = 512,
                 batch_norm: bool = True) -> None:
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ValueError(f"{self.name}: dim and hidden must be >= 1, got dim={dim}, "
                             f"hidden={hidden}")
        self.predictor = predictor(dim, hidden, batch_norm)

    def forward(self, batch: Embedded) -> Tensor:
        batch.require(self.name, "key")
        assert batch.key is not None
        loss = negative_cosine(self.predictor(batch.query), batch.key)
        if not self.symmetric:
            return loss
        return (loss + negative_cosine(self.predictor(batch.key), batch.query)) / 2


class BYOLLoss(SimSiamLoss):
    """BYOL's loss: the online view predicts the momentum target's (module docstring); the
    predictor's defaults as ``SimSiamLoss``'s (BYOL's own: ``hidden`` 4,096 on a 256-d head)."""

    symmetric = False
    name = "byol"

    # Its own signature: the registry reads each objective's defaults from its source.
    def __init__(self, dim: int, hidden: Annotated[int, Ge(1)] = 512,
                 batch_norm: bool = True) -> None:
        super().__init__(dim, hidden, batch_norm)
