"""WhitenedCSE: contrastive learning on shuffled-group-whitened embeddings (Zhuo et al., ACL 2023,
"WhitenedCSE: Whitening-based Contrastive Learning of Sentence Embeddings", arXiv:2305.17746).

**Shuffled group whitening (SGW).** Shuffle the D feature dimensions with a random permutation,
split them into G contiguous groups of D/G, whiten each group over the batch (centre, then
multiply by the inverse square root of the group's covariance, so the group's covariance becomes
the identity), and undo the shuffle. Whitening within groups (group whitening, as in Decorrelated
Batch Normalization, Huang et al. 2018, arXiv:1804.08450) keeps each covariance small enough to
estimate from one batch; the random partition (as in CW-RGP, Weng et al. 2022, arXiv:2210.03586)
makes every shuffle a different transform of the same batch.

**Which whitening.** WhitenedCSE uses ZCA whitening, ``W = U Λ^{-1/2} Uᵀ`` from the eigen-
decomposition ``Σ = U Λ Uᵀ`` (the authors' code: ``engine='symeig'``), with the biased covariance
(divided by B). W-MSE (Ermolov et al. 2021, arXiv:2007.06346) whitens with the Cholesky factor,
``W = L^{-T}`` for ``Σ = L Lᵀ``; it is available as ``method="cholesky"``. Both give identity
covariance; they differ by a rotation.

**Multiple positives.** Because each shuffle gives a different whitened version of a batch, the
paper turns one batch into several positives: the anchors are whitened with one shuffle, and P
positive batches each with their own. The loss is the sum over positives of an InfoNCE with
in-batch negatives taken from that positive's batch (the authors' code: ``loss1 + loss2`` with
``num_pos = 3``, i.e. one anchor and P = 2 positives, τ = 0.05, cosine similarity)::

    loss = Σ_{p=1..P} mean_i −log( exp(cos(a_i, h^p_i)/τ) / Σ_j exp(cos(a_i, h^p_j)/τ) )

with ``a = SGW_{π_0}(anchor)`` and ``h^p = SGW_{π_p}(positive_p)``. In the authors' code every
batch comes from its own dropout pass and each is whitened with its own statistics; here
``views`` ``(B, V, D)`` reproduce that (view 0 is the anchor, views 1..V−1 the positives), and a
plain ``(query, key)`` batch uses the key whitened with P different shuffles as the positives.

**Differences from the paper.** The authors whiten inside the projection head (pooled output →
SGW → dense → tanh) and use 128 groups on BERT-base's 768 dimensions (6 per group). An objective
here sees only embeddings, so it whitens the embeddings it is given and compares them by cosine.
Their code also rebuilds the covariance with ``torch.tensor(...)``, which cuts the whitening
matrix out of the graph; ``stop_gradient=True`` reproduces that, the default backpropagates
through the whitening matrix.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

import torch
from annotated_types import Ge, Lt
from torch import Tensor, nn

from contralign.core.errors import BatchError
from contralign.objectives.contrastive import info_nce
from contralign.objectives.inputs import Embedded
from contralign.objectives.temperature import Temperature

WhiteningMethod = Literal["zca", "cholesky"]
WHITENING_METHODS: tuple[str, ...] = get_args(WhiteningMethod)


def _check_permutation(permutation: Tensor, dim: int) -> None:
    expected = torch.arange(dim, device=permutation.device)
    if permutation.shape != (dim,) or not torch.equal(permutation.sort().values, expected):
        raise ValueError(f"group_whiten: permutation {tuple(permutation.shape)} must be a "
                         f"permutation of range({dim})")


def _check_arguments(x: Tensor, groups: int, eps: float, method: str) -> None:
    if method not in WHITENING_METHODS:
        raise ValueError(f"group_whiten: method must be one of {WHITENING_METHODS}, got "
                         f"{method!r}")
    if x.dim() != 2:
        raise ValueError(f"group_whiten: x {tuple(x.shape)} must be (B, D)")
    rows, dim = x.shape
    if groups < 1 or dim % groups:
        raise BatchError(f"group_whiten: groups must divide the embedding width {dim}, got "
                         f"{groups} (set objective.groups)")
    if rows <= dim // groups:
        raise BatchError(f"group_whiten: a batch of {rows} rows cannot whiten groups of "
                         f"{dim // groups} dimensions (needs more rows than dimensions per group: "
                         "raise objective.groups or train.batch_size)")
    if not 0 <= eps < math.inf:
        raise ValueError(f"group_whiten: eps must be finite and >= 0, got {eps}")


def _whiten_groups(centred: Tensor, covariance: Tensor, method: WhiteningMethod) -> Tensor:
    """``(G, B, s)`` rows of ``centred`` times each group's whitening matrix."""
    if method == "zca":
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # (G, s), (G, s, s)
        # W = U Λ^{-1/2} Uᵀ, symmetric: the whitening closest to the identity.
        whitening = (eigenvectors * eigenvalues.rsqrt()[:, None, :]) @ eigenvectors.mT
        return centred @ whitening  # (G, B, s)
    lower = torch.linalg.cholesky(covariance)  # (G, s, s), Σ = L Lᵀ
    # Rows x ↦ x L^{-T}: solve L yᵀ = xᵀ.
    return torch.linalg.solve_triangular(lower, centred.mT, upper=False).mT  # (G, B, s)


