"""Several processes, one batch: data-parallel training with ``torch.distributed``.

Launch with ``torchrun --nproc_per_node N -m contralign train CONFIG.yaml`` (gloo on CPUs, NCCL
on GPUs; ``fit`` joins the process group when ``WORLD_SIZE > 1``). Every process reads the same
records and draws the same batches; ``train.batch_size`` is the global batch B, and process r
embeds its contiguous shard of it (``shard_of``). What each process then computes is chosen per
objective, so that the loss and every gradient are those of one process holding the whole batch
(up to floating-point summation order; dropout masks are drawn per shard, so with dropout on the
runs are equal in distribution, not bit for bit):

``"rows"`` (``info_nce``, ``clip``, ``siglip``, ``nt_xent``, ``supcon``, ``debiased``,
    ``hard_negative``, ``decoupled``, ``cwcl``, ``one_to_k``, ``conr``): every rank gathers all
    ranks' embeddings, then scores its own anchor rows against every candidate of the whole
    batch (target column = rank offset + row; the hard negatives of all ranks in the 1-process
    column order; the ids, labels and scores of the whole batch, so duplicates and positives on
    other ranks count too), so it holds ``B_r × B`` logits, not ``B × B``: adding processes
    divides the loss's memory. Its loss is its rows' share of the batch loss, whose
    ``B_r / B``-weighted sum over ranks is the 1-process loss: the mean of its rows (a symmetric
    loss: its queries against every key plus its keys against every query; NT-Xent: the anchors
    of all views of its items), SigLIP's block of pairs over B_r, SupCon's anchors over the
    number of the whole batch's anchors that have a positive (times ``B / B_r``).
``"full"`` (``align_uniform``, ``whitened_cse``, ``simsiam``, ``byol``, and any tiled loss):
    every rank gathers all embeddings and computes the whole batch's loss, identical on every
    rank. This is exact for any objective, including those that are not a sum of row terms
    (uniformity is the log of a mean over all pairs; WhitenedCSE whitens with the batch's
    statistics and shuffles drawn alike on every rank; SimSiam's and BYOL's predictor
    normalises the batch with BatchNorm, and they hold no ``B × B`` term); it costs N times the
    objective's arithmetic and its ``B × B`` terms on every rank. An objective that learns to
    score a subset of rows (a ``rows`` argument) can move to ``"rows"``.
``"local"`` (``moco``, ``swav``, ``distill_mse``): nothing is gathered; each rank computes the
    loss of its own rows. MoCo's negatives are its queue (the keys of all ranks are enqueued in
    rank order, so the queue is the 1-process queue), SwAV's Sinkhorn already sums over ranks,
    so its codes are the whole batch's, and distillation's row terms involve no other row.

The gradients work at the level of embeddings, as the gradient cache does (``training.cached``):
the objective is differentiated with respect to the (gathered) embeddings, each rank keeps the
gradient of its own rows, backpropagates it into its towers, and the parameter gradients are
averaged over ranks. With the per-rank losses below, that average is the 1-process gradient:

* ``"full"``: rank r's embedding gradient is ``N · ∂L/∂e_r``; ``(1/N) Σ_r N ∂L/∂e_r ∂e_r/∂θ``
  is ``∂L/∂θ``, and the objective's own parameters get ``∂L/∂τ`` on every rank.
* ``"rows"``, ``"local"``: rank r's loss is ``N · (B_r / B) · mean of its rows``; the embedding
  gradients are summed over ranks, so the average over ranks is ``∂L/∂θ`` for the towers and
  ``Σ_r (B_r / B) ∂mean_r/∂τ = ∂L/∂τ`` for the objective.

Only rank 0 writes the run directory (config, metrics, checkpoints, model) and shows progress.
The torch random state is the same on every rank at the start of each step (rank 0's), so a run
resumed from a checkpoint draws what an uninterrupted one would.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from contralign.core.dist import (
    all_gather_rows,
    all_reduce_sum,
    broadcast,
    is_distributed,
    rank,
    world_size,
)
from contralign.core.errors import ConfigError
from contralign.objectives.registry import Split
from contralign.training.task import ContrastiveTask, Role

Strategy = Split  # declared per objective in its registry entry (``ObjectiveInfo.split``)


@dataclass(frozen=True)
class Shard:
    """This rank's contiguous rows of a global batch.

    Attributes:
        rank: this process's rank.
        counts: rows of every rank, in rank order (they sum to the batch size B).
    """

    rank: int
    counts: tuple[int, ...]

    @property
    def world_size(self) -> int:
        return len(self.counts)

    @property
    def start(self) -> int:
        return sum(self.counts[: self.rank])

    @property
    def stop(self) -> int:
        return self.start + self.counts[self.rank]

    @property
    def size(self) -> int:
        return self.counts[self.rank]

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def weight(self) -> float:
        """``B_r / B``: this shard's share of a mean over the batch's rows."""
        return self.size / self.total


def shard_of(batch_size: int, rank_: int | None = None, world: int | None = None) -> Shard:
    """Split B rows into ``world`` contiguous shards, the first ``B mod world`` one row longer.

    Raises:
        ValueError: fewer rows than ranks (a rank would have nothing to embed).
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if batch_size < world:
        raise ValueError(f"a batch of {batch_size} rows cannot be split over {world} processes")
    base, extra = divmod(batch_size, world)
    return Shard(rank_, tuple(base + (r < extra) for r in range(world)))


