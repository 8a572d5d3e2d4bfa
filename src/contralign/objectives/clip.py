"""The symmetric contrastive loss of CLIP (arXiv:2103.00020) and ALIGN (arXiv:2102.05918).

B matching pairs (an image and its caption, a query and its answer) give a ``B × B`` matrix of
scaled cosine similarities; the loss is the mean of a softmax cross-entropy over its rows (side 1
→ side 2) and over its columns (side 2 → side 1), the matching pair being the target. The scale
(the inverse temperature) is learned.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Lt
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded
from contralign.objectives.temperature import (
    Temperature,
    check_temperature,
    log_scale_of,
    register_log_scale,
)

# CLIP initialises τ at 0.07 and clips the logit scale 1/τ at 100.
CLIP_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


def clip_loss(
    query: Tensor,
    key: Tensor,
    *,
    logit_scale: float | Tensor,
    label_smoothing: float = 0.0,
    normalize: bool = True,
    rows: slice | None = None,
) -> Tensor:
    """Symmetric InfoNCE between two sides of B pairs (CLIP, arXiv:2103.00020).

    ``logits = logit_scale · cos(query_i, key_j)``;
    ``loss = (CE(logits, I) + CE(logitsᵀ, I)) / 2``, each the mean over B rows, with target
    distribution ``(1 − ε)·δ_ij + ε/B`` under label smoothing ε (as ``F.cross_entropy``).

    Args:
        query: ``(B, D)`` one side (images in CLIP).
        key: ``(B, D)`` the other side (texts); row i matches query i.
        logit_scale: the inverse temperature ``1/τ`` (already exponentiated; a tensor to learn it).
        label_smoothing: ε in ``[0, 1)``. CLIP uses 0; ALIGN (arXiv:2102.05918) uses 0.1.
        normalize: compare by cosine (L2-normalise first) rather than by dot product.
        rows: the pairs ``R`` of one process of a multi-process run
            (``contralign.training.distributed``): its queries ``R`` against every key (rows
            ``R`` of the logits) and its keys ``R`` against every query (columns ``R``), each
            the mean over ``|R|``; only ``2·|R| × B`` logits are held. The ``|R|/B``-weighted
            sum over processes is the whole batch's loss.

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes, or a label smoothing outside ``[0, 1)``.
    """
    if query.shape != key.shape or query.dim() != 2:
        raise ValueError(f"clip_loss: query {tuple(query.shape)} and key {tuple(key.shape)} "
                         "must both be (B, D)")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"clip_loss: label_smoothing must be in [0, 1), got {label_smoothing}")
    if normalize:
        query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    target = torch.arange(query.shape[0], device=query.device)
    if rows is None:
        logits = logit_scale * query @ key.T  # (B, B); the target of row i is column i
        forward = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        backward = F.cross_entropy(logits.T, target, label_smoothing=label_smoothing)
        return (forward + backward) / 2
    target = target[rows]  # (R,) each row's own column of the whole batch
    row_logits = logit_scale * query[rows] @ key.T  # (R, B): rows R of the logits
    column_logits = logit_scale * key[rows] @ query.T  # (R, B): columns R, transposed
    forward = F.cross_entropy(row_logits, target, label_smoothing=label_smoothing)
    backward = F.cross_entropy(column_logits, target, label_smoothing=label_smoothing)
    return (forward + backward) / 2


class CLIPLoss(nn.Module):
    """``clip_loss`` with its logit scale kept as a (learned) log, ``log(1/τ)``.

    The scale used is ``exp(min(log_scale, log(max_logit_scale)))``: past the clamp it gets no
    gradient, as CLIP clips it at 100. ALIGN (arXiv:2102.05918) instead initialises τ at 1.0 and
    uses label smoothing 0.1: ``CLIPLoss(temperature=1.0, label_smoothing=0.1)``.

    Args:
        temperature: τ, or its initial value when learned; CLIP's 0.07.
        learnable_temperature: learn τ with the encoders (CLIP and ALIGN do).
        max_logit_scale: the largest ``1/τ`` used; CLIP's 100.
        label_smoothing: ε; 0 as in CLIP.

    Raises:
        ValueError: a temperature or maximum scale that is not positive and finite, or a label
            smoothing outside ``[0, 1)``.
    """

    def __init__(
        self, temperature: Temperature = CLIP_TEMPERATURE, learnable_temperature: bool = True,
        max_logit_scale: Annotated[float, Gt(0), Lt(math.inf)] = MAX_LOGIT_SCALE,
        label_smoothing: Annotated[float, Ge(0), Lt(1)] = 0.0,
    ) -> None:
        super().__init__()
        check_temperature("clip", temperature)
        if not 0 < max_logit_scale < math.inf:
            raise ValueError(f"clip: max_logit_scale must be finite and > 0, got {max_logit_scale}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"clip: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.max_logit_scale = max_logit_scale
        self.label_smoothing = label_smoothing
        register_log_scale(self, temperature, learnable_temperature)

    @property
    def logit_scale(self) -> Tensor:
        """``1/τ``, clamped at ``max_logit_scale``."""
        return log_scale_of(self).clamp(max=math.log(self.max_logit_scale)).exp()

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows``, that of those pairs in both directions (``clip_loss``)."""
        batch.require("clip", "key")
        assert batch.key is not None
        return clip_loss(batch.query, batch.key, logit_scale=self.logit_scale,
                         label_smoothing=self.label_smoothing, rows=rows)
