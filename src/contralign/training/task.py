"""The task: towers + objective, ``task(batch) -> {"loss": total, ...}``; all the loop sees."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from contralign.encoders.momentum import MomentumEncoder
from contralign.objectives.inputs import Embedded


class ContrastiveTask(nn.Module):
    """One tower embeds every role (SimCSE-style when two views of one text meet).

    Args:
        encoder: a tower, ``encoder(tokenized) -> (B, D)``.
        objective: a module ``objective(Embedded) -> loss``.
        momentum: when set, keys come from a momentum copy of the tower (MoCo), updated by
            ``after_step`` with this momentum.
        views_only: the objective contrasts the anchor against all views (1-to-K), not pairs.
        mask_duplicates: pass ids so duplicates of a positive are never negatives.
    """

    def __init__(
        self, encoder: nn.Module, objective: nn.Module, *, momentum: float | None = None,
        views_only: bool = False, mask_duplicates: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.objective = objective
        self.key_encoder = MomentumEncoder(encoder, momentum) if momentum is not None else None
        self.views_only = views_only
        self.mask_duplicates = mask_duplicates

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        embedded = self._views_only(batch) if self.views_only else self._pairs(batch)
        if batch.get("negatives"):
            # (B, K, D): one forward per hard-negative column
            embedded.negatives = torch.stack([self.encoder(c) for c in batch["negatives"]], dim=1)
        embedded.scores, embedded.labels = batch.get("scores"), batch.get("labels")
        if self.mask_duplicates:
            embedded.query_ids = batch["anchor_ids"]
            embedded.key_ids = batch["positive_ids"]
            embedded.negative_ids = batch.get("negative_ids")
        loss = self.objective(embedded)
        return {"loss": loss, "contrastive_loss": loss.detach()}

    def _pairs(self, batch: dict[str, Any]) -> Embedded:
        query = self.encoder(batch["anchor"])  # (B, D)
        key_encoder = self.key_encoder if self.key_encoder is not None else self.encoder
        key = key_encoder(batch["positive"])  # (B, D); a second dropout view when texts repeat
        views = None
        extra = batch.get("views", [])[2:]
        if extra:  # (B, V, D): more than two views of each item
            views = torch.stack([query, key, *(self.encoder(v) for v in extra)], dim=1)
        return Embedded(query, key, views=views)

    def _views_only(self, batch: dict[str, Any]) -> Embedded:
        query = self.encoder(batch["anchor"])  # (B, D)
        inputs = batch.get("views") or [batch["positive"]]
        views = torch.stack([self.encoder(v) for v in inputs], dim=1)  # (B, K, D)
        return Embedded(query, views=views)

    def after_step(self) -> None:
        """Called after each optimiser step: moves the momentum copy towards the tower."""
        if self.key_encoder is not None:
            self.key_encoder.update(self.encoder)