# What a batch holds for every row even when each process preprocessed only its own rows.
WHOLE_BATCH = ("anchor_ids", "positive_ids", "negative_ids", "labels", "scores")


def slice_batch(batch: Any, shard: Shard) -> Any:
    """The shard's rows of a (nested) batch: its preprocessed roles, ids, labels and scores.

    A batch whose processes preprocessed only their own rows (``batch["rows"]``, see
    ``data.BatchCollator``) already holds this shard's items: only its whole-batch entries
    (``WHOLE_BATCH``) are sliced.

    Raises:
        ValueError: the batch's rows are not this shard's.
    """
    if isinstance(batch, dict) and batch.get("rows") is not None:
        if tuple(batch["rows"]) != (shard.start, shard.stop):
            raise ValueError(f"the batch holds rows {tuple(batch['rows'])}, this rank's are "
                             f"{(shard.start, shard.stop)}")
        return {key: _slice(value, shard) if key in WHOLE_BATCH else value
                for key, value in batch.items()}
    return _slice(batch, shard)


def _slice(batch: Any, shard: Shard) -> Any:
    if isinstance(batch, Tensor):
        return batch[shard.rows]
    if isinstance(batch, dict):
        return {key: _slice(value, shard) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_slice(value, shard) for value in batch)
    return batch


def loss_and_embedding_grads(
    task: ContrastiveTask, roles: Sequence[Role], embeddings: dict[str, Tensor],
    batch: dict[str, Any], shard: Shard, strategy: Strategy,
) -> tuple[Tensor, dict[str, Tensor | None]]:
    """From this rank's role embeddings to the batch loss and the gradient of each role.

    Backpropagates through the objective only: its own parameters (temperature, prototypes)
    receive their gradients here; the towers get theirs when the caller backpropagates the
    returned embedding gradients (``torch.autograd.backward(embedding, gradient)``).

    Args:
        task: the task (its ``assemble`` and ``loss``).
        roles: this rank's roles (their names, and which get a gradient).
        embeddings: ``{role: (B_r, D)}`` this rank's embeddings (any graph is ignored).
        batch: the whole batch (ids, labels and scores of all B rows).
        shard: this rank's rows.
        strategy: how the objective is split over ranks (module docstring).

    Returns:
        The loss of the whole batch (detached, the same on every rank), and per role the
        ``(B_r, D)`` gradient to backpropagate into this rank's embeddings (None for a role
        without gradient).
    """
    trainable = {role.name for role in roles if role.trainable}
    names = [role.name for role in roles]
    if shard.world_size == 1 or strategy == "local":
        leaves = {name: embeddings[name].detach().requires_grad_(name in trainable)
                  for name in names}
        meta = batch if shard.world_size == 1 else slice_batch(batch, shard)
        loss = task.loss(task.assemble(leaves, meta))
        _backward(loss * (shard.world_size * shard.weight))
        return all_reduce_sum(loss.detach() * shard.weight), _grads(leaves, trainable)
    leaves = _gather(embeddings, names, shard, trainable)
    embedded = task.assemble(leaves, batch)
    if strategy == "full":
        sync_random_state(next(iter(leaves.values())).device)  # the same draws on every rank
        loss = task.loss(embedded)
        _backward(loss)
        return loss.detach(), {
            name: None if grad is None else grad[shard.rows] * shard.world_size
            for name, grad in _grads(leaves, trainable).items()}
    loss = task.loss(embedded, rows=shard.rows)
    _backward(loss * (shard.world_size * shard.weight))
    row_grads = _grads(leaves, trainable)
    present = [name for name in names if name in trainable]
    summed = all_reduce_sum(torch.cat([  # (B, R·D): every rank's gradient of every row
        _or_zeros(row_grads[name], leaves[name]) for name in present], dim=1)) if present else None
    grads: dict[str, Tensor | None] = {}
    offset = 0
    for name in present:
        width = leaves[name].shape[1]
        grads[name] = None if row_grads[name] is None or summed is None \
            else summed[shard.rows, offset : offset + width]
        offset += width
    return all_reduce_sum(loss.detach() * shard.weight), grads


