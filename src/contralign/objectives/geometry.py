"""Alignment and uniformity on the hypersphere (Wang & Isola 2020, arXiv:2005.10242).

    L_align = E_{(x, y) positive} ‖f(x) − f(y)‖₂^α
    L_unif  = log E_{x, x' i.i.d.} e^{−t ‖f(x) − f(x')‖₂²}

The training objective of the authors' reference code (``SsnL/align_uniform``) is
``align_w · L_align(x, y) + unif_w · (L_unif(x) + L_unif(y)) / 2`` with ``α = 2``, ``t = 2`` and
both weights 1; ``E`` over i.i.d. pairs is the mean over the ``B(B−1)/2`` distinct in-batch pairs
(``torch.pdist``). Embeddings are L2-normalised first unless ``normalize=False``.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Lt
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded


def _check_positive(name: str, **values: float) -> None:
    for key, value in values.items():
        if not 0 < value < math.inf:
            raise ValueError(f"{name}: {key} must be finite and > 0, got {value}")


def alignment_loss(x: Tensor, y: Tensor, *, alpha: float = 2.0, normalize: bool = True) -> Tensor:
    """Mean ``‖x_i − y_i‖₂^α`` over the positive pairs (arXiv:2005.10242, eq. 2).

    Args:
        x: ``(B, D)`` one side of the positive pairs.
        y: ``(B, D)`` the other side.
        alpha: α > 0 (2 in the paper).
        normalize: L2-normalise both sides first.

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes or α ≤ 0.
    """
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"alignment: x {tuple(x.shape)} and y {tuple(y.shape)} must both be "
                         "(B, D)")
    _check_positive("alignment", alpha=alpha)
    if normalize:
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    # Squared distance to the power α/2: no sqrt, so identical pairs keep a finite gradient (α=2).
    return (x - y).pow(2).sum(dim=-1).pow(alpha / 2).mean()


def uniformity_loss(x: Tensor, *, t: float = 2.0, normalize: bool = True) -> Tensor:
    """``log`` of the mean Gaussian potential ``e^{−t‖x_i − x_j‖²}`` over pairs i < j (eq. 4).

    Args:
        x: ``(B, D)`` embeddings, B ≥ 2.
        t: t > 0 (2 in the paper).
        normalize: L2-normalise first.

    Returns:
        The scalar loss (≤ 0).

    Raises:
        ValueError: not ``(B, D)`` with B ≥ 2, or t ≤ 0.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"uniformity: x {tuple(x.shape)} must be (B, D) with B >= 2")
    _check_positive("uniformity", t=t)
    if normalize:
        x = F.normalize(x, dim=-1)
    norms = x.pow(2).sum(dim=-1)  # (B,)
    squared = (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp_min(0)  # (B, B)
    rows, cols = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    potentials = -t * squared[rows, cols]  # (B(B−1)/2,)
    return torch.logsumexp(potentials, dim=0) - math.log(potentials.numel())


def align_uniform(
    query: Tensor,
    key: Tensor,
    *,
    align_weight: float = 1.0,
    unif_weight: float = 1.0,
    align_alpha: float = 2.0,
    unif_t: float = 2.0,
    normalize: bool = True,
) -> Tensor:
    """``align_weight · L_align + unif_weight · (L_unif(query) + L_unif(key)) / 2``.

    Args:
        query: ``(B, D)`` one view, B ≥ 2.
        key: ``(B, D)`` the other view.
        align_weight: weight of the alignment term (1 in the reference code).
        unif_weight: weight of the uniformity term (1).
        align_alpha: α of the alignment term (2).
        unif_t: t of the uniformity term (2).
        normalize: L2-normalise first.

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes, B < 2, or α or t ≤ 0.
    """
    align = alignment_loss(query, key, alpha=align_alpha, normalize=normalize)
    uniform = (uniformity_loss(query, t=unif_t, normalize=normalize)
               + uniformity_loss(key, t=unif_t, normalize=normalize)) / 2
    return align_weight * align + unif_weight * uniform


class AlignUniformLoss(nn.Module):
    """``align_uniform`` as a module (arXiv:2005.10242).

    Args:
        align_weight: weight of L_align (1).
        unif_weight: weight of the mean of both views' L_unif (1).
        align_alpha: α (2).
        unif_t: t (2).
        normalize: L2-normalise the embeddings first.

    Raises:
        ValueError: α or t not positive, or a weight that is negative or not finite.
    """

    def __init__(
        self, align_weight: Annotated[float, Ge(0), Lt(math.inf)] = 1.0,
        unif_weight: Annotated[float, Ge(0), Lt(math.inf)] = 1.0,
        align_alpha: Annotated[float, Gt(0), Lt(math.inf)] = 2.0,
        unif_t: Annotated[float, Gt(0), Lt(math.inf)] = 2.0, normalize: bool = True,
    ) -> None:
        super().__init__()
        _check_positive("align_uniform", align_alpha=align_alpha, unif_t=unif_t)
        for name, value in (("align_weight", align_weight), ("unif_weight", unif_weight)):
            if not 0 <= value < math.inf:
                raise ValueError(f"align_uniform: {name} must be finite and >= 0, got {value}")
        self.align_weight, self.unif_weight = align_weight, unif_weight
        self.align_alpha, self.unif_t, self.normalize = align_alpha, unif_t, normalize

    def forward(self, batch: Embedded) -> Tensor:
        batch.require("align_uniform", "key")
        assert batch.key is not None
        if batch.negatives is not None:
            raise ValueError("align_uniform: does not use hard negatives; unmap the negative "
                             "column(s)")
        return align_uniform(
            batch.query, batch.key, align_weight=self.align_weight, unif_weight=self.unif_weight,
            align_alpha=self.align_alpha, unif_t=self.unif_t, normalize=self.normalize,
        )
