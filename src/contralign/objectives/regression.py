"""ConR, a contrastive regulariser for imbalanced regression (Keramati et al., ICLR 2024,
arXiv:2309.06651).

Targets are the ``scores`` role ``(B,)``. Features are the query embeddings, and the key
embeddings too when present (the paper's second augmented view: 2B samples, the two views of an
item being each other's positives). For anchor j with target y_j and temperature τ, cosines ``s``:

    positives  P_j = { i ≠ j : |y_i − y_j| ≤ ω }
    negatives  N_j = { q : |y_q − y_j| > ω }    (and |ŷ_q − ŷ_j| ≤ ω given predictions ŷ)
    S_jq       = η_j · e^{e·|y_j − y_q|}          (the pushing weight)
    D_j = Σ_{p∈P_j} e^{s_jp/τ} + Σ_{q∈N_j} S_jq e^{s_jq/τ}
    L_j = −(1/|P_j|) Σ_{i∈P_j} log( e^{s_ji/τ} / D_j )
    L   = (1/R) Σ_j η_j · L_j · [P_j ≠ ∅ and N_j ≠ ∅]   over all R rows

as in the authors' code (``BorealisAI/ConR``): without predictions (the ``Embedded`` batch has
none) every label-dissimilar sample is a negative; with them only the "confusing" ones, whose
prediction is within ω of the anchor's. η_j (``push_weights``) is the anchor's pushing power, e.g.
an inverse label density (1 by default). An anchor without a positive or without a negative
contributes 0 and still counts in R. The authors' code also adds ``e^0 = 1`` to the denominator
for every non-positive column (its masked logits are 0, not −inf); we implement the paper's sum.
Defaults are the authors' for age in years (ω = 1, τ = 0.07, e = 0.01): set ω in the units of
your scores.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Lt
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded
from contralign.objectives.temperature import Temperature, check_temperature


def _check(threshold: float, temperature: float, push_rate: float) -> None:
    if not 0 <= threshold < math.inf:
        raise ValueError(f"conr: threshold must be finite and >= 0, got {threshold}")
    check_temperature("conr", temperature)
    if not 0 <= push_rate < math.inf:
        raise ValueError(f"conr: push_rate must be finite and >= 0, got {push_rate}")


def _pair_masks(
    targets: Tensor, guesses: Tensor | None, threshold: float,
    anchors: Tensor | slice = slice(None),
) -> tuple[Tensor, Tensor, Tensor]:
    """``(A, R)`` label distances, positive and negative masks of the anchor rows ``anchors``
    (default all R) from ``(R,)`` targets (and predictions): positives within ω (not the anchor
    itself), negatives beyond ω (and, given predictions, predicted within ω of the anchor's
    prediction)."""
    distance = (targets[anchors, None] - targets[None, :]).abs()  # (A, R)
    columns = torch.arange(targets.shape[0], device=targets.device)
    own = columns[anchors, None] == columns[None, :]  # (A, R): the anchor itself
    positive = (distance <= threshold) & ~own
    negative = distance > threshold
    if guesses is not None:
        negative = negative & ((guesses[anchors, None] - guesses[None, :]).abs() <= threshold)
    return distance, positive, negative


def conr(
    query: Tensor,
    scores: Tensor,
    *,
    key: Tensor | None = None,
    predictions: Tensor | None = None,
    push_weights: Tensor | None = None,
    threshold: float = 1.0,
    temperature: float = 0.07,
    push_rate: float = 0.01,
    rows: slice | None = None,
) -> Tensor:
    """ConR regulariser (arXiv:2309.06651) on features and their regression targets.

    Args:
        query: ``(B, D)`` features.
        scores: ``(B,)`` regression targets y.
        key: ``(B, D)`` a second view of the same items, or None.
        predictions: ``(B,)`` the model's current predictions ŷ (used without gradient), or None
            to push every label-dissimilar sample.
        push_weights: ``(B,)`` pushing power η_j of each anchor (e.g. inverse label density),
            or None for 1.
        threshold: ω: targets within ω are positives (1 in the authors' code, ages in years).
        temperature: τ (0.07).
        push_rate: e in the pushing weight ``η·e^{e·|Δy|}`` (0.01).
        rows: the items ``R`` of one process of a multi-process run
            (``contralign.training.distributed``): only their anchor rows (both views), against
            every row, the sum over them divided by their count; ``copies·|R| × copies·B``
            logits. The ``|R|/B``-weighted sum over processes is the whole batch's loss.

    Returns:
        The scalar loss (0 when no anchor has both a positive and a negative).

    Raises:
        ValueError: mismatched shapes, a hyperparameter out of range, or a push weight ≤ 0.
    """
    batch = query.shape[0]
    for name, tensor in (("scores", scores), ("predictions", predictions),
                         ("push_weights", push_weights)):
        if tensor is not None and tensor.shape != (batch,):
            raise ValueError(f"conr: {name} {tuple(tensor.shape)} must be (B,) = ({batch},)")
    if query.dim() != 2 or (key is not None and key.shape != query.shape):
        raise ValueError(f"conr: query {tuple(query.shape)} (and key) must be (B, D)")
    _check(threshold, temperature, push_rate)
    if push_weights is not None and not bool((push_weights > 0).all()):
        raise ValueError("conr: push_weights must all be > 0")
    copies = 1 if key is None else 2  # the two views of item i are rows i and B + i
    features = query if key is None else torch.cat([query, key])  # (R, D)
    targets = scores.detach().to(query.dtype).repeat(copies)  # (R,)
    weights = (torch.ones_like(targets) if push_weights is None
               else push_weights.detach().to(query.dtype).repeat(copies))  # (R,) η
    guesses = None if predictions is None else predictions.detach().to(query.dtype).repeat(copies)
    anchors: Tensor | slice = slice(None)  # the anchor rows (A of them): all R by default
    if rows is not None:  # items R's rows, in each copy: i and B + i
        items = torch.arange(batch, device=query.device)[rows]
        anchors = torch.cat([items + copy * batch for copy in range(copies)])  # (A,)
    distance, positive, negative = _pair_masks(targets, guesses, threshold, anchors)
    z = F.normalize(features, dim=-1)
    logits = (z if rows is None else z[anchors]) @ z.T / temperature  # (A, R)
    valid = positive.any(dim=1) & negative.any(dim=1)  # (A,)
    log_push = torch.log(weights[anchors])[:, None] + push_rate * distance  # (A, R) log S
    terms = torch.where(negative, logits + log_push, logits)
    keep = (positive | negative) & valid[:, None]
    safe = terms.masked_fill(~keep, -math.inf).masked_fill(~valid[:, None], 0.0)
    log_denominator = torch.logsumexp(safe, dim=1)  # (A,)
    positive_mean = (logits * positive).sum(dim=1) / positive.sum(dim=1).clamp_min(1)  # (A,)
    row_loss = torch.where(valid, log_denominator - positive_mean, 0.0)
    return (weights[anchors] * row_loss).sum() / row_loss.shape[0]


class ConRLoss(nn.Module):
    """``conr`` as a module: features from ``query`` (and ``key`` when present), targets from
    ``scores``.

    It is a regulariser: the task adds it, with its own weight, to the regression loss.

    Args:
        threshold: ω in the units of the scores (1, the authors' value for ages in years).
        temperature: τ (0.07).
        push_rate: e of the pushing weight ``e^{e·|Δy|}`` (0.01).

    Raises:
        ValueError: a hyperparameter out of range.
    """

    def __init__(
        self, threshold: Annotated[float, Ge(0), Lt(math.inf)] = 1.0,
        temperature: Temperature = 0.07, push_rate: Annotated[float, Ge(0), Lt(math.inf)] = 0.01,
    ) -> None:
        super().__init__()
        _check(threshold, temperature, push_rate)
        self.threshold, self.temperature, self.push_rate = threshold, temperature, push_rate

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows``, that of those items' anchor rows (``conr``)."""
        batch.require("conr", "scores")
        assert batch.scores is not None
        if batch.negatives is not None:
            raise ValueError("conr: chooses its negatives from the scores; unmap the negative "
                             "column(s)")
        return conr(batch.query, batch.scores, key=batch.key, threshold=self.threshold,
                    temperature=self.temperature, push_rate=self.push_rate, rows=rows)
