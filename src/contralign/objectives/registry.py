"""The explicit registry of objectives, chosen by name in configs."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any

from torch import nn

from contralign.objectives.contrastive import InfoNCELoss


@dataclass(frozen=True)
class ObjectiveInfo:
    """A registered objective: its module, what it needs from the batch, and its paper."""

    module: type[nn.Module]
    requires: tuple[str, ...]  # fields of ``Embedded`` that must be present
    paper: str
    summary: str

    def parameters(self) -> dict[str, tuple[Any, Any]]:
        """``{name: (annotation, default)}`` of the module's constructor."""
        hints = typing.get_type_hints(self.module.__init__)
        signature = inspect.signature(self.module.__init__)
        return {name: (hints.get(name, Any), param.default)
                for name, param in signature.parameters.items() if name != "self"}


OBJECTIVES: dict[str, ObjectiveInfo] = {
    "info_nce": ObjectiveInfo(
        InfoNCELoss, ("key",), "arXiv:1807.03748 (InfoNCE); arXiv:2104.08821 (SimCSE)",
        "In-batch-negative InfoNCE with hard negatives, duplicate masking, optional symmetry.",
    ),
}


def build_objective(name: str, params: dict[str, Any]) -> nn.Module:
    """Build a registered objective.

    Raises:
        ValueError: an unknown name or parameter.
    """
    if name not in OBJECTIVES:
        known = ", ".join(sorted(OBJECTIVES))
        raise ValueError(f"objective: unknown name {name!r}; known: {known}")
    try:
        return OBJECTIVES[name].module(**params)
    except TypeError as err:
        raise ValueError(f"objective.{name}: {err}") from None
