"""The softmax temperature that several objectives share, fixed or learned.

Kept as a log logit scale, ``log(1/τ)``: a parameter when learned (clamped at
``MAX_LOGIT_SCALE``, as in CLIP arXiv:2103.00020), a buffer when fixed, so it is saved either way.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from annotated_types import Gt, Lt
from torch import Tensor, nn

# CLIP clamps the learnable logit scale at 100 (temperature 0.01) to keep training stable.
MAX_LOGIT_SCALE = 100.0

# A softmax temperature (or any scale that must be finite and > 0). Constructors annotate their
# parameters with it, so that a config is checked before anything is built (pydantic reads the
# bounds; NaN fails both); ``check_temperature`` is the same rule for direct calls.
Temperature = Annotated[float, Gt(0), Lt(math.inf)]


def check_temperature(objective: str, temperature: float, key: str = "temperature") -> None:
    """Raise ``ValueError`` naming the objective unless ``temperature`` is finite and > 0."""
    if not 0 < temperature < math.inf:  # also rejects NaN, which compares False to anything
        raise ValueError(f"{objective}: {key} must be finite and > 0, got {temperature}")


def register_log_scale(module: nn.Module, temperature: float, learnable: bool) -> None:
    """Give ``module`` a ``log_scale`` of ``log(1/temperature)``: a parameter if learned."""
    log_scale = torch.tensor(math.log(1.0 / temperature))
    if learnable:
        module.log_scale = nn.Parameter(log_scale)
    else:
        module.register_buffer("log_scale", log_scale)


def log_scale_of(module: nn.Module) -> Tensor:
    """The ``log_scale`` that ``register_log_scale`` gave ``module``."""
    log_scale = module.log_scale
    assert isinstance(log_scale, Tensor)
    return log_scale


def temperature_of(module: nn.Module) -> Tensor:
    """τ of ``module``; a learned one (a parameter) is clamped at ``MAX_LOGIT_SCALE``."""
    log_scale = log_scale_of(module)
    if isinstance(log_scale, nn.Parameter):
        return 1.0 / log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
    return 1.0 / log_scale.exp()
