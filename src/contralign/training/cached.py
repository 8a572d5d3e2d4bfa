"""The gradient cache: the exact gradient of a large batch with the memory of one chunk
(GradCache; Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", arXiv:2101.06983).

A contrastive loss couples every row of the batch, so the batch cannot simply be split into
accumulated micro-batches. But the loss depends on the towers only through the embeddings, so
the chain rule splits the step in two:

1. Embed every role (anchor, positive, views, negatives) in chunks **without a graph** and keep
   only the ``(B, D)`` embeddings; record the random state before each chunk.
2. Compute the loss on those embeddings (leaf tensors that require grad) and backpropagate it to
   them: this gives ``∂L/∂e`` for every row, and the objective's own parameters (temperature,
   prototypes) their gradients.
3. Re-embed each chunk **with a graph**, with the random state of its first pass restored, and
   backpropagate the cached ``∂L/∂e`` of its rows: ``torch.autograd.backward(e_chunk, g_chunk)``.

Peak activation memory is that of one chunk; the price is a second forward pass.

What equality holds (``tests/test_cached.py`` proves each):

* **Dropout off**: the cached step equals the plain step (``task(batch)["loss"].backward()``),
  loss and every gradient, for any chunk size, up to float summation order.
* **Dropout on, one chunk per role** (``chunk_size >= B``): the first pass draws the same masks
  as the plain path, in the same order (anchor, positive, views, negatives), so the cached step
  equals the plain one. With anchor and positive the same text (SimCSE), they still get two
  different dropout views, as in the plain path.
* **Dropout on, several chunks**: the masks are drawn chunk by chunk, so they are not the plain
  path's masks (the plain path draws one mask for the whole batch); the cached step equals a
  plain step that embeds in the same chunks. What the cache guarantees for any chunking is
  that its two passes agree: the second pass replays every chunk's random state, so it
  reproduces the first pass's embeddings exactly, and the gradient it backpropagates is the
  gradient of the loss it reported.

After the step the random state is where the first pass and the loss left it, so the next step
draws what it would after a plain step. MoCo's keys come from the momentum tower without a
graph and are embedded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from contralign.encoders.lengths import longest_first
from contralign.training.distributed import (
    Shard,
    Strategy,
    average_gradients,
    loss_and_embedding_grads,
    shard_of,
    slice_batch,
)
from contralign.training.task import ContrastiveTask, Role

ChunkSize = int | Literal["auto"]
# Share of the free memory that chunk_size: auto plans to fill with one chunk's activations.
AUTO_MEMORY_FRACTION = 0.5
# chunk_size: auto when the free memory cannot be read.
FALLBACK_CHUNK_SIZE = 32


@dataclass(frozen=True)
class RandomState:
    """The torch random state that dropout draws from: the CPU generator's, and the GPU's
    when the inputs live on one."""

    cpu: Tensor
    cuda: Tensor | None = None
    device: torch.device | None = None

    @classmethod
    def capture(cls, device: torch.device) -> RandomState:
        if device.type == "cuda":
            return cls(torch.get_rng_state(), torch.cuda.get_rng_state(device), device)
        return cls(torch.get_rng_state())

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None and self.device is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@dataclass
class FirstPass:
    """What the first pass keeps: ``(B, D)`` embeddings without graph, and for every role its
    chunks (row indices) and the random state before each."""

    embeddings: dict[str, Tensor]
    states: dict[str, list[RandomState]]
    chunks: dict[str, list[Tensor]]


def chunk_rows(role: Role, chunk_size: int) -> list[Tensor]:
    """The row indices of each chunk of ``role``: ``(n,)`` int64 tensors covering every row once.

    With more than one chunk, rows are taken longest first (by attention mask), so each chunk
    holds texts of similar length and a tower that trims padding to the chunk's longest row
    computes few padded positions; a chunk of rows in batch order would pay the whole batch's
    longest text on nearly every chunk. One chunk keeps the batch order: it is the plain path,
    dropout masks included.
    """
    mask = role.inputs.get("attention_mask")
    if role.size <= chunk_size or mask is None or mask.dim() != 2:
        order = torch.arange(role.size, device=role.device)
    else:
        order = longest_first(mask)
    return list(order.split(chunk_size))


@torch.no_grad()
def embed_without_graph(task: ContrastiveTask, roles: Sequence[Role], chunk_size: int
                        ) -> FirstPass:
    """Step 1: every role in chunks of ``chunk_size`` rows, no graph, in the plain path's order.

    Raises:
        ValueError: a chunk size below 1.
    """
    if chunk_size < 1:
        raise ValueError(f"grad_cache: chunk_size must be >= 1, got {chunk_size}")
    embeddings: dict[str, Tensor] = {}
    states: dict[str, list[RandomState]] = {}
    chunks = {role.name: chunk_rows(role, chunk_size) for role in roles}
    for role in roles:
        states[role.name], parts = [], []
        for rows in chunks[role.name]:
            states[role.name].append(RandomState.capture(role.device))
            parts.append(task.embed_role(role, rows))
        embeddings[role.name] = _in_batch_order(parts, chunks[role.name])  # (B, D)
    return FirstPass(embeddings, states, chunks)


def _in_batch_order(parts: Sequence[Tensor], chunks: Sequence[Tensor]) -> Tensor:
    """``(B, D)`` from each chunk's ``(n, D)`` rows: row ``chunks[c][j]`` is ``parts[c][j]``."""
    stacked = torch.cat(list(parts))
    return stacked[torch.cat(list(chunks)).argsort()]


