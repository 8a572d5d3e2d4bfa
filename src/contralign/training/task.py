"""The task: towers + objective, ``task(batch) -> {"loss": total, ...}``; all the loop sees.

The plain path is ``forward``. The trainer's fast paths (the gradient cache in
``training.cached``, several processes in ``training.distributed``) use its parts instead:
``roles`` lists what the batch asks to embed, in the order the plain path embeds it;
``embed_role`` embeds one role (or some of its rows); ``assemble`` turns the embeddings of every
role into the objective's ``Embedded``; ``loss`` applies the objective. ``forward`` is exactly
``loss(assemble(embed(batch), batch))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from contralign.encoders.momentum import MomentumEncoder
from contralign.objectives.inputs import Embedded
from contralign.objectives.registry import Split

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class Role:
    """One tokenized input of a batch, and the tower that embeds it.

    Attributes:
        name: ``"anchor"``, ``"positive"``, ``"view.<v>"`` or ``"negative.<k>"``.
        inputs: the tokenized texts: tensors whose first dimension is the batch (B rows).
        momentum: embedded by the momentum copy of the tower (MoCo keys): no graph, no gradient.
    """

    name: str
    inputs: dict[str, Tensor]
    momentum: bool = False

    @property
    def size(self) -> int:
        """B, the number of rows."""
        return next(iter(self.inputs.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.inputs.values())).device

    def rows(self, start: int, stop: int) -> dict[str, Tensor]:
        """The inputs of rows ``start:stop``."""
        return {name: value[start:stop] for name, value in self.inputs.items()}

    def take(self, rows: Tensor) -> dict[str, Tensor]:
        """The inputs of the rows ``rows`` (an ``(n,)`` index tensor), in that order."""
        return {name: value[rows] for name, value in self.inputs.items()}


class ContrastiveTask(nn.Module):
    """One tower embeds every role (SimCSE-style when two views of one text meet).

    Args:
        encoder: a tower, ``encoder(tokenized) -> (B, D)``.
        objective: a module ``objective(Embedded) -> loss``.
        momentum: when set, keys come from a momentum copy of the tower (MoCo), updated by
            ``after_step`` with this momentum.
        views_only: the objective contrasts the anchor against all views (1-to-K), not pairs.
        mask_duplicates: pass ids so duplicates of a positive are never negatives.
        precision: ``"bf16"`` runs the towers under bfloat16 autocast; their embeddings are cast
            to float32, so the objective always computes in float32.
        split: how the objective is split over processes, as its registry entry declares.

    Raises:
        ValueError: an unknown precision.
    """

    def __init__(
        self, encoder: nn.Module, objective: nn.Module, *, momentum: float | None = None,
        views_only: bool = False, mask_duplicates: bool = True, precision: Precision = "fp32",
        split: Split = "full",
    ) -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.encoder = encoder
        self.objective = objective
        self.key_encoder = MomentumEncoder(encoder, momentum) if momentum is not None else None
        self.views_only = views_only
        self.mask_duplicates = mask_duplicates
        self.precision: Precision = precision
        self.split: Split = split

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        loss = self.loss(self.assemble(self.embed(batch), batch))
        return {"loss": loss, "contrastive_loss": loss.detach()}

    def roles(self, batch: dict[str, Any]) -> list[Role]:
        """What ``batch`` asks to embed, in the order the plain path embeds it (the order in
        which dropout draws its masks): anchor, positive (or the views), extra views, negatives.
        """
        roles = [Role("anchor", batch["anchor"])]
        if self.views_only:
            inputs = batch.get("views") or [batch["positive"]]
            roles += [Role(f"view.{v}", x) for v, x in enumerate(inputs)]
        else:
            roles.append(Role("positive", batch["positive"], momentum=self.key_encoder is not None))
            extra = batch.get("views", [])[2:]  # views 0 and 1 are the anchor and the positive
            roles += [Role(f"view.{v}", x) for v, x in enumerate(extra, start=2)]
        roles += [Role(f"negative.{k}", x) for k, x in enumerate(batch.get("negatives") or [])]
        return roles

    def embed_role(self, role: Role, inputs: dict[str, Tensor] | None = None) -> Tensor:
        """``(n, D)`` float32 embeddings of ``inputs`` (default: all of ``role.inputs``)."""
        tower = self.key_encoder if role.momentum and self.key_encoder is not None \
            else self.encoder
        inputs = role.inputs if inputs is None else inputs
        if self.precision == "fp32":
            return tower(inputs)
        with torch.autocast(role.device.type, dtype=torch.bfloat16):
            embeddings = tower(inputs)
        return embeddings.float()  # the objective computes in float32

    def embed(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``{role name: (B, D)}`` for every role of ``batch``, with graph."""
        return {role.name: self.embed_role(role) for role in self.roles(batch)}

    def assemble(self, embeddings: dict[str, Tensor], batch: dict[str, Any]) -> Embedded:
        """The objective's input from the ``(B, D)`` embedding of every role and the batch's
        ids, labels and scores."""
        query = embeddings["anchor"]  # (B, D)
        n_views = sum(name.startswith("view.") for name in embeddings)
        if self.views_only:
            views = torch.stack([embeddings[f"view.{v}"] for v in range(n_views)], dim=1)
            embedded = Embedded(query, views=views)  # (B, K, D)
        else:
            key = embeddings["positive"]  # (B, D); a second dropout view when texts repeat
            extra = [embeddings[f"view.{v}"] for v in range(2, 2 + n_views)]
            # (B, V, D): more than two views of each item
            stacked = torch.stack([query, key, *extra], dim=1) if extra else None
            embedded = Embedded(query, key, views=stacked)
        n_negatives = sum(name.startswith("negative.") for name in embeddings)
        if n_negatives:  # (B, K, D): one forward per hard-negative column
            embedded.negatives = torch.stack(
                [embeddings[f"negative.{k}"] for k in range(n_negatives)], dim=1)
        embedded.scores, embedded.labels = batch.get("scores"), batch.get("labels")
        if self.mask_duplicates:
            embedded.query_ids = batch["anchor_ids"]
            embedded.key_ids = batch["positive_ids"]
            embedded.negative_ids = batch.get("negative_ids")
        return embedded

    def loss(self, embedded: Embedded, rows: slice | None = None) -> Tensor:
        """The objective's loss; with ``rows``, that of those anchor rows only (objectives
        whose loss is a mean over rows, for a multi-process run).

        Raises:
            BatchError: the objective's settings do not fit the batch (a setting to change).
        """
        if rows is None:
            return self.objective(embedded)
        return self.objective(embedded, rows=rows)

    def after_step(self) -> None:
        """Called after each optimiser step: moves the momentum copy towards the tower."""
        if self.key_encoder is not None:
            self.key_encoder.update(self.encoder)