def group_whiten(
    x: Tensor,
    groups: int,
    permutation: Tensor | None = None,
    eps: float = 1e-5,
    method: WhiteningMethod = "zca",
    stop_gradient: bool = False,
) -> Tensor:
    """Shuffled group whitening of a batch (arXiv:2305.17746, Sec. 3).

    ``x[:, permutation]`` is split into ``groups`` contiguous groups of ``s = D / groups``
    dimensions; each group is centred over the batch and multiplied by ``(Σ_g + eps·I)^{-1/2}``
    (ZCA) or ``L_g^{-T}`` (Cholesky), where ``Σ_g`` is its biased covariance (divided by B); the
    result is put back in the original dimension order. Each group of the output then has
    covariance ``Σ_g (Σ_g + eps·I)^{-1}`` ≈ I; dimensions in different groups stay correlated.

    Args:
        x: ``(B, D)`` embeddings; B must exceed ``s`` (else the covariance is singular).
        groups: G, the number of groups; must divide D.
        permutation: ``(D,)`` the shuffle; group g holds dimensions
            ``permutation[g*s:(g+1)*s]``. None: no shuffle.
        eps: added to each covariance's diagonal for stability.
        method: ``"zca"`` (WhitenedCSE) or ``"cholesky"`` (W-MSE).
        stop_gradient: treat the whitening matrices as constants in backpropagation (the
            authors' code does, see the module docstring).

    Returns:
        ``(B, D)`` whitened embeddings, in the original dimension order.

    Raises:
        ValueError: a bad shape, group count, permutation, eps or method.
    """
    _check_arguments(x, groups, eps, method)
    rows, dim = x.shape
    size = dim // groups
    if permutation is not None:
        _check_permutation(permutation, dim)
        x = x[:, permutation]
    grouped = x.reshape(rows, groups, size).transpose(0, 1)  # (G, B, s)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (G, B, s)
    covariance = centred.mT @ centred / rows  # (G, s, s), biased as in the paper's code
    covariance = covariance + eps * torch.eye(size, dtype=x.dtype, device=x.device)
    if stop_gradient:
        covariance = covariance.detach()
    white = _whiten_groups(centred, covariance, method).transpose(0, 1).reshape(rows, dim)
    if permutation is None:
        return white
    return white[:, torch.argsort(permutation)]  # (B, D) back in the original order


def whitened_cse_loss(
    anchor: Tensor,
    positives: Tensor,
    permutations: Tensor,
    *,
    groups: int,
    temperature: float = 0.05,
    eps: float = 1e-5,
    method: WhiteningMethod = "zca",
    stop_gradient: bool = False,
) -> Tensor:
    """WhitenedCSE's multi-positive InfoNCE on shuffled-group-whitened batches.

    ``Σ_p info_nce(SGW_{π_0}(anchor), SGW_{π_p}(positives[:, p-1]), τ)`` for p = 1..P, each
    whitened with its own batch statistics (see the module docstring).

    Args:
        anchor: ``(B, D)`` anchors.
        positives: ``(B, P, D)`` P positive batches (may be one batch repeated).
        permutations: ``(P + 1, D)`` shuffles: row 0 for the anchors, row p for positive p.
        groups: G, the number of whitening groups.
        temperature: τ; 0.05 in the paper.
        eps: added to the covariance diagonals.
        method: ``"zca"`` or ``"cholesky"``.
        stop_gradient: constant whitening matrices in backpropagation.

    Returns:
        The scalar loss (a sum over the P positives).

    Raises:
        ValueError: mismatched shapes or bad settings.
    """
    if anchor.dim() != 2 or positives.dim() != 3 or positives.shape[0] != anchor.shape[0] \
            or positives.shape[2] != anchor.shape[1]:
        raise ValueError(f"whitened_cse: anchor {tuple(anchor.shape)} must be (B, D) and "
                         f"positives {tuple(positives.shape)} (B, P, D)")
    n_positives = positives.shape[1]
    if n_positives < 1 or permutations.shape != (n_positives + 1, anchor.shape[1]):
        raise ValueError(f"whitened_cse: permutations {tuple(permutations.shape)} must be "
                         f"({n_positives + 1}, {anchor.shape[1]}) with P >= 1")
    def whiten(x: Tensor, permutation: Tensor) -> Tensor:
        return group_whiten(x, groups, permutation, eps, method, stop_gradient)

    white_anchor = whiten(anchor, permutations[0])  # (B, D)
    loss = anchor.new_zeros(())
    for p in range(n_positives):
        # In-batch negatives from the same positive batch: row i's target is h^p_i.
        loss = loss + info_nce(white_anchor, whiten(positives[:, p], permutations[p + 1]),
                               temperature=temperature)
    return loss


