"""Debiased contrastive loss (Chuang et al. 2020, arXiv:2007.00224) and its hard-negative
reweighting (Robinson et al. 2021, arXiv:2010.04592).

Both replace the sum over negatives in NT-Xent by an estimate ``Ng`` of the sum over *true*
negatives, correcting for in-batch "negatives" that share the anchor's class with prior τ⁺:

    Ng = max( (M − τ⁺·N·e^{s⁺/t}) / (1 − τ⁺),  N·e^{−1/t} )
    loss = −log( e^{s⁺/t} / (e^{s⁺/t} + Ng) )

where s⁺ is the anchor–positive cosine, N the number of negatives of the anchor and ``M`` their
mass: the plain sum ``Σ e^{s⁻/t}`` for the debiased loss, and the importance-weighted sum
``N · Σ e^{(1+β)s⁻/t} / Σ e^{βs⁻/t}`` (weights ``e^{β·s⁻/t}``, normalised to mean 1) for the
hard-negative loss. The floor ``N·e^{−1/t}`` is the smallest value the true sum can take on the unit
sphere (the authors' "constrain" step). τ⁺ = 0 gives NT-Xent; β = 0 gives the debiased loss.

Both papers' estimators, and the authors' reference code (``chingyaoc/DCL``, ``joshr17/HCL``), work
on cosine similarities; embeddings are always L2-normalised here.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

import torch
import torch.nn.functional as F
from annotated_types import Ge, Lt
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded, own_columns, take_rows
from contralign.objectives.temperature import Temperature, check_temperature

Candidates = Literal["both_views", "other_view"]
# The positive-class prior τ⁺: a probability below 1 (the estimator divides by 1 − τ⁺).
TauPlus = Annotated[float, Ge(0), Lt(1)]
CANDIDATES: tuple[str, ...] = get_args(Candidates)


def check_pairs(name: str, query: Tensor, key: Tensor, negatives: Tensor | None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``query``/``key`` are ``(B, D)`` and
    ``negatives`` is ``(B, K, D)`` or None."""
    if query.dim() != 2 or query.shape != key.shape:
        raise ValueError(f"{name}: query {tuple(query.shape)} and key {tuple(key.shape)} "
                         "must both be (B, D)")
    if negatives is not None and (negatives.dim() != 3 or negatives.shape[0] != query.shape[0]
                                  or negatives.shape[2] != query.shape[1]):
        raise ValueError(f"{name}: negatives {tuple(negatives.shape)} must be (B, K, D)")


