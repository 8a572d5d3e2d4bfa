"""Tiled objectives: InfoNCE and SigLIP without ever holding the ``N × M`` logits.

The logits are visited one ``tile × tile`` block at a time. The softmax loss keeps a running
maximum and a running sum of exponentials per row (an online log-sum-exp); the sigmoid loss needs
only a running sum. The backward pass recomputes each block from the embeddings and accumulates
the gradients block by block, so memory grows with ``(N + M) · D + tile²`` rather than with
``N · M``: the idea of Inf-CL (Cheng et al. 2024, "Breaking the Memory Barrier",
arXiv:2410.17243), without its multi-GPU ring.

The softmax loss takes InfoNCE's additive margin (LaBSE, arXiv:2007.01852): the target's logit
is ``scale · (s_ii − m)``, so the scale's gradient gains ``−m · Σ_i W_ii``.

Both losses equal their plain forms (``info_nce`` in ``contrastive.py``, ``sigmoid_loss`` in
``sigmoid.py``) in value and gradients; L2 normalisation and the temperature's reciprocal stay
outside the custom ``autograd.Function`` so autograd differentiates them as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_TILE_SIZE = 4096


def check_tile_size(tile_size: int, objective: str) -> None:
    """Raise ``ValueError`` naming the objective unless ``tile_size`` is a positive integer."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f"{objective}: tile_size must be an integer >= 1, got {tile_size!r}")


def check_margin(objective: str, margin: float) -> None:
    """Raise ``ValueError`` naming the objective unless ``margin`` is finite and >= 0."""
    if not 0 <= margin < math.inf:  # also rejects NaN, which compares False to anything
        raise ValueError(f"{objective}: margin must be finite and >= 0, got {margin}")


def _spans(length: int, tile_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile_size, length)) for start in range(0, length, tile_size)]


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    # Sums over many tiles in half precision lose the small terms: accumulate in float32 at least.
    return torch.promote_types(dtype, torch.float32)


def _scalar(value: float | Tensor, like: Tensor, name: str) -> Tensor:
    """``value`` as a 0-dim tensor of ``like``'s dtype and device, still differentiable."""
    tensor = torch.as_tensor(value, device=like.device).to(like.dtype)
    if tensor.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(tensor.shape)}")
    return tensor.reshape(())


def _softmax_tile(
    rows: Tensor, cols: Tensor, scale: Tensor, ids: Tensor | None, r0: int, c0: int,
    dtype: torch.dtype, margin: float = 0.0,
) -> Tensor:
    """The ``(r, c)`` logits ``scale · rows · colsᵀ`` of one tile, masked duplicates at −inf,
    the targets' lowered by ``scale · margin``.

    ``rows`` and ``cols`` are the tile's slices, starting at global row ``r0`` and column ``c0``;
    ``ids[i]`` is the id of row i's target (column i), so a column with the same id and another
    index is the row's positive seen again, not a negative.
    """
    logits = (rows @ cols.T).to(dtype).mul_(scale)  # (r, c)
    if margin:  # the target (global row == global column) only; 0 leaves the logits as they are
        logits.diagonal(r0 - c0).sub_(scale * margin)
    if ids is not None:
        same = ids[r0 : r0 + rows.shape[0], None] == ids[None, c0 : c0 + cols.shape[0]]  # (r, c)
        same.diagonal(r0 - c0).fill_(False)  # the target itself (global row == global column)
        logits.masked_fill_(same, float("-inf"))
    return logits


