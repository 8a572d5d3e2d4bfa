"""The task: towers + objective, ``task(batch) -> {"loss": total, ...}``; all the loop sees."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded


class ContrastiveTask(nn.Module):
    """One tower shared by anchors, positives and negatives (SimCSE-style when they coincide).

    Args:
        encoder: a tower, ``encoder(tokenized) -> (B, D)``.
        objective: ``objective(query, key, negatives, query_ids, key_ids, negative_ids)``.
        mask_duplicates: pass ids so duplicates of a positive are never negatives.
    """

    def __init__(self, encoder: nn.Module, objective: nn.Module, mask_duplicates: bool = True):
        super().__init__()
        self.encoder = encoder
        self.objective = objective
        self.mask_duplicates = mask_duplicates

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        query = self.encoder(batch["anchor"])  # (B, D)
        key = self.encoder(batch["positive"])  # (B, D); a second dropout view when texts repeat
        negatives = None
        if batch.get("negatives"):
            # (B, K, D): one forward per hard-negative column
            negatives = torch.stack([self.encoder(column) for column in batch["negatives"]], dim=1)
        embedded = Embedded(query, key, negatives, scores=batch.get("scores"),
                            labels=batch.get("labels"))
        if self.mask_duplicates:
            embedded.query_ids = batch["anchor_ids"]
            embedded.key_ids = batch["positive_ids"]
            embedded.negative_ids = batch.get("negative_ids")
        loss = self.objective(embedded)
        return {"loss": loss, "contrastive_loss": loss.detach()}