def backpropagate_chunks(
    task: ContrastiveTask, roles: Sequence[Role], first: FirstPass,
    grads: dict[str, Tensor | None],
) -> dict[str, Tensor]:
    """Step 3: re-embed each chunk with a graph, its first-pass random state restored, and
    backpropagate its rows of ``grads`` into the towers (gradients accumulate in ``.grad``).

    Returns:
        ``{role: (B, D)}`` the second pass's embeddings (detached), for roles with a gradient.
    """
    second: dict[str, Tensor] = {}
    for role in roles:
        grad = grads.get(role.name)
        if not role.trainable or grad is None:
            continue
        parts = []
        chunks = first.chunks[role.name]
        for rows, state in zip(chunks, first.states[role.name], strict=True):
            state.restore()  # the same dropout masks as the first pass
            embeddings = task.embed_role(role, rows)  # (n, D), with graph
            torch.autograd.backward(embeddings, grad[rows])
            parts.append(embeddings.detach())
        second[role.name] = _in_batch_order(parts, chunks)
    return second


def accumulate_gradients(
    task: ContrastiveTask, batch: dict[str, Any], *, chunk_size: ChunkSize | None = None,
    strategy: Strategy | None = None,
) -> dict[str, float]:
    """One step's gradients of the whole batch, accumulated into ``.grad`` of every parameter.

    One process, no cache: the plain path, ``task(batch)["loss"].backward()``. Otherwise the
    step goes through the embeddings: this rank embeds its shard of the batch (all of it in one
    process), with a graph or, with a chunk size, through the gradient cache;
    ``training.distributed.loss_and_embedding_grads`` gives the loss and the embedding
    gradients; they are backpropagated into the towers; the parameter gradients are averaged
    over ranks.

    Args:
        task: the task.
        batch: the whole (global) batch, on the task's device.
        chunk_size: rows per chunk for the gradient cache, ``"auto"`` to size chunks from the
            free memory, None for no cache.
        strategy: how the objective is split over ranks; default the task's (its registry
            entry's declaration).

    Returns:
        ``{"loss": …, "contrastive_loss": …}`` of the whole batch (the same on every rank).
    """
    shard = shard_of(int(batch["anchor_ids"].shape[0]))
    if chunk_size is None and shard.world_size == 1:
        losses = task(batch)
        losses["loss"].backward()
        return {name: float(value.detach()) for name, value in losses.items()}
    strategy = task.split if strategy is None else strategy
    local = slice_batch(batch, shard) if shard.world_size > 1 else batch
    roles = task.roles(local)
    if chunk_size is None:
        embeddings = {role.name: task.embed_role(role) for role in roles}  # with graph
        loss, grads = loss_and_embedding_grads(task, roles, embeddings, batch, shard, strategy)
        pairs = [(embeddings[name], grad) for name, grad in grads.items() if grad is not None]
        if pairs:
            torch.autograd.backward([e for e, _ in pairs], [g for _, g in pairs])
    else:
        loss = _cached(task, roles, batch, shard, strategy, chunk_size)
    average_gradients(task)
    return {"loss": float(loss), "contrastive_loss": float(loss)}


def _cached(task: ContrastiveTask, roles: Sequence[Role], batch: dict[str, Any], shard: Shard,
            strategy: Strategy, chunk_size: ChunkSize) -> Tensor:
    if chunk_size == "auto":
        chunk_size = auto_chunk_size(task, roles)
    first = embed_without_graph(task, roles, chunk_size)
    loss, grads = loss_and_embedding_grads(task, roles, first.embeddings, batch, shard,
                                           strategy)
    after = RandomState.capture(roles[0].device)  # where plain forward + loss leave it
    backpropagate_chunks(task, roles, first, grads)
    after.restore()
    return loss


def activation_bytes_per_row(tower: nn.Module, length: int, precision: str) -> int:
    """A conservative estimate of the activation memory one sequence of ``length`` tokens holds
    while its graph is alive.

    Transformers (a ``model.config`` with layers, width and heads): per layer and token,
    ``34·h + 5·a·s`` bytes at 16 bits (Korthikanti et al. 2022, arXiv:2205.05198, for a block
    with a 4h MLP, counting attention scores, softmax, dropout masks and MLP activations),
    doubled for float32. Other towers (static vectors): ``16·D`` bytes a token.
    """
    config = getattr(getattr(tower, "model", None), "config", None)
    width = 2 if precision == "bf16" else 4
    layers = getattr(config, "num_hidden_layers", None)
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    if layers and hidden and heads:
        intermediate = getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden
        per_token = 34 * hidden * max(1.0, intermediate / (4 * hidden)) + 5 * heads * length
        return int(layers * length * per_token * width / 2) + 1
    dim = int(getattr(tower, "dim", 1024))
    return 16 * dim * length + 1


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of a GPU (``torch.cuda.mem_get_info``), else the host's ``MemAvailable``
    (``/proc/meminfo``); None when it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def auto_chunk_size(task: ContrastiveTask, roles: Sequence[Role]) -> int:
    """The rows per chunk whose estimated activations (``activation_bytes_per_row`` at the
    longest role's padded length) fill ``AUTO_MEMORY_FRACTION`` of the free memory; between 1
    and the batch size. ``FALLBACK_CHUNK_SIZE`` when the free memory cannot be read."""
    rows = max(role.size for role in roles)
    free = free_memory_bytes(roles[0].device)
    if free is None:
        return min(rows, FALLBACK_CHUNK_SIZE)
    length = max(_length(role) for role in roles)
    per_row = activation_bytes_per_row(task.encoder, length, task.precision)
    return max(1, min(rows, int(free * AUTO_MEMORY_FRACTION) // per_row))


def _length(role: Role) -> int:
    ids = role.inputs.get("input_ids", next(iter(role.inputs.values())))
    return int(ids.shape[1]) if ids.dim() > 1 else 1
