"""Distributed helpers that are no-ops in one process (no process group)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as torch_dist


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    """This process's rank: 0 without a process group."""
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes: 1 without a process group."""
    return torch_dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op in one process."""
    if is_distributed():
        torch_dist.barrier()


def _comm_device(tensor: torch.Tensor) -> torch.device:
    # NCCL moves CUDA tensors only; gloo moves CPU tensors (and CUDA ones, via the host).
    if is_distributed() and torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``tensor`` (a new tensor); ``tensor`` itself in one process."""
    if not is_distributed():
        return tensor
    buffer = tensor.detach().to(_comm_device(tensor), copy=True)
    torch_dist.all_reduce(buffer, op=torch_dist.ReduceOp.SUM)
    return buffer.to(tensor.device)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` on every rank (a new tensor); ``tensor`` itself in one process."""
    if not is_distributed():
        return tensor
    buffer = tensor.detach().to(_comm_device(tensor), copy=True).contiguous()
    torch_dist.broadcast(buffer, src=src)
    return buffer.to(tensor.device)


def all_gather_rows(rows: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """``(Σ counts, ...)``: every rank's ``rows`` in rank order, without gradient.

    Args:
        rows: ``(counts[rank()], ...)`` this rank's rows.
        counts: how many rows each rank holds (they may differ by rank).

    Raises:
        ValueError: ``rows`` does not hold ``counts[rank()]`` rows.
    """
    if len(counts) != world_size() or rows.shape[0] != counts[rank()]:
        raise ValueError(f"all_gather_rows: rank {rank()} holds {rows.shape[0]} rows, counts "
                         f"say {list(counts)} for {world_size()} rank(s)")
    if not is_distributed():
        return rows.detach()
    longest = max(counts)
    device = _comm_device(rows)
    padded = rows.detach().new_zeros((longest, *rows.shape[1:]), device=device)  # equal shapes
    padded[: rows.shape[0]] = rows.detach()
    parts = [torch.empty_like(padded) for _ in counts]
    torch_dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]).to(
        rows.device)
