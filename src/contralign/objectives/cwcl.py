"""Continuously weighted contrastive loss (CWCL; Srinivasa et al. 2023, arXiv:2309.14580).

Cross-modal transfer from a pretrained (usually frozen, as in LiT) tower U to a trained tower V.
Instead of a one-hot target, every candidate j of row i is a positive with weight ``w_ij``, the
intra-modal similarity of items i and j *in U's own space*, mapped to [0, 1]:

    w_ij = (1 + cos(u_i, u_j)) / 2
    L_{a→b} = −(1/B) Σ_i (1 / Σ_j w_ij) Σ_j w_ij · log softmax_j( cos(a_i, b_j) / τ )

for the two directions ``query → key`` and ``key → query``, both with U's weights (the trained
side's similarities carry no structure yet). ``weights_from`` names which side is U: ``"key"``
(the default: the keys come from the pretrained tower, e.g. LiT's locked image tower) or
``"query"``. The weights are computed without gradient: they are targets, not predictions. The
paper adds the two directions; we average them (as ``info_nce`` does for CLIP), which halves the
scale and changes nothing else. With one-hot weights (``w_ij = [i = j]``) it would be CLIP's loss.

The paper's U is pretrained and frozen. When U's embeddings are being trained (one tower shared by
both sides, the trainer's default), the targets follow the space as it moves; ``CWCLLoss`` warns
once. In the trainer, ``objective: {name: cwcl, momentum: 1.0}`` embeds the keys with a frozen
copy of the starting tower instead (``contralign.encoders.momentum.MomentumEncoder``). On text
pairs with a static tower (docs/objectives.md) both set-ups contracted the space at τ = 0.07: with
(1 + cos) / 2 weights over sentences whose cosines are mostly positive, the targets are nearly
uniform over the batch, and a frozen key tower alone did not prevent it.
"""

from __future__ import annotations

import warnings
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded, take_rows
from contralign.objectives.temperature import (
    Temperature,
    check_temperature,
    register_log_scale,
    temperature_of,
)

WeightsFrom = Literal["key", "query"]
WEIGHTS_FROM: tuple[str, ...] = get_args(WeightsFrom)
TRAINED_TARGETS_WARNING = (
    "cwcl: the soft targets come from the {side} embeddings, which are being trained here (e.g. "
    "one tower for both sides), so they drift with the space; CWCL (arXiv:2309.14580) takes "
    "them from a frozen pretrained tower: {remedy} to embed the keys with a frozen copy of the "
    "starting tower, and check the trained space's uniformity either way (on text pairs cwcl "
    "contracted it; docs/objectives.md)")
REMEDIES = {"key": "set objective.momentum: 1.0",
            "query": "set objective.weights_from: key and objective.momentum: 1.0"}


def intra_modal_weights(embeddings: Tensor, rows: slice | None = None) -> Tensor:
    """``(R, B)`` ``(1 + cos(e_i, e_j)) / 2`` normalised per row, without gradient.

    Args:
        embeddings: ``(B, D)`` the pretrained side's embeddings.
        rows: the rows i to compute (default all B).
    """
    with torch.no_grad():
        unit = F.normalize(embeddings, dim=-1)
        own = unit if rows is None else unit[rows]  # (R, D)
        weights = (1 + own @ unit.T) / 2  # (R, B) in [0, 1]; 1 on each row's own column
        return weights / weights.sum(dim=1, keepdim=True)


