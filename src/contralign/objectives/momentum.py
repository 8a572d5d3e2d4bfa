"""Momentum contrast: MoCo (He et al. 2019, arXiv:1911.05722) and MoCo v2 (Chen et al. 2020,
arXiv:2003.04297).

The query comes from the online tower; the key from a slowly moving copy of it (the *momentum
encoder*, ``θ_k ← m·θ_k + (1 − m)·θ_q``); the negatives are the keys of earlier batches, kept in a
FIFO queue. The queue decouples the number of negatives from the batch size.

How a trainer drives it (the objective never sees a model):

1. Build ``contralign.encoders.momentum.MomentumEncoder(tower, momentum=0.999)`` once.
2. Each step: ``query = tower(view_1)``, ``key = momentum_encoder(view_2)`` (no graph), then
   ``loss = MoCoLoss(...)(Embedded(query, key))``: the loss uses the current queue, then the keys
   are enqueued.
3. After ``optimizer.step()``: ``momentum_encoder.update(tower)``.

Paper defaults (MoCo v2): τ = 0.2, queue 65,536 keys, m = 0.999. MoCo v1 used τ = 0.07.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from annotated_types import Ge
from torch import Tensor, nn

from contralign.core.dist import world_size
from contralign.objectives.inputs import Embedded
from contralign.objectives.temperature import Temperature, check_temperature

PAPER_QUEUE_SIZE = 65_536  # MoCo v1/v2 on ImageNet
PAPER_TEMPERATURE = 0.2  # MoCo v2; v1 used 0.07


class KeyQueue(nn.Module):
    """A FIFO queue of ``size`` keys of width ``dim``, held in buffers (saved in ``state_dict``).

    Buffers: ``keys`` ``(size, dim)``, ``pointer`` (the slot the next key goes to) and ``count``
    (how many slots are filled, at most ``size``). A queue that is not yet full serves only its
    filled part. ``enqueue`` wraps around and overwrites the oldest keys.

    Args:
        dim: the key width D.
        size: the capacity.

    Raises:
        ValueError: a ``dim`` or ``size`` below 1.
    """

    keys: Tensor
    pointer: Tensor
    count: Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"key_queue: dim and size must be >= 1, got dim={dim}, size={size}")
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @property
    def dim(self) -> int:
        return self.keys.shape[1]

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append ``keys`` ``(B, D)`` (detached, cast to the queue's dtype and device).

        When ``B`` exceeds the capacity only the last ``size`` keys stay, as if they had been
        written one by one.

        Raises:
            ValueError: ``keys`` is not ``(B, dim)``.
        """
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"key_queue.enqueue: keys {tuple(keys.shape)} must be (B, {self.dim})")
        total = keys.shape[0]
        if total == 0:
            return
        start = int(self.pointer)
        if total > self.size:
            start = (start + total - self.size) % self.size
            keys = keys[-self.size:]
        slots = (start + torch.arange(keys.shape[0], device=self.keys.device)) % self.size
        self.keys[slots] = keys.detach().to(self.keys)
        self.pointer.fill_((int(self.pointer) + total) % self.size)
        self.count.fill_(min(int(self.count) + total, self.size))

    def negatives(self) -> Tensor:
        """``(n, D)`` the filled keys, oldest first (a copy: later enqueues do not change it)."""
        count = int(self.count)
        # The oldest filled slot is `count` slots behind the pointer.
        slots = (int(self.pointer) - count
                 + torch.arange(count, device=self.keys.device)) % self.size  # (n,)
        return self.keys[slots]