def _gather(embeddings: dict[str, Tensor], names: Sequence[str], shard: Shard,
            trainable: set[str]) -> dict[str, Tensor]:
    """``{role: (B, D)}`` leaves holding every rank's rows, gathered in one collective."""
    widths = [embeddings[name].shape[1] for name in names]
    local = torch.cat([embeddings[name].detach() for name in names], dim=1)  # (B_r, R·D)
    gathered = all_gather_rows(local, shard.counts)  # (B, R·D), rank order = batch order
    parts = gathered.split(widths, dim=1)
    return {name: part.contiguous().requires_grad_(name in trainable)
            for name, part in zip(names, parts, strict=True)}


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _backward(loss: Tensor) -> None:
    if loss.requires_grad:
        loss.backward()


def _grads(leaves: dict[str, Tensor], trainable: set[str]) -> dict[str, Tensor | None]:
    return {name: leaf.grad for name, leaf in leaves.items() if name in trainable}


def average_gradients(module: nn.Module) -> None:
    """Replace every parameter's gradient by its mean over ranks (one collective per dtype);
    a no-op in one process. A parameter with a gradient on some rank gets zeros elsewhere."""
    if not is_distributed():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    device = params[0].device
    present = all_reduce_sum(torch.tensor([p.grad is not None for p in params],
                                          dtype=torch.float32, device=device))
    used = [p for p, n in zip(params, present.tolist(), strict=True) if n > 0]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in used:
        by_dtype.setdefault(p.grad.dtype, []).append(p)  # type: ignore[union-attr]
    for group in by_dtype.values():
        flat = all_reduce_sum(torch.cat([p.grad.reshape(-1) for p in group]))  # type: ignore
        flat /= world_size()
        offset = 0
        for p in group:
            assert p.grad is not None
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank; a no-op in one process."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.copy_(broadcast(tensor))


def sync_random_state(device: torch.device) -> None:
    """Give every rank rank 0's torch random state (CPU, and ``device``'s when it is a GPU);
    a no-op in one process."""
    if not is_distributed():
        return
    torch.set_rng_state(broadcast(torch.get_rng_state()))
    if device.type == "cuda":
        torch.cuda.set_rng_state(broadcast(torch.cuda.get_rng_state(device)), device)


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as torchrun set it (``RANK``), 0 without torchrun; still known once
    the process group is gone."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(setting: str) -> torch.device:
    """``train.device`` as a device: ``cuda`` is ``cuda:LOCAL_RANK`` under torchrun.

    Raises:
        ConfigError: ``cuda`` without a GPU.
    """
    cuda = torch.cuda.is_available()
    if setting == "cpu" or (setting == "auto" and not cuda):
        return torch.device("cpu")
    if not cuda:
        raise ConfigError("train.device: cuda, but torch sees no GPU (use cpu or auto)")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(device: torch.device) -> bool:
    """Join the process group torchrun describes (``env://``: ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``): NCCL for a GPU, gloo for the CPU.

    Returns:
        True when this call created the group (the caller then destroys it with
        ``destroy_process_group``); False with one process or a group that already exists.
    """
    if is_distributed() or launched_world_size() <= 1:
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                  init_method="env://")
    return True


def destroy_process_group() -> None:
    if is_distributed():
        torch_dist.destroy_process_group()