def _bilinear_grads(
    ctx: Any, rows: Tensor, cols: Tensor, scale: Tensor,
    weights: Callable[[int, int, int, int], Tensor],
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients of a loss of the logits ``scale · rows · colsᵀ``, one tile at a time.

    ``weights(r0, r1, c0, c1)`` gives the ``(r, c)`` tile of W = dLoss/dlogits (in the
    accumulator dtype). With A = W·cols and C = Wᵀ·rows: dRows = scale·A, dCols = scale·C,
    dScale = Σ_ij W_ij rows_i·cols_j = Σ_i rows_i·A_i (only when ``scale`` needs it).
    """
    dtype = _accumulator_dtype(rows.dtype)
    row_sum = torch.zeros(rows.shape, dtype=dtype, device=rows.device)  # (B, D) A
    col_sum = torch.zeros(cols.shape, dtype=dtype, device=cols.device)  # (M, D) C
    for r0, r1 in _spans(rows.shape[0], ctx.tile_size):
        for c0, c1 in _spans(cols.shape[0], ctx.tile_size):
            tile = weights(r0, r1, c0, c1).to(rows.dtype)
            row_sum[r0:r1] += tile @ cols[c0:c1]  # (r, D)
            col_sum[c0:c1] += tile.T @ rows[r0:r1]  # (c, D)
    grad_scale = None
    if ctx.needs_input_grad[2]:
        grad_scale = (rows.to(dtype) * row_sum).sum().to(scale.dtype)
    return (row_sum * scale).to(rows.dtype), (col_sum * scale).to(cols.dtype), grad_scale


class TiledCrossEntropy(torch.autograd.Function):
    """Per-row softmax cross-entropy of ``scale · rows · colsᵀ`` with target column i for row i.

    ``apply(rows, cols, scale, ids, tile_size, margin) -> (B,)``: ``rows`` ``(B, D)``, ``cols``
    ``(M, D)`` with ``M >= B``, ``scale`` a 0-dim tensor, ``ids`` ``(M,)`` candidate ids or None,
    ``margin`` a float m. Row i's loss is ``logsumexp_j(z_ij) − z_ii`` over the unmasked columns,
    ``z = scale · (rows · colsᵀ − m·I)``.
    """

    @staticmethod
    def forward(
        ctx: Any, rows: Tensor, cols: Tensor, scale: Tensor, ids: Tensor | None, tile_size: int,
        margin: float = 0.0,
    ) -> Tensor:
        dtype = _accumulator_dtype(rows.dtype)
        batch = rows.shape[0]
        positive = torch.empty(batch, dtype=dtype, device=rows.device)  # (B,) z_ii
        lse = torch.empty_like(positive)  # (B,)
        for r0, r1 in _spans(batch, tile_size):
            running_max = torch.full((r1 - r0,), float("-inf"), dtype=dtype, device=rows.device)
            running_sum = torch.zeros_like(running_max)  # (r,) Σ exp(z − running_max)
            for c0, c1 in _spans(cols.shape[0], tile_size):
                logits = _softmax_tile(rows[r0:r1], cols[c0:c1], scale, ids, r0, c0, dtype,
                                       margin)
                # z_ii from the very tile the log-sum-exp sees, so a lone target gives 0 exactly.
                positive[max(r0, c0) : min(r1, c1)] = logits.diagonal(r0 - c0)
                new_max = torch.maximum(running_max, logits.amax(dim=1))  # (r,)
                # −inf while every column so far was masked: any finite shift works, all terms 0.
                shift = new_max.nan_to_num(neginf=0.0)
                tile_sum = logits.sub_(shift[:, None]).exp_().sum(dim=1)
                running_sum = running_sum * (running_max - shift).exp() + tile_sum
                running_max = new_max
            # The target is never masked, so every row ends with a finite maximum.
            lse[r0:r1] = running_max + running_sum.log()
        ctx.save_for_backward(rows, cols, scale, ids, lse)
        ctx.tile_size, ctx.margin = tile_size, margin
        return (lse - positive).to(rows.dtype)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        rows, cols, scale, ids, lse = ctx.saved_tensors
        grad = grad_loss.to(lse.dtype)
        margin = ctx.margin
        target_sum = torch.zeros((), dtype=lse.dtype, device=rows.device)  # Σ_i W_ii

        # dLoss/dz_ij = g_i (softmax_ij − δ_ij) =: W_ij
        def weights(r0: int, r1: int, c0: int, c1: int) -> Tensor:
            tile = _softmax_tile(rows[r0:r1], cols[c0:c1], scale, ids, r0, c0, lse.dtype,
                                 margin)
            tile.sub_(lse[r0:r1, None]).exp_()  # (r, c) softmax; masked entries are 0
            tile.diagonal(r0 - c0).sub_(1.0)  # minus the one-hot target
            tile.mul_(grad[r0:r1, None])
            if margin:
                target_sum.add_(tile.diagonal(r0 - c0).sum())
            return tile

        grad_rows, grad_cols, grad_scale = _bilinear_grads(ctx, rows, cols, scale, weights)
        if grad_scale is not None and margin:  # z_ii = scale · (s_ii − m): −m · Σ_i W_ii more
            grad_scale = grad_scale - (margin * target_sum).to(grad_scale.dtype)
        return grad_rows, grad_cols, grad_scale, None, None, None


class TiledSigmoid(torch.autograd.Function):
    """Per-row sigmoid loss ``Σ_j −log σ(z_ij · (scale · rows_i·cols_j + bias))``, ``z = 2I − 1``.

    ``apply(rows, cols, scale, bias, tile_size) -> (B,)``: ``rows`` ``(B, D)``, ``cols``
    ``(M, D)``, ``scale`` and ``bias`` 0-dim tensors; pair (i, i) is the match.
    """

    @staticmethod
    def forward(
        ctx: Any, rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor, tile_size: int
    ) -> Tensor:
        dtype = _accumulator_dtype(rows.dtype)
        losses = torch.zeros(rows.shape[0], dtype=dtype, device=rows.device)  # (B,)
        for r0, r1 in _spans(rows.shape[0], tile_size):
            for c0, c1 in _spans(cols.shape[0], tile_size):
                logits = (rows[r0:r1] @ cols[c0:c1].T).to(dtype).mul_(scale).add_(bias)  # (r, c)
                # −log σ(z·l) = softplus(−z·l): softplus(l) off the diagonal, softplus(−l) on it.
                logits.diagonal(r0 - c0).neg_()
                losses[r0:r1] += F.softplus(logits).sum(dim=1)
        ctx.save_for_backward(rows, cols, scale, bias)
        ctx.tile_size = tile_size
        return losses.to(rows.dtype)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        rows, cols, scale, bias = ctx.saved_tensors
        dtype = _accumulator_dtype(rows.dtype)
        grad = grad_loss.to(dtype)
        grad_bias = torch.zeros((), dtype=dtype, device=rows.device)  # dBias = Σ_ij W_ij

        # dLoss/dl_ij = g_i (σ(l_ij) − δ_ij) =: W_ij
        def weights(r0: int, r1: int, c0: int, c1: int) -> Tensor:
            tile = (rows[r0:r1] @ cols[c0:c1].T).to(dtype).mul_(scale).add_(bias)
            tile.sigmoid_().diagonal(r0 - c0).sub_(1.0)  # (r, c)
            tile.mul_(grad[r0:r1, None])
            grad_bias.add_(tile.sum())
            return tile

        grad_rows, grad_cols, grad_scale = _bilinear_grads(ctx, rows, cols, scale, weights)
        return grad_rows, grad_cols, grad_scale, grad_bias.to(bias.dtype), None


def tiled_info_nce(
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
    tile_size: int = DEFAULT_TILE_SIZE,
    margin: float = 0.0,
) -> Tensor:
    """``info_nce`` computed over ``tile × tile`` blocks of the logits (arXiv:2410.17243).

    Same arguments and value as ``contralign.objectives.contrastive.info_nce``: row i of
    ``query`` is scored against every key and every hard negative (``M = B + B·K`` candidates),
    its target is key i, and candidates sharing the target's id are masked. Peak memory is
    ``O((B + M)·D + tile_size²)`` instead of ``O(B·M)``.

    Args:
        query: ``(B, D)`` anchors.
        key: ``(B, D)`` positives.
        negatives: ``(B, K, D)`` hard negatives, shared by all rows as extra candidates.
        temperature: softmax temperature τ; a tensor (0-dim or one element) for a learned one.
        symmetric: also the key → query direction; the loss is the mean of both.
        normalize: compare by cosine rather than by dot product.
        query_ids: ``(B,)`` ids of the anchors, masks the reverse direction.
        key_ids: ``(B,)`` ids of the positives; candidates with the same id are masked.
        negative_ids: ``(B, K)`` ids of the hard negatives.
        tile_size: rows and columns per block; larger is faster and holds more memory.
        margin: additive margin m on the positive's similarity, in both directions
            (arXiv:2007.01852).

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes, ``key_ids`` with negatives but no ``negative_ids``, a
            temperature with more than one element, a tile size below 1, or a margin that is
            negative or not finite.
    """
    check_tile_size(tile_size, "tiled_info_nce")
    check_margin("tiled_info_nce", margin)
    if query.shape != key.shape or query.dim() != 2:
        raise ValueError(f"tiled_info_nce: query {tuple(query.shape)} and key "
                         f"{tuple(key.shape)} must both be (B, D)")
    if negatives is not None and (negatives.dim() != 3 or negatives.shape[0] != query.shape[0]):
        raise ValueError(f"tiled_info_nce: negatives {tuple(negatives.shape)} must be (B, K, D)")
    if normalize:
        query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
        negatives = F.normalize(negatives, dim=-1) if negatives is not None else None
    scale = _scalar(1.0 / temperature, query, "tiled_info_nce: temperature")
    candidates = key if negatives is None else torch.cat([key, negatives.flatten(0, 1)])  # (M, D)
    candidate_ids = key_ids
    if key_ids is not None and negatives is not None:
        if negative_ids is None:
            raise ValueError("tiled_info_nce: key_ids given with negatives needs negative_ids too")
        candidate_ids = torch.cat([key_ids, negative_ids.flatten()])  # (M,)
    loss = TiledCrossEntropy.apply(query, candidates, scale, candidate_ids, tile_size,
                                   margin).mean()
    if not symmetric:
        return loss
    reverse = TiledCrossEntropy.apply(key, query, scale, query_ids, tile_size, margin).mean()
    return (loss + reverse) / 2


def tiled_sigmoid_loss(
    query: Tensor,
    key: Tensor,
    *,
    logit_scale: float | Tensor,
    logit_bias: float | Tensor,
    normalize: bool = True,
    tile_size: int = DEFAULT_TILE_SIZE,
) -> Tensor:
    """``sigmoid_loss`` (SigLIP, arXiv:2303.15343) over ``tile × tile`` blocks of the logits.

    Same arguments and value as ``contralign.objectives.sigmoid.sigmoid_loss``:
    ``−1/B Σ_ij log σ(z_ij (t · cos(query_i, key_j) + b))``, ``z = 2I − 1``, with peak memory
    ``O(B·D + tile_size²)`` instead of ``O(B²)``.

    Args:
        query: ``(B, D)`` one side.
        key: ``(B, D)`` the other side; row i matches query i.
        logit_scale: t, already exponentiated (a tensor to learn it).
        logit_bias: b (a tensor to learn it).
        normalize: compare by cosine rather than by dot product.
        tile_size: rows and columns per block.

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes, a scale or bias with more than one element, or a tile
            size below 1.
    """
    check_tile_size(tile_size, "tiled_sigmoid_loss")
    if query.shape != key.shape or query.dim() != 2:
        raise ValueError(f"tiled_sigmoid_loss: query {tuple(query.shape)} and key "
                         f"{tuple(key.shape)} must both be (B, D)")
    if normalize:
        query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    scale = _scalar(logit_scale, query, "tiled_sigmoid_loss: logit_scale")
    bias = _scalar(logit_bias, query, "tiled_sigmoid_loss: logit_bias")
    return TiledSigmoid.apply(query, key, scale, bias, tile_size).sum() / query.shape[0]
