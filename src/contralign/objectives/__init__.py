"""Contrastive objectives: pure functions on embeddings, one family per file.

The registry imports no torch, so that listing objectives stays fast; the torch-backed names
below load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from contralign.objectives.registry import OBJECTIVES, build_objective

if TYPE_CHECKING:
    from contralign.objectives.contrastive import InfoNCELoss, duplicate_mask, info_nce
    from contralign.objectives.inputs import Embedded

__all__ = ["OBJECTIVES", "Embedded", "InfoNCELoss", "build_objective", "duplicate_mask", "info_nce"]

_LAZY = {"Embedded": "inputs", "InfoNCELoss": "contrastive", "duplicate_mask": "contrastive",
         "info_nce": "contrastive"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"contralign.objectives.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'contralign.objectives' has no attribute {name!r}")