class WhitenedCSELoss(nn.Module):
    """WhitenedCSE (arXiv:2305.17746): InfoNCE with several shuffled-group-whitened positives.

    Each call draws fresh shuffles with ``torch.randperm`` (the global generator, so a seeded
    run is reproducible): first the anchor's, then one per positive. With ``views`` ``(B, V, D)``
    (V ≥ 2) view 0 is the anchor and views 1..V−1 the positives (the paper's setting with V = 3
    dropout passes); otherwise ``query`` is the anchor and ``key``, whitened with
    ``num_positives`` different shuffles, gives the positives.

    Args:
        groups: G; must divide the embedding width. 128 in the authors' code for 768 dims.
        num_positives: P when the batch is a (query, key) pair; the authors use 2 (num_pos = 3
            counts the anchor).
        temperature: τ (0.05, as in SimCSE).
        eps: added to the covariance diagonals.
        method: ``"zca"`` (the paper) or ``"cholesky"`` (W-MSE).
        stop_gradient: constant whitening matrices in backpropagation (the authors' code).

    Raises:
        ValueError: an unknown method or non-positive settings; at call time, a width that
            ``groups`` does not divide or a batch no larger than a group.
    """

    def __init__(self, groups: Annotated[int, Ge(1)] = 128,
                 num_positives: Annotated[int, Ge(1)] = 2, temperature: Temperature = 0.05,
                 eps: Annotated[float, Ge(0), Lt(math.inf)] = 1e-5, method: WhiteningMethod = "zca",
                 stop_gradient: bool = False) -> None:
        super().__init__()
        if method not in WHITENING_METHODS:
            raise ValueError(f"whitened_cse: method must be one of {WHITENING_METHODS}, got "
                             f"{method!r}")
        if groups < 1 or num_positives < 1:
            raise ValueError(f"whitened_cse: groups and num_positives must be >= 1, got "
                             f"groups={groups}, num_positives={num_positives}")
        if not 0 < temperature < math.inf:
            raise ValueError(f"whitened_cse: temperature must be finite and > 0, got "
                             f"{temperature}")
        if not 0 <= eps < math.inf:
            raise ValueError(f"whitened_cse: eps must be finite and >= 0, got {eps}")
        self.groups, self.num_positives = groups, num_positives
        self.temperature, self.eps = float(temperature), float(eps)
        self.method: WhiteningMethod = method
        self.stop_gradient = stop_gradient

    def forward(self, batch: Embedded) -> Tensor:
        if batch.views is not None:
            if batch.views.dim() != 3 or batch.views.shape[1] < 2:
                raise ValueError(f"whitened_cse: views {tuple(batch.views.shape)} must be "
                                 "(B, V, D) with V >= 2")
            anchor, positives = batch.views[:, 0], batch.views[:, 1:]  # (B, D), (B, V-1, D)
        else:
            batch.require("whitened_cse", "key")
            assert batch.key is not None
            anchor = batch.query
            positives = batch.key[:, None].expand(-1, self.num_positives, -1)  # (B, P, D)
        dim = anchor.shape[1]
        permutations = torch.stack([torch.randperm(dim, device=anchor.device)
                                    for _ in range(positives.shape[1] + 1)])  # (P + 1, D)
        return whitened_cse_loss(anchor, positives, permutations, groups=self.groups,
                                 temperature=self.temperature, eps=self.eps, method=self.method,
                                 stop_gradient=self.stop_gradient)
