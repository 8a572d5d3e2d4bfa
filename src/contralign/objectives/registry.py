"""The explicit registry of objectives, chosen by name in configs."""

from __future__ import annotations

from typing import Any

from torch import nn

from contralign.objectives.contrastive import InfoNCELoss

OBJECTIVES: dict[str, type[nn.Module]] = {
    "info_nce": InfoNCELoss,
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
        return OBJECTIVES[name](**params)
    except TypeError as err:
        raise ValueError(f"objective.{name}: {err}") from None
