"""Swapped prediction over learnable prototypes: SwAV (Caron et al. 2020, arXiv:2006.09882).

Each view's embedding is scored against K prototypes. The Sinkhorn–Knopp algorithm turns one
view's scores into soft *codes* (an equipartitioned assignment of the batch to the prototypes);
the other view must predict those codes with a softmax over its own scores, and vice versa.

Paper defaults: K = 3000 prototypes (ImageNet), τ = 0.1, ε = 0.05, 3 Sinkhorn iterations,
codes computed for the two global crops only (``crops_for_assign``) and predicted by every other
crop. With small batches the paper prepends a queue of earlier embeddings to the batch for the
Sinkhorn step (``queue_size``), and it freezes the prototypes during the first epoch
(``freeze_prototypes_steps``); ``SwAVLoss`` does all three.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, cast

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from annotated_types import Ge, Gt, Lt
from torch import Tensor, nn

from contralign.core.dist import world_size
from contralign.objectives.inputs import Embedded
from contralign.objectives.momentum import KeyQueue
from contralign.objectives.temperature import Temperature, check_temperature


def _all_reduce(value: Tensor, op: Any = torch_dist.ReduceOp.SUM) -> Tensor:
    """In-place all-reduce across ranks; a no-op in one process."""
    if world_size() > 1:
        torch_dist.all_reduce(value, op=op)
    return value


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Soft codes from prototype scores by Sinkhorn–Knopp (arXiv:2006.09882, Algorithm 1).

    ``Q = exp(scores / ε)``, then ``iterations`` rounds of: scale each prototype's column so
    every prototype holds total mass 1/K, then each sample's row so every sample holds 1/B.
    Finally rows are scaled to sum to 1. So the returned codes are a soft assignment: each row
    sums to exactly 1, and each column sums to B/K (each prototype gets an equal share of the
    batch) up to the error left by the finite number of iterations. B counts the rows of all
    ranks: with more than one process the column sums are all-reduced, so the result is that of
    one process holding the whole batch. Computed in the log domain (the same scalings), so
    large ``scores / ε`` neither overflow nor underflow.

    Runs without gradient: the codes are targets.

    Args:
        scores: ``(B, K)`` similarities of the embeddings to the prototypes.
        epsilon: ε, the entropy regulariser (smaller = sharper codes); 0.05 in the paper.
        iterations: Sinkhorn rounds; 3 in the paper.

    Returns:
        ``(B, K)`` codes, rows summing to 1, in the dtype of ``scores``.

    Raises:
        ValueError: ``scores`` not 2-D, an ε that is not finite and > 0, or negative iterations.
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn: scores {tuple(scores.shape)} must be (B, K)")
    if not 0 < epsilon < math.inf:
        raise ValueError(f"sinkhorn: epsilon must be finite and > 0, got {epsilon}")
    if iterations < 0:
        raise ValueError(f"sinkhorn: iterations must be >= 0, got {iterations}")
    # In the log domain: the same scalings as the paper's Q *= r/u and Q *= c/v, but a column
    # whose scores are all far below the maximum cannot underflow to 0 (0/0 in the paper's
    # form). The paper's first step, Q /= ΣQ, is a constant the first scaling removes.
    log_codes = scores.detach().to(torch.promote_types(scores.dtype, torch.float32)) / epsilon
    n_prototypes = log_codes.shape[1]
    n_samples = _all_reduce(torch.tensor(float(log_codes.shape[0]), dtype=log_codes.dtype,
                                         device=log_codes.device))
    for _ in range(iterations):
        # Each prototype (column) to mass 1/K, its sum taken over the rows of every rank.
        log_codes = log_codes - (_logsumexp_over_ranks(log_codes) + math.log(n_prototypes))
        # Each sample (row) to mass 1/B.
        log_codes = log_codes - (torch.logsumexp(log_codes, dim=1, keepdim=True)
                                 + n_samples.log())
    return torch.softmax(log_codes, dim=1).to(scores.dtype)  # (B, K); rows sum to 1


def _logsumexp_over_ranks(log_values: Tensor) -> Tensor:
    """``(1, K)`` log Σ_b exp(log_values[b, k]) over the rows of all ranks."""
    top = _all_reduce(log_values.max(dim=0, keepdim=True).values, torch_dist.ReduceOp.MAX)
    total = _all_reduce(torch.exp(log_values - top).sum(dim=0, keepdim=True))  # (1, K) >= 1
    return top + total.log()


def swav_multi_view_loss(
    views: Tensor,
    prototypes: Tensor,
    *,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
    codes: Tensor | None = None,
    assign: int | None = None,
) -> Tensor:
    """SwAV over V ≥ 2 views: the codes of each of the first A views (``assign``; all V when
    None) are predicted by every other view.

    ``loss = mean_{i < A} mean_{v ≠ i} ℓ(z_v, q_i)``: the cross-entropy
    ``ℓ(z_v, q_i) = −mean_b Σ_k q_i[b, k] · log softmax(ẑ_v[b] · Cᵀ / τ)_k`` of view v's
    prediction against view i's codes ``q_i = sinkhorn(ẑ_i · Cᵀ)`` (targets, no gradient), with
    ``ẑ`` the L2-normalised z (the paper's projection head ends with a normalisation). The
    prototypes
    are used as given: the paper normalises them *before* the step (``SwAVLoss`` does), so the
    gradient reaches the raw prototype matrix, as in the paper's code.

    Args:
        views: ``(B, V, D)`` embeddings of V views of each item.
        prototypes: ``(K, D)`` prototype vectors (unit rows expected).
        temperature: τ of the prediction softmax; 0.1 in the paper.
        epsilon: ε of the Sinkhorn step; 0.05 in the paper.
        iterations: Sinkhorn rounds; 3 in the paper.
        codes: ``(B, A, K)`` codes to use instead of computing them (e.g. with a queue).
        assign: A, the number of leading views whose codes are targets (the paper: the 2
            global crops of multi-crop); None: every view.

    Returns:
        The scalar loss.

    Raises:
        ValueError: fewer than 2 views, mismatched widths, an ``assign`` outside 1..V or a bad
            temperature.
    """
    if views.dim() != 3 or views.shape[1] < 2:
        raise ValueError(f"swav: views {tuple(views.shape)} must be (B, V, D) with V >= 2")
    if prototypes.dim() != 2 or prototypes.shape[1] != views.shape[2]:
        raise ValueError(f"swav: prototypes {tuple(prototypes.shape)} must be (K, "
                         f"{views.shape[2]})")
    check_temperature("swav", temperature)
    n_views = views.shape[1]
    n_assign = n_views if assign is None else assign
    if not 1 <= n_assign <= n_views:
        raise ValueError(f"swav: assign must be between 1 and {n_views} views, got {assign}")
    scores = F.normalize(views, dim=-1) @ prototypes.T  # (B, V, K)
    if codes is None:
        codes = torch.stack([sinkhorn(scores[:, i], epsilon, iterations)
                             for i in range(n_assign)], dim=1)  # (B, A, K)
    elif codes.shape != (*scores.shape[:1], n_assign, scores.shape[2]):
        raise ValueError(f"swav: codes {tuple(codes.shape)} must be "
                         f"{(scores.shape[0], n_assign, scores.shape[2])}")
    # One softmax over the contiguous last axis (per-view slices are strided, and slow on CPU).
    log_probabilities = F.log_softmax(scores / temperature, dim=-1)  # (B, V, K)
    codes = codes.detach()
    total = scores.new_zeros(())
    for i in range(n_assign):
        for v in range(n_views):
            if v != i:  # view v predicts view i's codes: −mean_b Σ_k q^i_bk log p^v_bk
                total = total - (codes[:, i] * log_probabilities[:, v]).sum(dim=-1).mean()
    return total / (n_assign * (n_views - 1))


def swav_loss(
    z1: Tensor,
    z2: Tensor,
    prototypes: Tensor,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
) -> Tensor:
    """SwAV's swapped prediction for two views (arXiv:2006.09882, Eq. 1 and Algorithm 1).

    ``(ℓ(z2, q1) + ℓ(z1, q2)) / 2`` where ``q_i = sinkhorn(ẑ_i · Cᵀ)`` (no gradient) and
    ``ℓ(z, q) = −mean_b Σ_k q_bk log softmax(ẑ_b · Cᵀ / τ)_k``, ``ẑ`` the L2-normalised z.

    Args:
        z1: ``(B, D)`` the first view.
        z2: ``(B, D)`` the second view.
        prototypes: ``(K, D)`` prototypes (unit rows expected).
        temperature: τ; 0.1 in the paper.
        epsilon: ε; 0.05 in the paper.
        iterations: Sinkhorn rounds; 3 in the paper.

    Returns:
        The scalar loss.

    Raises:
        ValueError: mismatched shapes or bad settings.
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"swav: z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must both be "
                         "(B, D)")
    return swav_multi_view_loss(torch.stack([z1, z2], dim=1), prototypes,
                                temperature=temperature, epsilon=epsilon, iterations=iterations)


