"""Pooling of token embeddings into one vector per sequence."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PoolingMode = Literal["mean", "cls", "max", "last"]
POOLING_MODES: tuple[str, ...] = get_args(PoolingMode)


def pool(token_embeddings: Tensor, attention_mask: Tensor, mode: PoolingMode) -> Tensor:
    """Pool ``(B, T, D)`` token embeddings under a ``(B, T)`` mask into ``(B, D)``.

    Matches sentence-transformers' ``Pooling`` for right-padded inputs.

    Raises:
        ValueError: an unknown ``mode``.
    """
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)  # (B, T, 1)
    match mode:
        case "mean":
            summed = (token_embeddings * mask).sum(dim=1)  # (B, D)
            return summed / mask.sum(dim=1).clamp(min=1e-9)
        case "cls":
            return token_embeddings[:, 0]
        case "max":
            masked = token_embeddings.masked_fill(mask == 0, -1e9)
            return masked.max(dim=1).values
        case "last":
            last = attention_mask.sum(dim=1).long() - 1  # (B,) index of the last real token
            rows = torch.arange(token_embeddings.shape[0], device=token_embeddings.device)
            return token_embeddings[rows, last]
    raise ValueError(f"pooling: unknown mode {mode!r}; choose one of {', '.join(POOLING_MODES)}")


def project(features: Tensor, head: nn.Module | None, normalize: bool) -> Tensor:
    """A tower's ``project``: ``(B, F)`` features through its head (if any) to ``(B, D)``, then
    L2-normalised when the tower normalises."""
    if head is not None:
        features = head(features)  # (B, projection_dim)
    return F.normalize(features, p=2, dim=-1) if normalize else features