def cwcl(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float | Tensor = 0.07,
    weights_from: WeightsFrom = "key",
    symmetric: bool = True,
    rows: slice | None = None,
) -> Tensor:
    """CWCL between paired embeddings (arXiv:2309.14580, eq. 3 and its reverse).

    Args:
        query: ``(B, D)`` one modality (e.g. the trained text tower).
        key: ``(B, D)`` the other (e.g. the frozen image tower).
        temperature: τ; logits are ``cos / τ``; a tensor for a learned one.
        weights_from: the pretrained side whose intra-modal similarity gives the targets.
        symmetric: average the ``query → key`` and ``key → query`` directions; otherwise only
            ``query → key`` (query rows against key candidates).
        rows: the pairs ``R`` of one process of a multi-process run
            (``contralign.training.distributed``): their query rows against every key and (when
            symmetric) their key rows against every query, each the mean over ``|R|``, with
            their rows of the targets; ``|R| × B`` logits a direction. The ``|R|/B``-weighted
            sum over processes is the whole batch's loss.

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes or an unknown ``weights_from``.
    """
    if query.dim() != 2 or query.shape != key.shape:
        raise ValueError(f"cwcl: query {tuple(query.shape)} and key {tuple(key.shape)} must "
                         "both be (B, D)")
    if weights_from not in WEIGHTS_FROM:
        raise ValueError(f"cwcl: weights_from must be one of {WEIGHTS_FROM}, got "
                         f"{weights_from!r}")
    # (R, B); the weights are symmetric, so row i serves both directions
    targets = intra_modal_weights(key if weights_from == "key" else query, rows)
    query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    logits = take_rows(query, rows) @ key.T / temperature  # (R, B)
    loss = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    if not symmetric:
        return loss
    # (R, B): key rows R against every query (all B rows: the transpose, as one process has it)
    reverse_logits = logits.T if rows is None else key[rows] @ query.T / temperature
    reverse = -(targets * F.log_softmax(reverse_logits, dim=1)).sum(dim=1).mean()
    return (loss + reverse) / 2


class CWCLLoss(nn.Module):
    """``cwcl`` with a fixed or learned temperature.

    A learned temperature is kept as a log logit scale, clamped at ``log(100)`` as in CLIP.

    The side giving the soft targets should be a frozen tower (see the module docstring): the
    first forward whose target side requires gradient (it is being trained) warns once, with a
    ``UserWarning``.

    Args:
        temperature: τ, or its initial value when learned. The paper trains LiT-style towers;
            0.07 is CLIP's initial temperature (arXiv:2103.00020).
        learnable_temperature: learn τ with the towers.
        weights_from: ``"key"`` or ``"query"``: the pretrained side giving the soft targets.
        symmetric: average both directions.

    Raises:
        ValueError: a temperature that is not finite and > 0, or an unknown ``weights_from``.
    """

    def __init__(
        self, temperature: Temperature = 0.07, learnable_temperature: bool = False,
        weights_from: WeightsFrom = "key", symmetric: bool = True,
    ) -> None:
        super().__init__()
        check_temperature("cwcl", temperature)
        if weights_from not in WEIGHTS_FROM:
            raise ValueError(f"cwcl: weights_from must be one of {WEIGHTS_FROM}, got "
                             f"{weights_from!r}")
        self.weights_from: WeightsFrom = weights_from
        self.symmetric = symmetric
        self.warned_trained_targets = False
        register_log_scale(self, temperature, learnable_temperature)

    @property
    def temperature(self) -> Tensor:
        return temperature_of(self)

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows``, that of those pairs in both directions (``cwcl``)."""
        batch.require("cwcl", "key")
        assert batch.key is not None
        if batch.negatives is not None:
            raise ValueError("cwcl: hard negatives have no intra-modal weights; unmap the "
                             "negative column(s)")
        source = batch.key if self.weights_from == "key" else batch.query
        trained = source.requires_grad and torch.is_grad_enabled()
        if trained and not self.warned_trained_targets:
            self.warned_trained_targets = True  # once per module, whatever the warnings filter
            # stacklevel 1: the caller is torch's module machinery; this line names the source
            warnings.warn(TRAINED_TARGETS_WARNING.format(
                side=self.weights_from, remedy=REMEDIES[self.weights_from]), UserWarning,
                stacklevel=1)
        return cwcl(batch.query, batch.key, temperature=self.temperature,
                    weights_from=self.weights_from, symmetric=self.symmetric, rows=rows)
