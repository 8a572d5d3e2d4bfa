"""Towers: encoders that turn raw items into embeddings ``(B, D)``."""

from __future__ import annotations

from contralign.core.towers import Tower
from contralign.encoders.pooling import POOLING_MODES, PoolingMode, pool

__all__ = ["POOLING_MODES", "PoolingMode", "Tower", "pool"]
