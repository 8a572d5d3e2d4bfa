"""The pairwise sigmoid loss of SigLIP (Zhai et al. 2023, arXiv:2303.15343).

Every one of the ``B × B`` pairs is an independent binary decision (match or not), so no softmax
normalises over the batch: ``loss = −1/B Σ_i Σ_j log σ(z_ij (t·x_i·y_j + b))``, with
``z_ij = +1`` on the diagonal and ``−1`` elsewhere, a learned scale ``t = exp(t')`` and bias ``b``.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Lt
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded, own_columns, take_rows
from contralign.objectives.tiled import DEFAULT_TILE_SIZE, check_tile_size, tiled_sigmoid_loss

# SigLIP initialises t' = log 10 and b = −10, so training starts near the prior of few positives.
SIGLIP_LOGIT_SCALE = 10.0
SIGLIP_LOGIT_BIAS = -10.0


def sigmoid_loss(
    query: Tensor,
    key: Tensor,
    *,
    logit_scale: float | Tensor,
    logit_bias: float | Tensor,
    normalize: bool = True,
    rows: slice | None = None,
) -> Tensor:
    """SigLIP's sigmoid loss over all ``B × B`` pairs (arXiv:2303.15343, Algorithm 1).

    ``logits_ij = t · cos(query_i, key_j) + b``;
    ``loss = −1/B Σ_ij log σ(z_ij · logits_ij)``, ``z = 2I − 1``. Summed over all pairs and divided
    by B (not B²), as in the paper; symmetric in the two sides.

    Args:
        query: ``(B, D)`` one side (images in SigLIP).
        key: ``(B, D)`` the other side (texts); row i matches query i.
        logit_scale: t, already exponentiated (a tensor to learn it).
        logit_bias: b (a tensor to learn it).
        normalize: compare by cosine (L2-normalise first) rather than by dot product.
        rows: the queries ``R`` of one process of a multi-process run
            (``contralign.training.distributed``): only their ``|R| × B`` block of pairs, summed
            and divided by ``|R|``. The ``|R|/B``-weighted sum over processes is the whole
            batch's loss.

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes.
    """
    if query.shape != key.shape or query.dim() != 2:
        raise ValueError(f"sigmoid_loss: query {tuple(query.shape)} and key {tuple(key.shape)} "
                         "must both be (B, D)")
    if normalize:
        query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    batch = query.shape[0]
    anchors = take_rows(query, rows)  # (R, D)
    logits = logit_scale * anchors @ key.T + logit_bias  # (R, B)
    own = own_columns(rows, batch, logits.device)  # (R, B): row i of R matches column start + i
    signs = 2 * own.to(logits.dtype) - 1  # +1 for the matching pair, −1 for every other
    return -F.logsigmoid(signs * logits).sum() / anchors.shape[0]


class SigLIPLoss(nn.Module):
    """``sigmoid_loss`` with a scale ``t = exp(t')`` and a bias ``b``, learned by default.

    Args:
        logit_scale: t, or its initial value when learned (kept as ``t' = log t``); SigLIP's 10.
        logit_bias: b, or its initial value when learned; SigLIP's −10.
        learnable: learn t' and b with the encoders (SigLIP does).
        tiled: compute the loss over ``tile_size × tile_size`` blocks of the logits
            (``tiled_sigmoid_loss``): same value and gradients, memory ``O(B·D + tile_size²)``.
        tile_size: rows and columns per block when tiled.

    Raises:
        ValueError: a scale that is not positive and finite, a bias that is not finite, or a
            tile size below 1.
    """

    def __init__(
        self, logit_scale: Annotated[float, Gt(0), Lt(math.inf)] = SIGLIP_LOGIT_SCALE,
        logit_bias: Annotated[float, Gt(-math.inf), Lt(math.inf)] = SIGLIP_LOGIT_BIAS,
        learnable: bool = True, tiled: bool = False,
        tile_size: Annotated[int, Ge(1)] = DEFAULT_TILE_SIZE,
    ) -> None:
        super().__init__()
        check_tile_size(tile_size, "siglip")
        self.tiled = tiled
        self.tile_size = tile_size
        if not 0 < logit_scale < math.inf:  # also rejects NaN
            raise ValueError(f"siglip: logit_scale must be finite and > 0, got {logit_scale}")
        if not math.isfinite(logit_bias):
            raise ValueError(f"siglip: logit_bias must be finite, got {logit_bias}")
        log_scale = torch.tensor(math.log(logit_scale))
        bias = torch.tensor(float(logit_bias))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("log_scale", log_scale)
            self.register_buffer("bias", bias)

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows`` (untiled only), that of those queries' pairs
        (``sigmoid_loss``)."""
        batch.require("siglip", "key")
        assert batch.key is not None
        if rows is not None and self.tiled:
            raise ValueError("siglip: rows needs tiled: false")
        if self.tiled:
            return tiled_sigmoid_loss(batch.query, batch.key, logit_scale=self.log_scale.exp(),
                                      logit_bias=self.bias, tile_size=self.tile_size)
        return sigmoid_loss(batch.query, batch.key, logit_scale=self.log_scale.exp(),
                            logit_bias=self.bias, rows=rows)