def pair_logits(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float,
    candidates: Candidates = "both_views",
    symmetric: bool = True,
    rows: slice | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cosine logits of every anchor's positive and of its negatives.

    Anchor rows are the queries, then (when ``symmetric``) the keys. Query i's positive is key i
    and key i's is query i. Their negatives are:

    - ``"both_views"`` (SimCLR/NT-Xent, as in both papers): every other query and every other key,
      ``2B − 2`` candidates;
    - ``"other_view"`` (CLIP-style pairs): every other item of the other view, ``B − 1``.

    Hard negatives are extra negatives of the query rows only, shared by all of them (``B·K``
    columns), as in ``info_nce``.

    Args:
        query: ``(B, D)``.
        key: ``(B, D)``.
        negatives: ``(B, K, D)`` hard negatives, or None.
        temperature: t; logits are ``cos / t``.
        candidates: which in-batch items are negatives (above).
        symmetric: also use the keys as anchors.
        rows: only the anchors of these pairs (query rows, then key rows), against every
            candidate of the batch: one process's share of a multi-process run
            (``contralign.training.distributed``); all B by default.

    Returns:
        ``(A,)`` positive logits, ``(A, M)`` negative logits and ``(A, M)`` bool, True where the
        column is a negative of the row (``A = 2R`` when symmetric, else ``R``, with R the
        pairs of ``rows``).
    """
    q, k = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    batch = q.shape[0]
    q_own, k_own = take_rows(q, rows), take_rows(k, rows)  # (R, D) the anchors
    count = q_own.shape[0]
    eye = own_columns(rows, batch, q.device)  # (R, B): each anchor's own item
    positive = (q_own * k_own).sum(-1) / temperature  # (R,)
    if candidates == "both_views":
        q_rows = torch.cat([q_own @ q.T, q_own @ k.T], dim=1) / temperature  # (R, 2B)
        k_rows = torch.cat([k_own @ k.T, k_own @ q.T], dim=1) / temperature  # (R, 2B)
        keep = ~torch.cat([eye, eye], dim=1)  # (R, 2B): not itself, not its own positive
    else:
        q_rows, k_rows, keep = q_own @ k.T / temperature, k_own @ q.T / temperature, ~eye
    q_keep, k_keep = keep, keep
    if negatives is not None:
        hard = F.normalize(negatives, dim=-1).flatten(0, 1)  # (B·K, D), row-major
        q_rows = torch.cat([q_rows, q_own @ hard.T / temperature], dim=1)
        k_rows = torch.cat([k_rows, k_rows.new_zeros(count, hard.shape[0])], dim=1)
        q_keep = torch.cat([keep, keep.new_ones(count, hard.shape[0])], dim=1)
        k_keep = torch.cat([keep, keep.new_zeros(count, hard.shape[0])], dim=1)
    if not symmetric:
        return positive, q_rows, q_keep
    return (torch.cat([positive, positive]), torch.cat([q_rows, k_rows]),
            torch.cat([q_keep, k_keep]))


def masked_logsumexp(logits: Tensor, keep: Tensor, empty: float = -math.inf) -> Tensor:
    """``(R,)`` log Σ_j exp(logits[r, j]) over the kept columns; ``empty`` for a row with none.

    Rows without a kept column are computed on zeros first, so their gradient is 0, not NaN.
    """
    has_any = keep.any(dim=1)
    safe = logits.masked_fill(~keep, -math.inf).masked_fill(~has_any[:, None], 0.0)
    return torch.where(has_any, torch.logsumexp(safe, dim=1), empty)


def _estimator_loss(
    positive: Tensor, log_mass: Tensor, count: Tensor, tau_plus: float, temperature: float
) -> Tensor:
    """Mean of −log(e^{s⁺} / (e^{s⁺} + Ng)) from ``(R,)`` positive logits, log negative masses
    and negative counts, computed after shifting every row by its largest term (no overflow)."""
    shift = torch.maximum(positive, log_mass).detach()  # (R,); exact: the loss is shift-free
    pos = torch.exp(positive - shift)
    mass = torch.exp(log_mass - shift)
    floor = count * torch.exp(-1.0 / temperature - shift)
    negative = torch.maximum((mass - tau_plus * count * pos) / (1.0 - tau_plus), floor)
    return (torch.log(pos + negative) - (positive - shift)).mean()


def _check(name: str, temperature: float, tau_plus: float, candidates: str) -> None:
    check_temperature(name, temperature)
    if not 0 <= tau_plus < 1:
        raise ValueError(f"{name}: tau_plus must be in [0, 1), got {tau_plus}")
    if candidates not in CANDIDATES:
        raise ValueError(f"{name}: candidates must be one of {CANDIDATES}, got {candidates!r}")


def debiased_contrastive(
    query: Tensor,
    key: Tensor,
    *,
    negatives: Tensor | None = None,
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    candidates: Candidates = "both_views",
    symmetric: bool = True,
    rows: slice | None = None,
) -> Tensor:
    """Debiased contrastive loss (Chuang et al. 2020, arXiv:2007.00224, eq. 5 with the clamp).

    Args:
        query: ``(B, D)`` anchors.
        key: ``(B, D)`` positives.
        negatives: ``(B, K, D)`` hard negatives: extra negatives of every query row.
        temperature: t (the paper's default 0.5).
        tau_plus: class prior τ⁺ of a false negative (the paper's default 0.1); 0 gives NT-Xent.
        candidates: ``"both_views"`` (the paper: 2B − 2 negatives) or ``"other_view"`` (B − 1).
        symmetric: also use the keys as anchors; the loss is the mean over all anchors.
        rows: only the anchors of these pairs, the mean over them (``pair_logits``); the
            ``|R|/B``-weighted sum over the processes of a multi-process run is the whole loss.

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes, or temperature, tau_plus or candidates out of range.
    """
    check_pairs("debiased", query, key, negatives)
    _check("debiased", temperature, tau_plus, candidates)
    positive, logits, keep = pair_logits(query, key, negatives, temperature=temperature,
                                         candidates=candidates, symmetric=symmetric,
                                         rows=rows)
    count = keep.sum(dim=1).to(positive.dtype)  # (R,) N of each anchor
    return _estimator_loss(positive, masked_logsumexp(logits, keep), count, tau_plus,
                           temperature)


def hard_negative_contrastive(
    query: Tensor,
    key: Tensor,
    *,
    negatives: Tensor | None = None,
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    beta: float = 1.0,
    candidates: Candidates = "both_views",
    symmetric: bool = True,
    rows: slice | None = None,
) -> Tensor:
    """Hard-negative contrastive loss (HCL; Robinson et al. 2021, arXiv:2010.04592).

    The debiased estimator with negatives importance-weighted by ``e^{β·s⁻/t}`` (normalised to
    mean 1 over the anchor's negatives), as in the authors' code (``joshr17/HCL``); with t folded
    into the embeddings this is the paper's ``q_β(x⁻) ∝ e^{β f(x)ᵀf(x⁻)}``.

    Args:
        query: ``(B, D)`` anchors.
        key: ``(B, D)`` positives.
        negatives: ``(B, K, D)`` hard negatives: extra negatives of every query row.
        temperature: t (the authors' default 0.5).
        tau_plus: class prior τ⁺ (the authors' default 0.1).
        beta: concentration β ≥ 0 (the authors' default 1.0); 0 gives the debiased loss.
        candidates: ``"both_views"`` (the paper: 2B − 2 negatives) or ``"other_view"`` (B − 1).
        symmetric: also use the keys as anchors.
        rows: only the anchors of these pairs, the mean over them (``pair_logits``); the
            ``|R|/B``-weighted sum over the processes of a multi-process run is the whole loss.

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes, or a hyperparameter out of range.
    """
    check_pairs("hard_negative", query, key, negatives)
    _check("hard_negative", temperature, tau_plus, candidates)
    if not 0 <= beta < math.inf:
        raise ValueError(f"hard_negative: beta must be finite and >= 0, got {beta}")
    positive, logits, keep = pair_logits(query, key, negatives, temperature=temperature,
                                         candidates=candidates, symmetric=symmetric,
                                         rows=rows)
    count = keep.sum(dim=1).to(positive.dtype)  # (R,)
    # log( N · Σ e^{(1+β)s} / Σ e^{βs} ), −inf for an anchor without negatives.
    weighted = masked_logsumexp((1.0 + beta) * logits, keep, empty=0.0)
    norm = masked_logsumexp(beta * logits, keep, empty=0.0)
    log_mass = torch.where(count > 0, torch.log(count.clamp_min(1.0)) + weighted - norm,
                           -math.inf)
    return _estimator_loss(positive, log_mass, count, tau_plus, temperature)


class DebiasedContrastiveLoss(nn.Module):
    """``debiased_contrastive`` as a module (arXiv:2007.00224).

    Args:
        temperature: t (0.5 in the paper).
        tau_plus: class prior τ⁺ (0.1 in the paper).
        candidates: ``"both_views"`` or ``"other_view"``.
        symmetric: also use the keys as anchors.

    Raises:
        ValueError: a hyperparameter out of range or an unknown ``candidates``.
    """

    def __init__(
        self, temperature: Temperature = 0.5, tau_plus: TauPlus = 0.1,
        candidates: Candidates = "both_views", symmetric: bool = True,
    ) -> None:
        super().__init__()
        _check("debiased", temperature, tau_plus, candidates)
        self.temperature, self.tau_plus = temperature, tau_plus
        self.candidates: Candidates = candidates
        self.symmetric = symmetric

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows``, that of those pairs' anchors."""
        batch.require("debiased", "key")
        assert batch.key is not None
        return debiased_contrastive(
            batch.query, batch.key, negatives=batch.negatives, temperature=self.temperature,
            tau_plus=self.tau_plus, candidates=self.candidates, symmetric=self.symmetric,
            rows=rows,
        )


class HardNegativeContrastiveLoss(nn.Module):
    """``hard_negative_contrastive`` as a module (arXiv:2010.04592).

    Args:
        temperature: t (0.5 in the authors' code).
        tau_plus: class prior τ⁺ (0.1).
        beta: concentration β (1.0).
        candidates: ``"both_views"`` or ``"other_view"``.
        symmetric: also use the keys as anchors.

    Raises:
        ValueError: a hyperparameter out of range or an unknown ``candidates``.
    """

    def __init__(
        self, temperature: Temperature = 0.5, tau_plus: TauPlus = 0.1,
        beta: Annotated[float, Ge(0), Lt(math.inf)] = 1.0,
        candidates: Candidates = "both_views", symmetric: bool = True,
    ) -> None:
        super().__init__()
        _check("hard_negative", temperature, tau_plus, candidates)
        if not 0 <= beta < math.inf:
            raise ValueError(f"hard_negative: beta must be finite and >= 0, got {beta}")
        self.temperature, self.tau_plus, self.beta = temperature, tau_plus, beta
        self.candidates: Candidates = candidates
        self.symmetric = symmetric

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows``, that of those pairs' anchors."""
        batch.require("hard_negative", "key")
        assert batch.key is not None
        return hard_negative_contrastive(
            batch.query, batch.key, negatives=batch.negatives, temperature=self.temperature,
            tau_plus=self.tau_plus, beta=self.beta, candidates=self.candidates,
            symmetric=self.symmetric, rows=rows,
        )
