"""Contrastive objectives: pure functions on embeddings, one family per file."""

from __future__ import annotations

from contralign.objectives.contrastive import InfoNCELoss, duplicate_mask, info_nce
from contralign.objectives.inputs import Embedded
from contralign.objectives.registry import OBJECTIVES, build_objective

__all__ = ["OBJECTIVES", "Embedded", "InfoNCELoss", "build_objective", "duplicate_mask", "info_nce"]
