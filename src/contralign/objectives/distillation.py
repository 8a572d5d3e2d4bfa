"""Multilingual knowledge distillation (Reimers & Gurevych 2020, arXiv:2004.09813).

A student learns to put a sentence and its translation where a fixed teacher puts the sentence:
for a source sentence s (English) and its translation t,

    L = ( MSE(student(s), teacher(s)) + MSE(student(t), teacher(s)) ) / 2

each MSE the mean over the batch's B·D elements. This is the authors' released code
(sentence-transformers' ``MSELoss``, an ``EmbedDistillLoss`` over the two text columns with the
teacher's embedding as the label of both, averaged over columns); the paper writes the same sum
of squared distances without the 1/(2D) factor.

In a model, the teacher is a locked tower mapped to the ``teacher`` role: it embeds the anchor
(the source sentence) once per item into ``Embedded.targets``, and its features are cached after
the first epoch; the student is the tower of the ``anchor`` and ``positive`` roles.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded


def distill_mse(query: Tensor, key: Tensor, targets: Tensor) -> Tensor:
    """The distillation loss of B (source, translation) pairs (arXiv:2004.09813).

    Args:
        query: ``(B, D)`` the student's embeddings of the source sentences.
        key: ``(B, D)`` the student's embeddings of their translations.
        targets: ``(B, D)`` the teacher's embeddings of the source sentences; taken as
            constants (the teacher never gets a gradient from this loss).

    Returns:
        The scalar loss ``(MSE(query, targets) + MSE(key, targets)) / 2``.

    Raises:
        ValueError: the three are not the same ``(B, D)`` shape (a teacher of another width
            needs a projection head on the student).
    """
    if query.dim() != 2 or query.shape != key.shape or query.shape != targets.shape:
        raise ValueError(f"distill_mse: student source {tuple(query.shape)}, student "
                         f"translation {tuple(key.shape)} and teacher {tuple(targets.shape)} "
                         "embeddings must all be (B, D)")
    teacher = targets.detach()
    return (F.mse_loss(query, teacher) + F.mse_loss(key, teacher)) / 2


class DistillMSELoss(nn.Module):
    """``distill_mse`` on a batch: ``query`` and ``key`` are the student's embeddings of the
    anchor (source) and the positive (translation), ``targets`` the teacher's of the anchor.
    It has no parameters."""

    def __init__(self) -> None:  # explicit: the registry reads its (empty) parameter list
        super().__init__()

    def forward(self, batch: Embedded) -> Tensor:
        batch.require("distill_mse", "key", "targets")
        assert batch.key is not None and batch.targets is not None
        if batch.negatives is not None:
            raise ValueError("distill_mse: learns from the teacher's embeddings, not from "
                             "negatives; unmap the negative column(s)")
        return distill_mse(batch.query, batch.key, batch.targets)
