"""In-batch-negative InfoNCE (van den Oord et al. 2018, arXiv:1807.03748), as used by SimCSE
(arXiv:2104.08821), CLIP (arXiv:2103.00020) and sentence-transformers' MultipleNegativesRankingLoss.

The core is one softmax cross-entropy between similarity logits and the diagonal target; a mask
removes false negatives: a candidate that is the same as the row's positive (same text or same
label) is never used as a negative. An additive margin (LaBSE, arXiv:2007.01852, after Yang et
al. 2019, arXiv:1902.08564) lowers the positive's similarity by m before scaling, in each
direction: row i's logits are ``(s_ij − m·δ_ij) / τ``, so a pair must beat every negative by m.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Lt
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded, own_columns
from contralign.objectives.temperature import (
    Temperature,
    check_temperature,
    register_log_scale,
    temperature_of,
)
from contralign.objectives.tiled import (
    DEFAULT_TILE_SIZE,
    check_margin,
    check_tile_size,
    tiled_info_nce,
)


def duplicate_mask(row_ids: Tensor, candidate_ids: Tensor) -> Tensor:
    """``(B, M)`` bool: True where candidate j equals row i's positive but is not its target.

    Args:
        row_ids: ``(B,)`` integer id of each row's positive (a text hash or a label).
        candidate_ids: ``(M,)`` ids of the candidates; candidate i is row i's target.
    """
    same = row_ids[:, None] == candidate_ids[None, :]  # (B, M)
    target = torch.zeros_like(same)
    target[:, : row_ids.shape[0]] = torch.eye(row_ids.shape[0], dtype=torch.bool,
                                              device=row_ids.device)
    return same & ~target


def _duplicates(row_ids: Tensor, candidate_ids: Tensor,
                rows: slice | None = None) -> Tensor | None:
    """``duplicate_mask`` (of the anchor ``rows`` only: ``(R, M)``), or None when the
    candidates' ids are all distinct (then only a row's own target shares its id, and nothing
    is masked): at B = 16,384 the mask is five B x B boolean tensors, seconds and gigabytes for
    nothing."""
    if torch.unique(candidate_ids).numel() == candidate_ids.numel():
        return None
    if rows is None:
        return duplicate_mask(row_ids, candidate_ids)
    own = own_columns(rows, candidate_ids.shape[0], row_ids.device)  # (R, M) each row's target
    return (row_ids[rows, None] == candidate_ids[None, :]) & ~own


def _one_direction(
    query: Tensor, candidates: Tensor, scale: Tensor | float, mask: Tensor | None,
    rows: slice | None = None, margin: float = 0.0,
) -> Tensor:
    """One direction's cross-entropy; with ``rows``, of those anchor rows only (``mask`` is
    then already theirs, ``(R, M)``)."""
    target = torch.arange(query.shape[0], device=query.device)
    if rows is not None:  # only these anchor rows; their targets keep their batch columns
        query, target = query[rows], target[rows]
    logits = scale * query @ candidates.T  # (B, M); target of row i is column i
    if margin:  # (s_ii − m) / τ: the target's logit only; margin 0 leaves the logits untouched
        on_target = F.one_hot(target, logits.shape[1]).to(logits.dtype)  # (B, M)
        logits = logits - (scale * margin) * on_target
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, target)


def info_nce(
    query: Tensor,
    key: Tensor,
    *,
    negatives: Tensor | None = None,
    temperature: float | Tensor = 0.05,
    symmetric: bool = False,
    normalize: bool = True,
    query_ids: Tensor | None = None,
    key_ids: Tensor | None = None,
    negative_ids: Tensor | None = None,
    rows: slice | None = None,
    margin: float = 0.0,
) -> Tensor:
    """InfoNCE with in-batch negatives and optional hard negatives.

    Row i of ``query`` is scored against every key and every hard negative in the batch
    (``B + B·K`` candidates); its target is key i.

    Args:
        query: ``(B, D)`` anchors.
        key: ``(B, D)`` positives.
        negatives: ``(B, K, D)`` hard negatives, shared by all rows as extra candidates.
        temperature: softmax temperature τ (logits are ``cos / τ``); a tensor for a learned one.
        symmetric: also the key → query direction (CLIP); the loss is the mean of both.
        normalize: compare by cosine (L2-normalise first) rather than by dot product.
        query_ids: ``(B,)`` ids of the anchors (text hash or label), masks the reverse direction.
        key_ids: ``(B,)`` ids of the positives; candidates with the same id are masked.
        negative_ids: ``(B, K)`` ids of the hard negatives.
        rows: score only these anchor rows (and, when symmetric, these key rows) against all
            candidates; the loss is then the mean over them. One process of a multi-process run
            passes its share of the gathered batch (``contralign.training.distributed``): the
            row-weighted sum over processes is the whole batch's loss.
        margin: additive margin m (LaBSE, arXiv:2007.01852): the positive's similarity is
            lowered by m before scaling, in both directions when symmetric (LaBSE: 0.3 on
            cosines). 0 is plain InfoNCE, bit for bit.

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes, or a margin that is negative or not finite.
    """
    if query.shape != key.shape or query.dim() != 2:
        raise ValueError(f"info_nce: query {tuple(query.shape)} and key {tuple(key.shape)} "
                         "must both be (B, D)")
    if negatives is not None and (negatives.dim() != 3 or negatives.shape[0] != query.shape[0]):
        raise ValueError(f"info_nce: negatives {tuple(negatives.shape)} must be (B, K, D)")
    check_margin("info_nce", margin)
    if normalize:
        query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
        negatives = F.normalize(negatives, dim=-1) if negatives is not None else None
    scale = 1.0 / temperature
    candidates = key if negatives is None else torch.cat([key, negatives.flatten(0, 1)])  # (M, D)
    mask = None
    if key_ids is not None:
        candidate_ids = key_ids
        if negatives is not None:
            if negative_ids is None:
                raise ValueError("info_nce: key_ids given with negatives needs negative_ids too")
            candidate_ids = torch.cat([key_ids, negative_ids.flatten()])
        mask = _duplicates(key_ids, candidate_ids, rows)
    loss = _one_direction(query, candidates, scale, mask, rows, margin)
    if not symmetric:
        return loss
    reverse_mask = _duplicates(query_ids, query_ids, rows) if query_ids is not None else None
    return (loss + _one_direction(key, query, scale, reverse_mask, rows, margin)) / 2


class InfoNCELoss(nn.Module):
    """``info_nce`` with its temperature as a fixed value or a learned parameter.

    A learned temperature is kept as a log logit scale, ``log(1/τ)``, clamped at
    ``log(100)`` as in CLIP (arXiv:2103.00020).

    Args:
        temperature: τ, or its initial value when learned. SimCSE uses 0.05.
        learnable_temperature: learn τ with the encoder.
        symmetric: add the key → query direction.
        tiled: compute the loss over ``tile_size × tile_size`` blocks of the logits
            (``tiled_info_nce``, arXiv:2410.17243): same value and gradients, memory
            ``O(B·D + tile_size²)`` instead of ``O(B·M)``.
        tile_size: rows and columns per block when tiled.
        margin: additive margin m on the positive's similarity (LaBSE's bidirectional dual
            encoder with additive margin softmax, arXiv:2007.01852: 0.3 with ``symmetric``).

    Raises:
        ValueError: a temperature that is not positive and finite (NaN included), a tile
            size below 1, or a margin that is negative or not finite.
    """

    def __init__(
        self, temperature: Temperature = 0.05, learnable_temperature: bool = False,
        symmetric: bool = False, tiled: bool = False,
        tile_size: Annotated[int, Ge(1)] = DEFAULT_TILE_SIZE,
        margin: Annotated[float, Ge(0), Lt(math.inf)] = 0.0,
    ) -> None:
        super().__init__()
        check_temperature("info_nce", temperature)
        check_tile_size(tile_size, "info_nce")
        check_margin("info_nce", margin)
        self.margin = margin
        self.symmetric = symmetric
        self.tiled = tiled
        self.tile_size = tile_size
        register_log_scale(self, temperature, learnable_temperature)

    @property
    def temperature(self) -> Tensor:
        return temperature_of(self)

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows`` (untiled only), that of those anchor rows (``info_nce``)."""
        batch.require("info_nce", "key")
        assert batch.key is not None
        if rows is not None and self.tiled:
            raise ValueError("info_nce: rows needs tiled: false")
        if self.tiled:
            return tiled_info_nce(
                batch.query, batch.key, negatives=batch.negatives, temperature=self.temperature,
                symmetric=self.symmetric, query_ids=batch.query_ids, key_ids=batch.key_ids,
                negative_ids=batch.negative_ids, tile_size=self.tile_size, margin=self.margin,
            )
        return info_nce(
            batch.query, batch.key, negatives=batch.negatives, temperature=self.temperature,
            symmetric=self.symmetric, query_ids=batch.query_ids, key_ids=batch.key_ids,
            negative_ids=batch.negative_ids, rows=rows, margin=self.margin,
        )