def moco_loss(query: Tensor, key: Tensor, queue: Tensor, temperature: float = PAPER_TEMPERATURE
              ) -> Tensor:
    """InfoNCE of each query against its key (the positive) and the queue (the negatives).

    As in the paper's Algorithm 1: ``logits = [q·k, q·queue] / τ`` with target 0, on
    L2-normalised vectors. The key and the queue are detached: no gradient reaches them (the key
    encoder is updated by momentum, not by backpropagation).

    Args:
        query: ``(B, D)`` from the online tower.
        key: ``(B, D)`` from the momentum encoder.
        queue: ``(n, D)`` negatives (``n`` may be 0: then the loss is 0).
        temperature: τ; 0.2 in MoCo v2 (arXiv:2003.04297), 0.07 in v1.

    Returns:
        The scalar loss, mean over the batch.

    Raises:
        ValueError: mismatched shapes, or a temperature that is not finite and > 0.
    """
    if query.dim() != 2 or query.shape != key.shape:
        raise ValueError(f"moco: query {tuple(query.shape)} and key {tuple(key.shape)} must "
                         "both be (B, D)")
    if queue.dim() != 2 or queue.shape[1] != query.shape[1]:
        raise ValueError(f"moco: queue {tuple(queue.shape)} must be (n, {query.shape[1]})")
    check_temperature("moco", temperature)
    query = F.normalize(query, dim=-1)
    key = F.normalize(key.detach(), dim=-1)
    negatives = F.normalize(queue.detach().to(query), dim=-1)
    positive = (query * key).sum(dim=-1, keepdim=True)  # (B, 1)
    negative = query @ negatives.T  # (B, n)
    logits = torch.cat([positive, negative], dim=1) / temperature  # (B, 1 + n); target: column 0
    target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target)


@torch.no_grad()
def gather_rows(rows: Tensor) -> Tensor:
    """``(ΣB_r, ...)``: every rank's rows in rank order, without gradient; ``rows`` alone in one
    process. Ranks may hold different numbers of rows."""
    if world_size() == 1:
        return rows
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    torch_dist.all_gather(counts, count)
    longest = int(max(int(c) for c in counts))
    padded = rows.new_zeros((longest, *rows.shape[1:]))  # all_gather needs equal shapes
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in counts]
    torch_dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(c)] for part, c in zip(parts, counts, strict=True)])


class MoCoLoss(nn.Module):
    """``moco_loss`` with its queue of negatives (arXiv:1911.05722; v2 arXiv:2003.04297).

    ``forward`` first computes the loss against the current queue, *then* enqueues this batch's
    keys (L2-normalised, detached), as in the paper's pseudocode: a key is never its own query's
    negative. Keys are enqueued only in training mode (``module.train()``), so an evaluation pass
    leaves the queue as it was; call the module once per training step. With more than one
    process the keys of all ranks are gathered (rank order) before enqueuing, so every rank holds
    the same queue. Until the queue holds keys, the loss has no negatives and is 0.

    The queue is saved in ``state_dict`` (and so in checkpoints). The paper's queue holds 65,536
    keys (``PAPER_QUEUE_SIZE``); the default here is smaller, for small datasets: a queue longer
    than an epoch holds older keys of the very items in the batch, which then act as false
    negatives.

    Args:
        dim: the embedding width D.
        queue_size: number of negative keys kept.
        temperature: τ (MoCo v2: 0.2).

    Raises:
        ValueError: a ``dim`` or ``queue_size`` below 1, or a bad temperature.
    """

    def __init__(self, dim: int, queue_size: Annotated[int, Ge(1)] = 4096,
                 temperature: Temperature = PAPER_TEMPERATURE) -> None:
        super().__init__()
        check_temperature("moco", temperature)
        if dim < 1 or queue_size < 1:
            raise ValueError(f"moco: dim and queue_size must be >= 1, got dim={dim}, "
                             f"queue_size={queue_size}")
        self.temperature = float(temperature)
        self.queue = KeyQueue(dim, queue_size)

    def forward(self, batch: Embedded) -> Tensor:
        batch.require("moco", "key")
        assert batch.key is not None
        loss = moco_loss(batch.query, batch.key, self.queue.negatives(), self.temperature)
        if self.training:  # after the loss: this batch's keys are negatives from the next step
            self.queue.enqueue(gather_rows(F.normalize(batch.key.detach(), dim=-1)))
        return loss