class SwAVLoss(nn.Module):
    """SwAV with its learnable prototypes (arXiv:2006.09882).

    Before each loss the prototype rows are L2-normalised in place, without gradient, as the
    paper does before every step; the gradient then reaches the (unit) prototype matrix.

    ``forward`` uses ``views`` ``(B, V, D)`` when present (V ≥ 2: the first ``assign_views``
    views' codes are predicted by every other view), else ``query`` and ``key`` as two views.

    The paper's two aids for small batches and early training, both state saved in
    ``state_dict`` (and so in checkpoints) and advanced only in training mode (call the module
    once per training step):

    * ``queue_size`` > 0: a FIFO of this process's earlier embeddings (unit rows) per assigned
      view. Once full, its scores are stacked above the batch's for the Sinkhorn step, so the
      equipartition spreads over ``queue_size + B`` rows, and the batch's codes are the last B
      rows; this batch's embeddings are then enqueued. With more than one process each holds
      its own queue (the paper's per-GPU queue; Sinkhorn sums over all of them).
    * ``freeze_prototypes_steps``: during the first steps the prototypes get no gradient (the
      paper: its first epoch, 313 steps of 4,096 images), so the optimiser leaves them as drawn.

    Args:
        dim: the embedding width D.
        n_prototypes: K; the paper uses 3000 on ImageNet. Small datasets want far fewer (K well
            below the number of training items, and a batch large enough that B/K stays near or
            above 1, so the equal-partition constraint is meaningful).
        temperature: τ of the prediction softmax (0.1).
        epsilon: ε of the Sinkhorn step (0.05).
        iterations: Sinkhorn rounds (3).
        assign_views: how many leading views get codes (the paper: 2, the global crops of
            multi-crop); None: every view.
        queue_size: earlier embeddings per assigned view for the Sinkhorn step (0: none; the
            paper 3,840 with batches of 256).
        freeze_prototypes_steps: training steps without a gradient to the prototypes.

    Raises:
        ValueError: non-positive ``dim``, ``n_prototypes``, τ or ε, or negative iterations.
    """

    steps: Tensor

    def __init__(self, dim: int, n_prototypes: Annotated[int, Ge(1)] = 3000,
                 temperature: Temperature = 0.1,
                 epsilon: Annotated[float, Gt(0), Lt(math.inf)] = 0.05,
                 iterations: Annotated[int, Ge(0)] = 3,
                 assign_views: Annotated[int, Ge(1)] | None = None,
                 queue_size: Annotated[int, Ge(0)] = 0,
                 freeze_prototypes_steps: Annotated[int, Ge(0)] = 0) -> None:
        super().__init__()
        if dim < 1 or n_prototypes < 1:
            raise ValueError(f"swav: dim and n_prototypes must be >= 1, got dim={dim}, "
                             f"n_prototypes={n_prototypes}")
        for name, value in (("temperature", temperature), ("epsilon", epsilon)):
            if not 0 < value < math.inf:
                raise ValueError(f"swav: {name} must be finite and > 0, got {value}")
        if iterations < 0 or queue_size < 0 or freeze_prototypes_steps < 0:
            raise ValueError(f"swav: iterations, queue_size and freeze_prototypes_steps must be "
                             f">= 0, got {iterations}, {queue_size}, {freeze_prototypes_steps}")
        if assign_views is not None and assign_views < 1:
            raise ValueError(f"swav: assign_views must be >= 1, got {assign_views}")
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.iterations = int(iterations)
        self.assign_views = assign_views
        self.freeze_prototypes_steps = int(freeze_prototypes_steps)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(n_prototypes, dim), dim=1))
        # One queue per assigned view, made on the first batch (its number of views is known
        # then); an empty list without a queue.
        self.queue_size = int(queue_size)
        self.queues = nn.ModuleList()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, batch: Embedded) -> Tensor:
        if batch.views is not None:
            views = batch.views  # (B, V, D)
        else:
            batch.require("swav", "key")
            assert batch.key is not None
            views = torch.stack([batch.query, batch.key], dim=1)  # (B, 2, D)
        with torch.no_grad():
            self.prototypes.copy_(F.normalize(self.prototypes, dim=1))
        frozen = int(self.steps) < self.freeze_prototypes_steps
        prototypes = self.prototypes.detach() if frozen else self.prototypes
        # A batch of fewer views than assigned (e.g. two views from ``query``/``key``) assigns all.
        assign = None if self.assign_views is None else min(self.assign_views, views.shape[1])
        codes = self._queued_codes(views, assign) if self.queue_size else None
        loss = swav_multi_view_loss(views, prototypes, temperature=self.temperature,
                                    epsilon=self.epsilon, iterations=self.iterations,
                                    codes=codes, assign=assign)
        if self.training:
            self.steps += 1
            for queue, view in zip(self.key_queues, F.normalize(views.detach(), dim=-1).unbind(1),
                                   strict=False):  # after the codes: as the paper
                queue.enqueue(view)
        return loss

    @property
    def key_queues(self) -> list[KeyQueue]:
        """The queues of the assigned views (empty without a queue or before the first batch)."""
        return [cast(KeyQueue, queue) for queue in self.queues]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any) -> None:
        # The queues are made on the first batch: a checkpoint taken after it holds them, so
        # make as many (of the saved width) before loading into a fresh module.
        saved = [key for key in state_dict
                 if key.startswith(f"{prefix}queues.") and key.endswith(".keys")]
        if saved and not self.queues:
            width = state_dict[saved[0]].shape[1]
            self.queues.extend(KeyQueue(width, self.queue_size) for _ in saved)
        super()._load_from_state_dict(state_dict, prefix, *args)

    @torch.no_grad()
    def _queued_codes(self, views: Tensor, assign: int | None) -> Tensor:
        """``(B, A, K)`` codes of the assigned views, each view's Sinkhorn step run over its full
        queue's rows and the batch's (the batch's alone while the queue fills)."""
        n_assign = views.shape[1] if assign is None else assign
        if not self.queues:
            self.queues.extend(KeyQueue(views.shape[2], self.queue_size).to(views.device)
                               for _ in range(n_assign))
        unit = F.normalize(views[:, :n_assign], dim=-1)  # (B, A, D)
        codes = []
        for i, queue in enumerate(self.key_queues):
            rows = unit[:, i]
            if len(queue) == queue.size:
                rows = torch.cat([queue.negatives().to(rows), rows])  # (n + B, D)
            codes.append(sinkhorn(rows @ self.prototypes.T, self.epsilon,
                                  self.iterations)[-views.shape[0]:])
        return torch.stack(codes, dim=1)  # (B, A, K)
