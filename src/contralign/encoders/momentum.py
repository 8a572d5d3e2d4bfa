"""The momentum encoder of MoCo (arXiv:1911.05722): a slowly moving copy of a tower.

The trainer computes keys with it and calls ``update`` after each optimiser step; the MoCo
objective (``contralign.objectives.momentum``) only ever sees the embeddings.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

PAPER_MOMENTUM = 0.999


class MomentumEncoder(nn.Module):
    """A frozen copy of a tower, moved towards the online tower by an exponential moving average.

    ``update(online)`` sets every parameter ``θ_k ← m·θ_k + (1 − m)·θ_q`` (arXiv:1911.05722,
    Eq. 2) and copies every buffer (e.g. batch-norm statistics) from the online tower. The copy's
    parameters never require gradients; ``forward`` runs it under ``torch.no_grad()``. It follows
    the train/eval mode of its parent module like any submodule (so dropout stays on while
    training, as the key encoder of the paper runs in training mode).

    Register it on the task (so it moves with ``.to(device)`` and is saved in checkpoints) and
    call ``update`` after each optimiser step. Pass the bare tower, not a DDP wrapper, so the
    parameter names match.

    Args:
        encoder: the online tower; it is deep-copied.
        momentum: m in [0, 1]; 0.999 in the paper (1 freezes the copy, 0 copies the tower).

    Raises:
        ValueError: a momentum outside [0, 1] (NaN included).
    """

    def __init__(self, encoder: nn.Module, momentum: float = PAPER_MOMENTUM) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:  # also rejects NaN
            raise ValueError(f"momentum_encoder: momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.encoder = copy.deepcopy(encoder)
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        """Move every parameter towards ``online``'s and copy its buffers.

        Args:
            online: the tower this copy was built from (same parameter and buffer names).

        Raises:
            ValueError: ``online`` does not have the copy's parameters or buffers.
        """
        ours = dict(self.encoder.named_parameters())
        theirs = dict(online.named_parameters())
        _check_same_names("parameters", ours, theirs)
        for name, parameter in ours.items():
            # θ_k ← m·θ_k + (1 − m)·θ_q
            parameter.mul_(self.momentum).add_(theirs[name].detach(), alpha=1.0 - self.momentum)
        our_buffers = dict(self.encoder.named_buffers())
        their_buffers = dict(online.named_buffers())
        _check_same_names("buffers", our_buffers, their_buffers)
        for name, buffer in our_buffers.items():
            buffer.copy_(their_buffers[name])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the copy without building a graph; the arguments are the tower's."""
        with torch.no_grad():
            return self.encoder(*args, **kwargs)


def _check_same_names(what: str, ours: Mapping[str, Tensor], theirs: Mapping[str, Tensor]
                      ) -> None:
    if ours.keys() != theirs.keys():
        missing = sorted(set(ours) - set(theirs))[:3]
        extra = sorted(set(theirs) - set(ours))[:3]
        raise ValueError(f"momentum_encoder.update: the online tower's {what} differ from the "
                         f"copy's (missing {missing}, unexpected {extra}); pass the same tower, "
                         "unwrapped")
