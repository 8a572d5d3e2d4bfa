"""From records to a step's batch: each role preprocessed by its tower, in DataLoader workers.

``collator_for(task, config)`` is the picklable ``data.BatchCollator`` that ``fit`` and ``check``
make batches with: one preprocessor per role (the preprocessor of the tower that embeds it),
the text or image views of the config, and the item ids of each preprocessed role (``keys``,
for a locked tower's feature cache). A locked tower's roles carry their raw items
(``core.items.Deferred``): the tower preprocesses only those its cache lacks. Under torchrun each
process preprocesses only its own rows (``shard``); ids, labels and scores stay whole-batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from contralign.core.dist import rank, world_size
from contralign.core.items import Deferred, item_key
from contralign.data import (
    BatchCollator,
    BatchExtras,
    BatchLoader,
    PairBatcher,
    Record,
    TextViews,
    text_id,
)
from contralign.data.batching import Position, Preprocess, caption_items
from contralign.data.image_views import ImageViews, build_image_views, is_image_view
from contralign.data.views import build_views
from contralign.training.config import TrainConfig
from contralign.training.task import ContrastiveTask


@dataclass(frozen=True)
class ItemKeys:
    """The extras hook that gives each preprocessed role its rows' item ids: ``{"keys":
    {"anchor": (n,), "positive": (n,), "negative.<k>": (n,)}}`` int64 (a locked tower caches
    its features by them). Views change the items, so a batch with views has no keys.

    With a ``teacher`` preprocessor (a model with a teacher), the anchors again for the
    teacher's tower: ``{"teacher": preprocessed anchors}`` and ``keys["teacher"]``."""

    def __call__(self, records: Sequence[Record], preprocess: Preprocess, position: Position,
                 rows: slice | None) -> dict[str, Any]:
        start, stop = (0, len(records)) if rows is None else (rows.start, rows.stop)
        mine = records[start:stop]
        anchors = caption_items(mine, "anchor", [r.anchor for r in mine], position)
        positives = caption_items(mine, "positive", [
            r.positive if r.positive is not None else r.anchor for r in mine], position)
        keys = {"anchor": _ids(anchors), "positive": _ids(positives)}
        for k in range(len(mine[0].negatives) if mine else 0):
            keys[f"negative.{k}"] = _ids([r.negatives[k] for r in mine])
        extras: dict[str, Any] = {"keys": keys}
        if isinstance(preprocess, Mapping) and "teacher" in preprocess:
            keys["teacher"] = keys["anchor"]
            extras["teacher"] = preprocess["teacher"](anchors)
        return extras


def collator_for(task: ContrastiveTask, config: TrainConfig, *, sharded: bool = True
                 ) -> BatchCollator:
    """The batches ``task`` trains on: roles preprocessed by their towers, the config's text
    or image views, item ids; with ``sharded``, only this process's rows are preprocessed."""
    model = task.model
    preprocess: dict[str, Any] = {}
    roles = ("anchor", "positive", "negative", *(("teacher",) if model.teacher else ()))
    for role in roles:
        locked = model.tower_name(role) in model.frozen and not config.views
        # A locked tower preprocesses only what its feature cache lacks (items with keys).
        preprocess[role] = Deferred() if locked else model.side(role).preprocessor
    hook: BatchExtras = ItemKeys()
    if config.views and is_image_view(config.views[0].get("name")):
        hook = ImageViews(build_image_views(config.views), task.views_only)
    elif config.views:
        hook = TextViews(tuple(build_views(config.views)), task.views_only)
    shard = (rank(), world_size()) if sharded else None
    return BatchCollator(preprocess, hook, shard=shard)


def loader_for(task: ContrastiveTask, config: TrainConfig, batcher: PairBatcher,
               device: torch.device) -> BatchLoader:
    """``collator_for``'s batches of ``batcher``, made in ``train.num_workers`` processes."""
    workers = config.train.num_workers
    return BatchLoader(batcher, collator_for(task, config), num_workers=workers,
                       persistent_workers=workers > 0, pin_memory=device.type == "cuda")


def to_device(batch: Any, device: torch.device) -> Any:
    """Every tensor of a (nested) batch on ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def _ids(items: Sequence[Any]) -> Tensor:
    return torch.tensor([text_id(item_key(item)) for item in items], dtype=torch.long)
