"""The explicit registry of objectives, chosen by name in configs."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any

from torch import nn

from contralign.objectives.clip import CLIPLoss
from contralign.objectives.contrastive import InfoNCELoss
from contralign.objectives.cwcl import CWCLLoss
from contralign.objectives.debiased import DebiasedContrastiveLoss, HardNegativeContrastiveLoss
from contralign.objectives.decoupled import DecoupledContrastiveLoss
from contralign.objectives.geometry import AlignUniformLoss
from contralign.objectives.momentum import MoCoLoss
from contralign.objectives.multiview import NTXentLoss
from contralign.objectives.one_to_k import OneToKContrastiveLoss
from contralign.objectives.prototypes import SwAVLoss
from contralign.objectives.regression import ConRLoss
from contralign.objectives.sigmoid import SigLIPLoss
from contralign.objectives.supervised import SupConLoss
from contralign.objectives.whitening import WhitenedCSELoss


@dataclass(frozen=True)
class ObjectiveInfo:
    """A registered objective: its module, what it needs from the batch, and its paper."""

    module: type[nn.Module]
    requires: tuple[str, ...]  # fields of ``Embedded`` that must be present
    paper: str
    summary: str
    momentum_keys: bool = False  # keys come from a momentum copy of the tower (MoCo)
    # ``momentum: m`` may take the keys from a momentum copy (1.0: a frozen copy, as in LiT)
    optional_momentum_keys: bool = False

    def parameters(self) -> dict[str, tuple[Any, Any]]:
        """``{name: (annotation, default)}`` of the module's constructor."""
        hints = typing.get_type_hints(self.module.__init__)
        signature = inspect.signature(self.module.__init__)
        return {name: (hints.get(name, Any), param.default)
                for name, param in signature.parameters.items()
                if name not in ("self", "dim")}  # dim comes from the tower


OBJECTIVES: dict[str, ObjectiveInfo] = {
    "info_nce": ObjectiveInfo(
        InfoNCELoss, ("key",), "arXiv:1807.03748 (InfoNCE); arXiv:2104.08821 (SimCSE)",
        "In-batch-negative InfoNCE with hard negatives, duplicate masking, optional symmetry.",
    ),
    "nt_xent": ObjectiveInfo(
        NTXentLoss, (), "arXiv:2002.05709 (SimCLR); arXiv:1906.05849 (CMC); arXiv:2403.05490",
        "NT-Xent over V >= 2 views: pairwise (CMC), multi-positive, or poly-view aggregation.",
    ),
    "clip": ObjectiveInfo(
        CLIPLoss, ("key",), "arXiv:2103.00020 (CLIP); arXiv:2102.05918 (ALIGN)",
        "Symmetric softmax loss with a learned temperature clamped at 0.01, label smoothing.",
    ),
    "siglip": ObjectiveInfo(
        SigLIPLoss, ("key",), "arXiv:2303.15343 (SigLIP)",
        "Pairwise sigmoid loss with learned temperature and bias.",
    ),
    "supcon": ObjectiveInfo(
        SupConLoss, ("labels",), "arXiv:2004.11362 (SupCon)",
        "Supervised contrastive: every item with the same label is a positive.",
    ),
    "debiased": ObjectiveInfo(
        DebiasedContrastiveLoss, ("key",), "arXiv:2007.00224 (debiased contrastive)",
        "NT-Xent with the negative term debiased by a positive-class prior tau_plus.",
    ),
    "hard_negative": ObjectiveInfo(
        HardNegativeContrastiveLoss, ("key",), "arXiv:2010.04592 (hard negative sampling)",
        "Debiased contrastive with negatives reweighted by their hardness (concentration beta).",
    ),
    "decoupled": ObjectiveInfo(
        DecoupledContrastiveLoss, ("key",), "arXiv:2110.06848 (DCL/DCLW)",
        "Positive removed from the denominator; optional von Mises-Fisher weighting (DCLW).",
    ),
    "align_uniform": ObjectiveInfo(
        AlignUniformLoss, ("key",), "arXiv:2005.10242 (alignment and uniformity)",
        "Weighted alignment + uniformity losses on the hypersphere.",
    ),
    "cwcl": ObjectiveInfo(
        CWCLLoss, ("key",), "arXiv:2309.14580 (CWCL)",
        "Cross-modal softmax against soft targets from one side's own similarities.",
        optional_momentum_keys=True,
    ),
    "one_to_k": ObjectiveInfo(
        OneToKContrastiveLoss, ("views",), "arXiv:2406.18254 (1-to-K contrastive, KDD 2024)",
        "One anchor against its K aligned views at once, in both directions.",
    ),
    "moco": ObjectiveInfo(
        MoCoLoss, ("key",), "arXiv:1911.05722 (MoCo); arXiv:2003.04297 (MoCo v2)",
        "InfoNCE against a FIFO queue of keys from a momentum copy of the tower.",
        momentum_keys=True,
    ),
    "swav": ObjectiveInfo(
        SwAVLoss, ("key",), "arXiv:2006.09882 (SwAV)",
        "Swapped prediction of Sinkhorn-Knopp codes over learnable prototypes.",
    ),
    "whitened_cse": ObjectiveInfo(
        WhitenedCSELoss, ("key",), "arXiv:2305.17746 (WhitenedCSE, ACL 2023)",
        "Contrastive loss on shuffled-group-whitened embeddings, several whitened positives.",
    ),
    "conr": ObjectiveInfo(
        ConRLoss, ("scores",), "arXiv:2309.06651 (ConR, ICLR 2024)",
        "Contrastive regulariser for imbalanced regression on the score role.",
    ),
}


def build_objective(name: str, params: dict[str, Any], dim: int | None = None) -> nn.Module:
    """Build a registered objective; ``dim`` (the tower's width) is passed to those that need it.

    Raises:
        ValueError: an unknown name or parameter.
    """
    if name not in OBJECTIVES:
        known = ", ".join(sorted(OBJECTIVES))
        raise ValueError(f"objective: unknown name {name!r}; known: {known}")
    module = OBJECTIVES[name].module
    if dim is not None and "dim" in inspect.signature(module.__init__).parameters:
        params = {"dim": dim, **params}
    try:
        return module(**params)
    except TypeError as err:
        raise ValueError(f"objective.{name}: {err}") from None
