"""The Tower protocol every encoder follows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Tower(Protocol):
    """An encoder of one modality: raw items in, embeddings ``(B, D)`` out."""

    dim: int

    def preprocess(self, items: list[Any]) -> dict[str, Tensor]:
        """Turn raw items (texts) into a batch of tensors."""
        ...

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Embed a batch: ``(B, D)``."""
        ...

    def save(self, path: str | Path) -> None: ...
