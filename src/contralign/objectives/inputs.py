"""What a task hands an objective module: the embeddings of one batch, by role."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Embedded:
    """The embeddings of one batch. Which fields an objective needs is its ``requires``.

    Attributes:
        query: ``(B, D)`` anchors (the first view).
        key: ``(B, D)`` positives (the second view), when there are pairs.
        negatives: ``(B, K, D)`` hard negatives.
        views: ``(B, V, D)`` all views of each item, for multi-view objectives (V ≥ 2).
        labels: ``(B,)`` int64 class ids (same label = positive).
        scores: ``(B,)`` float graded targets (similarity, or a regression target).
        query_ids: ``(B,)`` int64 ids of the anchor texts, for duplicate masking.
        key_ids: ``(B,)`` int64 ids of the positives (text or label).
        negative_ids: ``(B, K)`` int64 ids of the hard negatives.
        targets: ``(B, D)`` a locked teacher's embeddings of the anchors (the ``teacher``
            role), for distillation; no gradient.
    """

    query: Tensor
    key: Tensor | None = None
    negatives: Tensor | None = None
    views: Tensor | None = None
    labels: Tensor | None = None
    scores: Tensor | None = None
    query_ids: Tensor | None = None
    key_ids: Tensor | None = None
    negative_ids: Tensor | None = None
    targets: Tensor | None = None

    def require(self, objective: str, *fields: str) -> None:
        """Raise ``ValueError`` naming the objective when a needed field is missing."""
        missing = [name for name in fields if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{objective}: needs {', '.join(missing)} in the batch "
                             "(map the data's columns to those roles)")


def take_rows(tensor: Tensor, rows: slice | None) -> Tensor:
    """``tensor[rows]``, or ``tensor`` itself for all rows (None): no slice in the graph, so
    the gradient of a tensor used both as anchors and as candidates is summed as before, bit
    for bit."""
    return tensor if rows is None else tensor[rows]


def own_columns(rows: slice | None, count: int, device: torch.device) -> Tensor:
    """``(R, count)`` bool: True where row i of ``rows`` meets its own column, ``start + i``.

    An objective that scores only some anchor rows of the batch (``rows``, one process's share
    in a multi-process run) marks each row's target or self-similarity with it; with all rows
    (None) it is the identity.
    """
    columns = torch.arange(count, device=device)
    return columns[slice(None) if rows is None else rows, None] == columns[None, :]
