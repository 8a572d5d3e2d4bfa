"""The task: towers + objective, ``task(batch) -> {"loss": total, ...}``; all the loop sees.

The plain path is ``forward``. The trainer's fast paths (the gradient cache in
``training.cached``, several processes in ``training.distributed``) use its parts instead:
``roles`` lists what the batch asks to embed, in the order the plain path embeds it;
``embed_role`` embeds one role (or some of its rows) with the tower the model maps it to;
``assemble`` turns the embeddings of every role into the objective's ``Embedded``; ``loss``
applies the objective. ``forward`` is exactly ``loss(assemble(embed(batch), batch))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from contralign.core.errors import BatchError
from contralign.encoders.model import AlignmentModel
from contralign.encoders.momentum import MomentumEncoder
from contralign.objectives.inputs import Embedded
from contralign.objectives.registry import Split

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class Role:
    """One preprocessed input of a batch, and the tower that embeds it.

    Attributes:
        name: ``"anchor"``, ``"positive"``, ``"view.<v>"``, ``"negative.<k>"``,
            ``"teacher"`` (the anchors again, for the teacher's tower), or ``"swapped.anchor"``
            / ``"swapped.positive"`` (a symmetric task's positives through the anchor's tower
            and anchors through the positive's).
        inputs: the preprocessed items: tensors whose first dimension is the batch (B rows).
        tower: the model role whose tower embeds it: ``"anchor"``, ``"positive"`` or
            ``"teacher"``.
        trainable: it gets a gradient; False for a momentum copy's keys (MoCo) and a locked
            tower without a head (nor a training head): embedded without a graph.
        keys: ``(B,)`` int64 item ids (a locked tower's feature cache), or None.
    """

    name: str
    inputs: dict[str, Tensor]
    tower: str = "anchor"
    trainable: bool = True
    keys: Tensor | None = None

    @property
    def size(self) -> int:
        """B, the number of rows."""
        return next(iter(self.inputs.values())).shape[0]

    @property
    def device(self) -> torch.device:
        """Where its tensors are (a locked tower's raw items: where its keys are)."""
        tensors = [v for v in self.inputs.values() if isinstance(v, Tensor)]
        if tensors:
            return tensors[0].device
        return self.keys.device if self.keys is not None else torch.device("cpu")

    def take(self, rows: Tensor | slice) -> dict[str, Tensor]:
        """The inputs of ``rows`` (an ``(n,)`` index tensor or a slice), in that order."""
        return {name: value[rows] for name, value in self.inputs.items()}


class ContrastiveTask(nn.Module):
    """The model's towers embed the roles of a batch; the objective scores them.

    Args:
        model: an ``AlignmentModel`` (towers + role map), or one tower for every role.
        objective: a module ``objective(Embedded) -> loss``.
        momentum: with one tower, take the keys from a momentum copy of it (MoCo), updated by
            ``after_step`` with this momentum.
        views_only: the objective contrasts the anchor against all views (1-to-K), not pairs;
            the views are embedded by the positive's tower.
        mask_duplicates: pass ids so duplicates of a positive are never negatives.
        precision: ``"bf16"`` runs the towers under bfloat16 autocast; their embeddings are cast
            to float32, so the objective always computes in float32.
        split: how the objective is split over processes, as its registry entry declares.
        bn_splits: shuffle-BN in one process (MoCo, arXiv:1911.05722 section 3.3): while
            training, each tower embeds the batch in this many groups of rows, so its BatchNorm
            normalises each group by its own statistics, as on that many devices; the key
            tower's groups are a random permutation of the rows (drawn from torch's generator,
            saved in checkpoints), so a query and its key are normalised with different rows.
            1: the whole batch at once.
        symmetric: also embed the positives with the anchor's tower and the anchors with the
            positive's, and score both directions (MoCo's symmetric loss, the authors' CIFAR
            demo and lightly's benchmark): the objective gets ``2B`` rows, each item's two
            directions on consecutive rows (so the rows of several processes, gathered in rank
            order, are those of one process), and its mean over rows is the mean of the two
            directions' losses.
        compile: embed through ``torch.compile`` of the model's ``embed`` (inductor): the
            forward and backward of every tower and training head run as generated kernels.
            Not bitwise eager: ``contralign check`` compares the two (the ``compiled`` path).

    Raises:
        ValueError: an unknown precision or a ``bn_splits`` below 1.
    """

    def __init__(
        self, model: nn.Module, objective: nn.Module, *, momentum: float | None = None,
        views_only: bool = False, mask_duplicates: bool = True, precision: Precision = "fp32",
        split: Split = "full", bn_splits: int = 1, symmetric: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        if bn_splits < 1:
            raise ValueError(f"bn_splits must be >= 1, got {bn_splits}")
        self.model = model if isinstance(model, AlignmentModel) \
            else AlignmentModel.single(model, momentum)
        self.objective = objective
        self.views_only = views_only
        self.mask_duplicates = mask_duplicates
        self.precision: Precision = precision
        self.split: Split = split
        self.bn_splits = bn_splits
        self.symmetric = symmetric
        # Only the training embeds are compiled: evaluation calls the model itself, eagerly,
        # so dev sets of any batch size cost no recompilation.
        self._embed = torch.compile(self.model.embed) if compile else self.model.embed

    @property
    def encoder(self) -> nn.Module:
        """The anchor's tower (a one-tower model's tower)."""
        return self.model.anchor_tower

    @property
    def key_encoder(self) -> MomentumEncoder | None:
        """The positive's tower when it is a momentum copy (MoCo keys), else None."""
        tower = self.model.tower_for("positive")
        return tower if isinstance(tower, MomentumEncoder) else None

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        loss = self.loss(self.assemble(self.embed(batch), batch))
        return {"loss": loss, "contrastive_loss": loss.detach()}

    def roles(self, batch: dict[str, Any]) -> list[Role]:
        """What ``batch`` asks to embed, in the order the plain path embeds it (the order in
        which dropout draws its masks): anchor, positive (or the views), a symmetric task's
        swapped pair, extra views, negatives, and the teacher's copy of the anchors when the
        model has a teacher (locked, in eval mode: it draws nothing)."""
        named = [("anchor", batch["anchor"], "anchor")]
        if self.views_only:
            inputs = batch.get("views") or [batch["positive"]]
            named += [(f"view.{v}", x, "positive") for v, x in enumerate(inputs)]
        else:
            named.append(("positive", batch["positive"], "positive"))
            if self.symmetric:
                named += [("swapped.anchor", batch["positive"], "anchor"),
                          ("swapped.positive", batch["anchor"], "positive")]
            extra = batch.get("views", [])[2:]  # views 0 and 1 are the anchor and the positive
            named += [(f"view.{v}", x, "anchor") for v, x in enumerate(extra, start=2)]
        named += [(f"negative.{k}", x, "positive")
                  for k, x in enumerate(batch.get("negatives") or [])]
        if self.model.teacher is not None:
            named.append(("teacher", batch["teacher"], "teacher"))
        keys = batch.get("keys") or {}
        return [Role(name, inputs, tower, self._trainable(tower), keys.get(name))
                for name, inputs, tower in named]

    def _trainable(self, tower_role: str) -> bool:
        return self.model.trains(self.model.tower_name(tower_role))

    def embed_role(self, role: Role, rows: Tensor | slice | None = None) -> Tensor:
        """``(n, D)`` float32 embeddings of ``role``'s ``rows`` (default: all of them, in
        ``bn_splits`` groups while training)."""
        if rows is None and self.bn_splits > 1 and self.training:
            return self._embed_in_groups(role)
        inputs = role.inputs if rows is None else role.take(rows)
        keys = role.keys if rows is None or role.keys is None else role.keys[rows]
        if self.precision == "fp32":
            return self._embed(role.tower, inputs, keys)
        with torch.autocast(role.device.type, dtype=torch.bfloat16):
            embeddings = self._embed(role.tower, inputs, keys)
        return embeddings.float()  # the objective computes in float32

    def _embed_in_groups(self, role: Role) -> Tensor:
        """Shuffle-BN: ``(B, D)``, each of ``bn_splits`` groups of rows embedded on its own;
        consecutive rows for the online towers, a random permutation for a momentum copy.

        Raises:
            BatchError: a group would hold a single row (BatchNorm needs two).
        """
        size = role.size
        if size < 2 * self.bn_splits:
            raise BatchError(f"objective.bn_splits: {self.bn_splits} groups of a batch of {size} "
                             "rows leave fewer than 2 rows in a group; lower it or raise "
                             "train.batch_size")
        shuffled = isinstance(self.model.tower_for(role.tower), MomentumEncoder)
        order = torch.randperm(size) if shuffled else torch.arange(size)
        order = order.to(role.device)
        parts = [self.embed_role(role, group) for group in order.tensor_split(self.bn_splits)]
        return torch.cat(parts)[order.argsort()]  # back in the batch's row order

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
        embedded.targets = embeddings.get("teacher")  # (B, D) the teacher's, of the anchors
        if self.mask_duplicates:
            embedded.query_ids = batch["anchor_ids"]
            embedded.key_ids = batch["positive_ids"]
            embedded.negative_ids = batch.get("negative_ids")
        return _with_swapped(embedded, embeddings) if self.symmetric else embedded

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
        """Called after each optimiser step: moves every momentum copy towards its tower."""
        self.model.after_step()


def _with_swapped(embedded: Embedded, embeddings: dict[str, Tensor]) -> Embedded:
    """A symmetric task's ``2B`` rows: item b's anchor -> positive direction on row 2b, its
    positive -> anchor direction on row 2b + 1 (queries ``(2B, D)``, keys ``(2B, D)``, the ids
    swapped likewise, labels and scores repeated). Views and negatives are not carried: the
    objectives that take ``symmetric`` (``ObjectiveInfo.swappable``) read queries and keys."""
    def pairs(first: Tensor | None, second: Tensor | None) -> Tensor | None:
        if first is None or second is None:
            return None
        return torch.stack([first, second], dim=1).flatten(0, 1)  # (B, 2, ...) -> (2B, ...)

    def twice(rows: Tensor | None) -> Tensor | None:
        return None if rows is None else rows.repeat_interleave(2, dim=0)

    query = pairs(embedded.query, embeddings["swapped.anchor"])
    assert query is not None
    return Embedded(query, pairs(embedded.key, embeddings["swapped.positive"]),
                    labels=twice(embedded.labels), scores=twice(embedded.scores),
                    query_ids=pairs(embedded.query_ids, embedded.key_ids),
                    key_ids=pairs(embedded.key_ids, embedded.query_ids),
                    targets=twice(embedded.targets))
