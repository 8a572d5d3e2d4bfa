"""Debiased, hard-negative, decoupled, alignment/uniformity, CWCL, 1-to-K and ConR objectives
against naive loops (tests/reference_b.py), known answers, invariances and reference libraries."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from reference_a import naive_clip
from reference_b import (
    naive_alignment,
    naive_conr,
    naive_cwcl,
    naive_debiased,
    naive_decoupled,
    naive_one_to_k,
    naive_uniformity,
)
from torch import Tensor
from torch.testing import assert_close

from contralign.objectives.contrastive import info_nce
from contralign.objectives.cwcl import CWCLLoss, cwcl
from contralign.objectives.debiased import (
    DebiasedContrastiveLoss,
    HardNegativeContrastiveLoss,
    debiased_contrastive,
    hard_negative_contrastive,
)
from contralign.objectives.decoupled import DecoupledContrastiveLoss, decoupled_contrastive
from contralign.objectives.geometry import (
    AlignUniformLoss,
    align_uniform,
    alignment_loss,
    uniformity_loss,
)
from contralign.objectives.inputs import Embedded
from contralign.objectives.one_to_k import OneToKContrastiveLoss, one_to_k_contrastive
from contralign.objectives.regression import ConRLoss, conr

# (B, D): one pair, an odd batch and an even one.
SHAPES = [(1, 4), (3, 5), (6, 7)]
# (candidates, symmetric)
LAYOUTS = [("both_views", True), ("both_views", False), ("other_view", True),
           ("other_view", False)]
E = math.e


def leaves(*shapes: tuple[int, ...], seed: int) -> list[Tensor]:
    """Random float64 leaf tensors, one per shape."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()
            for shape in shapes]


def assert_same_value_and_grads(fast: Tensor, naive: Tensor, inputs: list[Tensor]) -> None:
    assert fast.dtype == torch.float64
    assert_close(fast, naive)
    fast_grads = torch.autograd.grad(fast, inputs, retain_graph=True, allow_unused=True)
    # A naive loss without any term (no valid anchor) is a constant: every gradient is 0.
    naive_grads = (torch.autograd.grad(naive, inputs, allow_unused=True) if naive.requires_grad
                   else [None] * len(inputs))
    for x, f, n in zip(inputs, fast_grads, naive_grads, strict=True):
        assert_close(torch.zeros_like(x) if f is None else f,
                     torch.zeros_like(x) if n is None else n)


def units(*rows: list[float]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# --- debiased and hard-negative --------------------------------------------------------------


# (τ⁺, t, β): the papers' defaults, then others; β None is the debiased loss. τ⁺ = 0.6 makes the
# clamp bite on some rows.
HYPER = [(0.1, 0.5, None), (0.1, 0.5, 1.0), (0.3, 0.2, 2.5), (0.6, 1.0, None)]


@pytest.mark.parametrize(("tau_plus", "temperature", "beta"), HYPER, ids=lambda v: str(v))
@pytest.mark.parametrize("num_negatives", [0, 2], ids=lambda k: f"K{k}")
@pytest.mark.parametrize(("candidates", "symmetric"), LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize(("batch", "dim"), SHAPES, ids=lambda v: str(v))
def test_debiased_and_hard_match_naive(
    batch: int, dim: int, candidates: str, symmetric: bool, num_negatives: int,
    tau_plus: float, temperature: float, beta: float | None,
) -> None:
    query, key, negatives = leaves((batch, dim), (batch, dim), (batch, num_negatives, dim),
                                   seed=batch * 7 + dim)
    hard = negatives if num_negatives else None
    kwargs: dict[str, Any] = dict(temperature=temperature, tau_plus=tau_plus,
                                  candidates=candidates, symmetric=symmetric)
    if beta is None:
        fast = debiased_contrastive(query, key, negatives=hard, **kwargs)
    else:
        fast = hard_negative_contrastive(query, key, negatives=hard, beta=beta, **kwargs)
    naive = naive_debiased(query, key, hard, beta=beta, **kwargs)
    assert_same_value_and_grads(fast, naive, [query, key, negatives])


def test_debiased_known_answer_and_clamp() -> None:
    # q = k = [e1, e2], t = 1: every anchor has pos = e and two negatives at cos 0 (sum 2).
    eye = torch.eye(2, dtype=torch.float64)
    ng = (2 - 0.1 * 2 * E) / 0.9  # above the floor 2/e
    expected = math.log(1 + ng / E)
    assert_close(debiased_contrastive(eye, eye, temperature=1.0, tau_plus=0.1),
                 torch.tensor(expected, dtype=torch.float64))
    # τ⁺ = 0.5: (2 − e)/0.5 < 0, so Ng is clamped at N·e^{−1/t} = 2/e.
    assert_close(debiased_contrastive(eye, eye, temperature=1.0, tau_plus=0.5),
                 torch.tensor(math.log(1 + 2 / E / E), dtype=torch.float64))


def test_hard_negative_known_answer() -> None:
    # One pair q = k = e1 with hard negatives e1 (cos 1) and e2 (cos 0); t = 1, τ⁺ = 0.1.
    # neg = [e, 1], importance weights e^{β·s} = [e, 1] (β = 1), so the reweighted mass is
    # N·Σ imp·neg / Σ imp = 2(e² + 1)/(e + 1).
    e1, e2 = torch.eye(2, dtype=torch.float64)
    query = key = e1[None]
    negatives = torch.stack([e1, e2])[None]  # (1, 2, 2)
    kwargs: dict[str, Any] = dict(negatives=negatives, temperature=1.0, tau_plus=0.1,
                                  candidates="other_view", symmetric=False)
    hard_ng = (2 * (E * E + 1) / (E + 1) - 0.2 * E) / 0.9
    debiased_ng = (E + 1 - 0.2 * E) / 0.9
    assert_close(hard_negative_contrastive(query, key, beta=1.0, **kwargs),
                 torch.tensor(math.log(1 + hard_ng / E), dtype=torch.float64))
    assert_close(debiased_contrastive(query, key, **kwargs),
                 torch.tensor(math.log(1 + debiased_ng / E), dtype=torch.float64))


@pytest.mark.parametrize("num_negatives", [0, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_tau_plus_zero_is_info_nce_with_the_same_candidates(
    symmetric: bool, num_negatives: int
) -> None:
    query, key, negatives = leaves((5, 6), (5, 6), (5, num_negatives, 6), seed=1)
    hard = negatives if num_negatives else None
    # other_view: the candidates of info_nce (keys, then hard negatives for query rows).
    ours = debiased_contrastive(query, key, negatives=hard, temperature=0.2, tau_plus=0.0,
                                candidates="other_view", symmetric=symmetric)
    assert_close(ours, info_nce(query, key, negatives=hard, temperature=0.2,
                                symmetric=symmetric))


def test_tau_plus_zero_both_views_is_nt_xent() -> None:
    # NT-Xent over 2B anchors = info_nce of [q; k] against [k; q] with each anchor's own copy
    # masked: ids [0..B−1, 0..B−1] drop exactly the self-similarity of every row.
    query, key = leaves((5, 6), (5, 6), seed=2)
    ids = torch.arange(5).repeat(2)
    nt_xent = info_nce(torch.cat([query, key]), torch.cat([key, query]), temperature=0.3,
                       key_ids=ids)
    ours = debiased_contrastive(query, key, temperature=0.3, tau_plus=0.0)
    assert_close(ours, nt_xent)
    assert not torch.allclose(ours, debiased_contrastive(query, key, temperature=0.3))


@pytest.mark.parametrize(("candidates", "symmetric"), LAYOUTS, ids=lambda v: str(v))
def test_beta_zero_hard_negative_is_debiased(candidates: str, symmetric: bool) -> None:
    query, key, negatives = leaves((4, 5), (4, 5), (4, 2, 5), seed=3)
    kwargs: dict[str, Any] = dict(negatives=negatives, temperature=0.4, tau_plus=0.2,
                                  candidates=candidates, symmetric=symmetric)
    assert_close(hard_negative_contrastive(query, key, beta=0.0, **kwargs),
                 debiased_contrastive(query, key, **kwargs))
    assert not torch.allclose(hard_negative_contrastive(query, key, beta=1.0, **kwargs),
                              debiased_contrastive(query, key, **kwargs))


def test_debiased_and_hard_gradcheck() -> None:
    query, key, negatives = leaves((3, 4), (3, 4), (3, 2, 4), seed=4)

    def debiased(q: Tensor, k: Tensor, n: Tensor) -> Tensor:
        return debiased_contrastive(q, k, negatives=n, temperature=0.5, tau_plus=0.1)

    def hard(q: Tensor, k: Tensor, n: Tensor) -> Tensor:
        return hard_negative_contrastive(q, k, negatives=n, temperature=0.5, tau_plus=0.1,
                                         beta=1.0, candidates="other_view")

    assert torch.autograd.gradcheck(debiased, (query, key, negatives))
    assert torch.autograd.gradcheck(hard, (query, key, negatives))


def test_debiased_is_finite_at_low_temperature_in_float32() -> None:
    # e^{1/0.01} overflows float32; the shifted computation must not.
    query, key, negatives = leaves((6, 8), (6, 8), (6, 1, 8), seed=5)
    for loss in (debiased_contrastive, hard_negative_contrastive):
        low = loss(query.float(), key.float(), negatives=negatives.float(), temperature=0.01)
        high = loss(query, key, negatives=negatives, temperature=0.01)
        assert torch.isfinite(low)
        assert_close(low.double(), high, rtol=1e-4, atol=1e-4)


# --- decoupled -------------------------------------------------------------------------------


@pytest.mark.parametrize(("temperature", "weight_sigma"), [(0.1, None), (0.5, 0.5), (0.1, 2.0)],
                         ids=["dcl-t0.1", "dclw-t0.5-s0.5", "dclw-t0.1-s2"])
@pytest.mark.parametrize("num_negatives", [0, 2], ids=lambda k: f"K{k}")
@pytest.mark.parametrize(("candidates", "symmetric"), LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize(("batch", "dim"), [(2, 4), (5, 6)], ids=lambda v: str(v))
def test_decoupled_matches_naive(
    batch: int, dim: int, candidates: str, symmetric: bool, num_negatives: int,
    temperature: float, weight_sigma: float | None,
) -> None:
    query, key, negatives = leaves((batch, dim), (batch, dim), (batch, num_negatives, dim),
                                   seed=batch * 11 + dim)
    hard = negatives if num_negatives else None
    kwargs: dict[str, Any] = dict(temperature=temperature, weight_sigma=weight_sigma,
                                  candidates=candidates, symmetric=symmetric)
    fast = decoupled_contrastive(query, key, negatives=hard, **kwargs)
    naive = naive_decoupled(query, key, hard, **kwargs)
    assert_same_value_and_grads(fast, naive, [query, key, negatives])


def test_decoupled_known_answers() -> None:
    eye = torch.eye(2, dtype=torch.float64)
    # Each anchor: positive logit 1, two negatives at cos 0 (both views) or one (other view).
    assert_close(decoupled_contrastive(eye, eye, temperature=1.0),
                 torch.tensor(math.log(2) - 1, dtype=torch.float64))
    assert_close(decoupled_contrastive(eye, eye, temperature=1.0, candidates="other_view"),
                 torch.tensor(-1.0, dtype=torch.float64))
    # DCLW on q = [e1, e1], k = [e1, e2]: cos⁺ = [1, 0], σ = 0.5 -> w = 2 − 2·softmax([2, 0]).
    query, key = eye[[0, 0]], eye
    w = [2 - 2 * math.exp(2) / (math.exp(2) + 1), 2 - 2 / (math.exp(2) + 1)]
    # Row q0 = e1: positive k0 (cos 1); negatives q1 = e1 (1), k1 = e2 (0).
    # Row q1 = e1: positive k1 (cos 0); negatives q0 = e1 (1), k0 = e1 (1).
    # Row k0 = e1: positive q0 (1); negatives k1 = e2 (0), q1 = e1 (1).
    # Row k1 = e2: positive q1 (0); negatives k0 = e1 (0), q0 = e1 (0).
    rows = [-w[0] + math.log(E + 1), -0.0 + math.log(2 * E), -w[0] + math.log(1 + E),
            -0.0 + math.log(2)]
    assert_close(decoupled_contrastive(query, key, temperature=1.0, weight_sigma=0.5),
                 torch.tensor(sum(rows) / 4, dtype=torch.float64))


@pytest.mark.parametrize("candidates", ["both_views", "other_view"])
def test_decoupled_is_below_coupled_nt_xent(candidates: str) -> None:
    for seed in range(3):
        query, key = leaves((5, 6), (5, 6), seed=seed)
        decoupled = decoupled_contrastive(query, key, temperature=0.2, candidates=candidates)
        coupled = debiased_contrastive(query, key, temperature=0.2, tau_plus=0.0,
                                       candidates=candidates)
        assert decoupled < coupled


def test_decoupled_gradcheck_and_one_pair_error() -> None:
    query, key, negatives = leaves((3, 4), (3, 4), (3, 1, 4), seed=6)

    # Plain DCL only: DCLW's weights are computed without gradient on purpose, which finite
    # differences cannot see (its gradients are checked against the naive loop instead).
    def loss(q: Tensor, k: Tensor, n: Tensor) -> Tensor:
        return decoupled_contrastive(q, k, negatives=n, temperature=0.3)

    assert torch.autograd.gradcheck(loss, (query, key, negatives))
    with pytest.raises(ValueError, match="negative"):
        decoupled_contrastive(query[:1], key[:1])


# --- alignment and uniformity ----------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(("alpha", "t"), [(2.0, 2.0), (1.0, 0.5), (3.0, 5.0)])
@pytest.mark.parametrize(("batch", "dim"), [(2, 3), (3, 5), (6, 4)], ids=lambda v: str(v))
def test_alignment_and_uniformity_match_naive(
    batch: int, dim: int, alpha: float, t: float, normalize: bool
) -> None:
    x, y = leaves((batch, dim), (batch, dim), seed=batch + dim)
    assert_same_value_and_grads(alignment_loss(x, y, alpha=alpha, normalize=normalize),
                                naive_alignment(x, y, alpha, normalize), [x, y])
    assert_same_value_and_grads(uniformity_loss(x, t=t, normalize=normalize),
                                naive_uniformity(x, t, normalize), [x])
    combined = align_uniform(x, y, align_weight=0.7, unif_weight=1.3, align_alpha=alpha,
                             unif_t=t, normalize=normalize)
    naive = 0.7 * naive_alignment(x, y, alpha, normalize) + 1.3 * (
        naive_uniformity(x, t, normalize) + naive_uniformity(y, t, normalize)) / 2
    assert_same_value_and_grads(combined, naive, [x, y])


def test_alignment_and_uniformity_known_answers() -> None:
    e1, e2 = torch.eye(2, dtype=torch.float64)
    x, y = torch.stack([e1, e2]), torch.stack([e1, -e2])
    assert_close(alignment_loss(x, y), torch.tensor(2.0, dtype=torch.float64))  # (0 + 4)/2
    assert_close(uniformity_loss(x), torch.tensor(-4.0, dtype=torch.float64))  # ‖e1−e2‖² = 2
    assert_close(align_uniform(x, y), torch.tensor(2.0 - 4.0, dtype=torch.float64))
    three = torch.stack([e1, -e1, e2])  # squared distances 4, 2, 2
    expected = math.log((math.exp(-8) + 2 * math.exp(-4)) / 3)
    assert_close(uniformity_loss(three), torch.tensor(expected, dtype=torch.float64))


def test_geometry_invariances_and_gradcheck() -> None:
    x, y = leaves((5, 4), (5, 4), seed=8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    scale = torch.tensor([[0.5], [2.0], [3.0], [0.1], [7.0]], dtype=torch.float64)
    loss = align_uniform(x, y)
    assert_close(align_uniform(x[perm], y[perm]), loss)
    assert_close(align_uniform(y, x), loss)
    assert_close(align_uniform(x * scale, y / scale), loss)
    assert not torch.allclose(align_uniform(x * scale, y, normalize=False),
                              align_uniform(x, y, normalize=False))
    assert torch.autograd.gradcheck(lambda a, b: align_uniform(a, b, align_alpha=1.5), (x, y))
    with pytest.raises(ValueError, match="B >= 2"):
        uniformity_loss(x[:1])


# --- CWCL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("weights_from", ["key", "query"])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize(("batch", "dim"), SHAPES, ids=lambda v: str(v))
def test_cwcl_matches_naive(
    batch: int, dim: int, temperature: float, weights_from: str, symmetric: bool
) -> None:
    query, key = leaves((batch, dim), (batch, dim), seed=batch * 3 + dim)
    kwargs: dict[str, Any] = dict(temperature=temperature, weights_from=weights_from,
                                  symmetric=symmetric)
    assert_same_value_and_grads(cwcl(query, key, **kwargs), naive_cwcl(query, key, **kwargs),
                                [query, key])


def test_cwcl_known_answer() -> None:
    # q = k = [e1, e2], τ = 1: targets [[2/3, 1/3], [1/3, 2/3]], logits [[1, 0], [0, 1]];
    # each row: −(2/3·(1 − L) + 1/3·(−L)) = L − 2/3, with L = log(1 + e).
    eye = torch.eye(2, dtype=torch.float64)
    expected = torch.tensor(math.log(1 + E) - 2 / 3, dtype=torch.float64)
    assert_close(cwcl(eye, eye, temperature=1.0), expected)
    assert_close(cwcl(eye, eye, temperature=1.0, weights_from="query", symmetric=False),
                 expected)


def test_cwcl_invariances_and_gradcheck() -> None:
    query, key = leaves((5, 4), (5, 4), seed=9)
    perm = torch.tensor([2, 4, 0, 1, 3])
    loss = cwcl(query, key, temperature=0.1)
    assert_close(cwcl(query[perm], key[perm], temperature=0.1), loss)
    assert_close(cwcl(3 * query, 0.5 * key, temperature=0.1), loss)
    # Swapping the towers and the side that gives the weights leaves the loss unchanged...
    assert_close(cwcl(key, query, temperature=0.1, weights_from="query"), loss)
    # ...while the weights themselves matter.
    assert not torch.allclose(cwcl(query, key, temperature=0.1, weights_from="query"), loss)
    # The key side gives the weights without gradient, so finite differences run over the
    # query and the temperature only (the key's gradient is checked against the naive loop).
    temperature = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    fixed_key = key.detach()
    assert torch.autograd.gradcheck(lambda q, t: cwcl(q, fixed_key, temperature=t),
                                    (query, temperature))


def test_cwcl_weights_carry_no_gradient() -> None:
    # The weight side's only gradient is through the logits: the same as with fixed targets.
    query, key = leaves((4, 5), (4, 5), seed=10)
    frozen = key.detach().clone().requires_grad_()
    targets_from_copy = cwcl(query, key, temperature=0.2, symmetric=False)
    grad = torch.autograd.grad(targets_from_copy, key)[0]
    unit = torch.nn.functional.normalize(frozen.detach(), dim=-1)
    targets = (1 + unit @ unit.T) / 2
    targets = targets / targets.sum(1, keepdim=True)
    logits = (torch.nn.functional.normalize(query, dim=-1)
              @ torch.nn.functional.normalize(frozen, dim=-1).T / 0.2)
    fixed = -(targets * logits.log_softmax(1)).sum(1).mean()
    assert_close(grad, torch.autograd.grad(fixed, frozen)[0])


# --- 1-to-K ----------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("k", [1, 2, 3])  # K = 1 is also checked against CLIP below
@pytest.mark.parametrize(("batch", "dim"), SHAPES, ids=lambda v: str(v))
def test_one_to_k_matches_naive(
    batch: int, dim: int, k: int, temperature: float, symmetric: bool
) -> None:
    query, views = leaves((batch, dim), (batch, k, dim), seed=batch * 5 + k)
    assert_same_value_and_grads(
        one_to_k_contrastive(query, views, temperature=temperature, symmetric=symmetric),
        naive_one_to_k(query, views, temperature=temperature, symmetric=symmetric),
        [query, views])


def test_one_to_k_known_answer() -> None:
    # Anchors [e1, e2], views [[e1, e1], [e2, e2]], τ = 1, K = 2. Anchor e1 against 4 views:
    # logits [1, 1, 0, 0], each own view −(1 − log(2e + 2)), summed over its 2 views; each view
    # against 2 anchors: logits [1, 0]. The authors' (L_i2t + L_t2i) / (2K):
    eye = torch.eye(2, dtype=torch.float64)
    views = eye[:, None, :].repeat(1, 2, 1)
    loss_i2t = 2 * (math.log(2 * E + 2) - 1)  # mean over anchors of the sum over their views
    loss_t2i = math.log(1 + E) - 1  # mean over the 4 views
    expected = (loss_i2t + loss_t2i) / (2 * 2)
    assert_close(one_to_k_contrastive(eye, views, temperature=1.0),
                 torch.tensor(expected, dtype=torch.float64))
    assert_close(one_to_k_contrastive(eye, views, temperature=1.0, symmetric=False),
                 torch.tensor(loss_i2t / 2, dtype=torch.float64))


def test_one_to_k_with_one_view_is_clip() -> None:
    # K = 1: the authors' / (2K) is CLIP's mean of the two directions (naive CLIP loop).
    query, views = leaves((5, 6), (5, 1, 6), seed=11)
    loss = one_to_k_contrastive(query, views, temperature=0.1)
    assert_same_value_and_grads(loss, naive_clip(query, views[:, 0], logit_scale=10.0),
                                [query, views])
    assert_close(loss, info_nce(query, views[:, 0], temperature=0.1, symmetric=True))


def test_one_to_k_favours_no_view_and_ignores_batch_order() -> None:
    query, views = leaves((4, 4), (4, 3, 4), seed=12)
    loss = one_to_k_contrastive(query, views, temperature=0.2)
    # A different order of the K languages in every item changes nothing...
    shuffled = torch.stack([views[0, [2, 0, 1]], views[1, [1, 2, 0]], views[2],
                            views[3, [2, 1, 0]]])
    assert_close(one_to_k_contrastive(query, shuffled, temperature=0.2), loss)
    perm = torch.tensor([3, 1, 0, 2])
    assert_close(one_to_k_contrastive(query[perm], views[perm], temperature=0.2), loss)
    assert_close(one_to_k_contrastive(2 * query, 0.3 * views, temperature=0.2), loss)
    temperature = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, v, t: one_to_k_contrastive(q, v, temperature=t),
                                    (query[:3], views[:3, :2], temperature), fast_mode=True)


# --- ConR ------------------------------------------------------------------------------------


def conr_inputs(batch: int, dim: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Features, a second view, scores with near and far neighbours, predictions squeezed
    together (so some label-dissimilar pairs are confused, some not) and pushing powers."""
    query, key = leaves((batch, dim), (batch, dim), seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    scores = torch.tensor([0.0, 0.4, 2.0, 2.3, 4.0, 0.2, 2.1, 6.0], dtype=torch.float64)[:batch]
    predictions = 0.2 * scores + 0.05 * torch.randn(batch, generator=generator,
                                                    dtype=torch.float64)
    weights = torch.rand(batch, generator=generator, dtype=torch.float64) + 0.5
    return query, key, scores, predictions, weights


@pytest.mark.parametrize("extras", ["plain", "key", "predictions", "all"])
@pytest.mark.parametrize(("threshold", "temperature", "push_rate"),
                         [(1.0, 0.07, 0.01), (0.5, 0.5, 0.3)])
@pytest.mark.parametrize(("batch", "dim"), [(1, 3), (3, 5), (8, 6)], ids=lambda v: str(v))
def test_conr_matches_naive(
    batch: int, dim: int, threshold: float, temperature: float, push_rate: float, extras: str
) -> None:
    query, key, scores, predictions, weights = conr_inputs(batch, dim, seed=batch + dim)
    kwargs: dict[str, Any] = dict(threshold=threshold, temperature=temperature,
                                  push_rate=push_rate)
    if extras in ("key", "all"):
        kwargs["key"] = key
    if extras in ("predictions", "all"):
        kwargs["predictions"] = predictions
    if extras == "all":
        kwargs["push_weights"] = weights
    fast = conr(query, scores, **kwargs)
    assert_same_value_and_grads(fast, naive_conr(query, scores, **kwargs), [query, key])
    assert (fast > 0) == (batch > 1)  # the seeds give the larger batches valid anchors


def test_conr_known_answer() -> None:
    # Features e1, e1, e2 with scores 0, 0.5, 3; ω = 1, τ = 1, e = 0.1.
    # Anchor 0: positive 1 (cos 1), negative 2 (cos 0, |Δy| = 3): log(1 + e^{0.3}/e).
    # Anchor 1: positive 0, negative 2 (|Δy| = 2.5): log(1 + e^{0.25}/e). Anchor 2: no positive.
    e1, e2 = torch.eye(2, dtype=torch.float64)
    features = torch.stack([e1, e1, e2])
    scores = torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64)
    expected = (math.log(1 + math.exp(0.3 - 1)) + math.log(1 + math.exp(0.25 - 1))) / 3
    assert_close(conr(features, scores, temperature=1.0, push_rate=0.1),
                 torch.tensor(expected, dtype=torch.float64))


def test_conr_invariances_and_prediction_negatives() -> None:
    query, key, scores, predictions, _ = conr_inputs(7, 5, seed=14)
    loss = conr(query, scores, key=key)
    assert loss > 0
    perm = torch.tensor([6, 2, 0, 5, 1, 3, 4])
    assert_close(conr(query[perm], scores[perm], key=key[perm]), loss)
    assert_close(conr(query, scores + 12.5, key=key), loss)  # only label distances matter
    assert_close(conr(4 * query, scores, key=0.2 * key), loss)
    # Perfect predictions confuse nothing: no negatives, no loss.
    assert conr(query, scores, key=key, predictions=scores) == 0
    # Identical predictions confuse everything: every label-dissimilar sample is a negative.
    assert_close(conr(query, scores, key=key, predictions=torch.zeros_like(scores)), loss)
    assert torch.autograd.gradcheck(
        lambda q, k: conr(q, scores, key=k, predictions=predictions, temperature=0.3), (query, key))


# --- modules ---------------------------------------------------------------------------------


MODULES: list[tuple[Callable[[], torch.nn.Module], Callable[..., Tensor], str]] = [
    (lambda: DebiasedContrastiveLoss(), debiased_contrastive, "pairs"),
    (lambda: HardNegativeContrastiveLoss(), hard_negative_contrastive, "pairs"),
    (lambda: DecoupledContrastiveLoss(weight_sigma=0.5),
     lambda q, k, negatives=None: decoupled_contrastive(q, k, negatives=negatives,
                                                       weight_sigma=0.5), "pairs"),
    (lambda: AlignUniformLoss(), align_uniform, "plain_pairs"),
    (lambda: CWCLLoss(), cwcl, "plain_pairs"),
]


@pytest.mark.parametrize(("make", "function", "kind"), MODULES,
                         ids=["debiased", "hard", "decoupled", "align_uniform", "cwcl"])
def test_pair_modules_match_their_function(
    make: Callable[[], torch.nn.Module], function: Callable[..., Tensor], kind: str
) -> None:
    query, key, negatives = leaves((4, 5), (4, 5), (4, 2, 5), seed=15)
    module = make()
    if kind == "pairs":
        value = module(Embedded(query, key, negatives=negatives))
        assert_close(value, function(query, key, negatives=negatives))
    else:
        value = module(Embedded(query, key))
        assert_close(value, function(query, key), rtol=1e-6, atol=1e-7)
        with pytest.raises(ValueError, match="negative"):
            module(Embedded(query, key, negatives=negatives))
    value.backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()
    with pytest.raises(ValueError, match="key"):
        module(Embedded(query))


def test_one_to_k_and_conr_modules() -> None:
    query, views, key = leaves((4, 5), (4, 3, 5), (4, 5), seed=16)
    module = OneToKContrastiveLoss(learnable_temperature=True)
    loss = module(Embedded(query, views=views))
    assert_close(loss, one_to_k_contrastive(query, views, temperature=0.07),
                 rtol=1e-6, atol=1e-7)
    loss.backward()
    assert module.log_scale.grad is not None and module.log_scale.grad != 0
    with pytest.raises(ValueError, match="views"):
        module(Embedded(query))
    with pytest.raises(ValueError, match="views"):
        module(Embedded(query, key, views=views))

    scores = torch.tensor([0.0, 0.4, 2.0, 2.5], dtype=torch.float64)
    regulariser = ConRLoss(threshold=1.0)
    assert_close(regulariser(Embedded(query, key, scores=scores)),
                 conr(query, scores, key=key))
    with pytest.raises(ValueError, match="scores"):
        regulariser(Embedded(query, key))


def test_cwcl_learnable_temperature_gets_a_gradient() -> None:
    query, key = leaves((4, 5), (4, 5), seed=17)
    module = CWCLLoss(temperature=0.1, learnable_temperature=True)
    assert "log_scale" in dict(module.named_parameters())
    module(Embedded(query, key)).backward()
    assert module.log_scale.grad is not None and module.log_scale.grad != 0
    assert list(CWCLLoss().parameters()) == []


def test_cwcl_warns_once_when_its_target_side_is_trained() -> None:
    # The paper's targets come from a pretrained tower that is not trained; target embeddings
    # that require gradient mean a trained (e.g. shared) tower, which the module reports once.
    query, key = leaves((4, 5), (4, 5), seed=18)
    module = CWCLLoss()
    with pytest.warns(UserWarning, match=r"^cwcl: .*key embeddings.*objective\.momentum: 1\.0"):
        module(Embedded(query, key))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning below fails the test
        module(Embedded(query, key))  # once per module
        CWCLLoss()(Embedded(query, key.detach()))  # keys from a frozen tower
        CWCLLoss(weights_from="query")(Embedded(query.detach(), key))  # targets: the query
        with torch.no_grad():
            CWCLLoss()(Embedded(query, key))  # evaluation: nothing is trained
    with pytest.warns(UserWarning, match=r"query embeddings.*weights_from: key"):
        CWCLLoss(weights_from="query")(Embedded(query, key.detach()))


@pytest.mark.parametrize(("make", "bad"), [
    (lambda: DebiasedContrastiveLoss(tau_plus=1.0), "1.0"),
    (lambda: DebiasedContrastiveLoss(temperature=0.0), "0.0"),
    (lambda: DebiasedContrastiveLoss(candidates="all"), "'all'"),  # type: ignore[arg-type]
    (lambda: HardNegativeContrastiveLoss(beta=-1.0), "-1.0"),
    (lambda: DecoupledContrastiveLoss(weight_sigma=0.0), "0.0"),
    (lambda: DecoupledContrastiveLoss(candidates="x"), "'x'"),  # type: ignore[arg-type]
    (lambda: AlignUniformLoss(unif_t=-2.0), "-2.0"),
    (lambda: AlignUniformLoss(align_weight=float("nan")), "nan"),
    (lambda: CWCLLoss(weights_from="image"), "'image'"),  # type: ignore[arg-type]
    (lambda: CWCLLoss(temperature=float("inf")), "inf"),
    (lambda: OneToKContrastiveLoss(temperature=-0.1), "-0.1"),
    (lambda: ConRLoss(threshold=-1.0), "-1.0"),
    (lambda: ConRLoss(push_rate=float("nan")), "nan"),
])
def test_bad_options_raise_naming_the_value(make: Callable[[], torch.nn.Module], bad: str) -> None:
    with pytest.raises(ValueError, match=bad.replace(".", r"\.").replace("(", r"\(")):
        make()


# --- reference libraries ---------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("weighted", [False, True], ids=["DCLLoss", "DCLWLoss"])
@pytest.mark.parametrize("batch", [3, 8])
def test_decoupled_matches_lightly(weighted: bool, batch: int) -> None:
    loss_module = pytest.importorskip("lightly.loss")
    query, key = leaves((batch, 16), (batch, 16), seed=batch + 20)
    if weighted:
        theirs = loss_module.DCLWLoss(temperature=0.1, sigma=0.5)(query, key)
    else:
        theirs = loss_module.DCLLoss(temperature=0.1)(query, key)
    ours = decoupled_contrastive(query, key, temperature=0.1,
                                 weight_sigma=0.5 if weighted else None)
    assert_close(ours, theirs.to(ours.dtype))
    assert_close(torch.autograd.grad(ours, [query, key]),
                 torch.autograd.grad(theirs, [query, key]))


@pytest.mark.reference
def test_tau_plus_zero_matches_lightly_nt_xent() -> None:
    loss_module = pytest.importorskip("lightly.loss")
    query, key = leaves((7, 16), (7, 16), seed=30)
    theirs = loss_module.NTXentLoss(temperature=0.5)(query, key)
    ours = debiased_contrastive(query, key, temperature=0.5, tau_plus=0.0)
    assert_close(ours, theirs.to(ours.dtype))
    assert_close(torch.autograd.grad(ours, [query, key]),
                 torch.autograd.grad(theirs, [query, key]))


@pytest.mark.reference
def test_align_uniform_matches_lightly_hypersphere() -> None:
    hypersphere = pytest.importorskip("lightly.loss.hypersphere_loss")
    query, key = leaves((9, 16), (9, 16), seed=31)
    theirs = hypersphere.HypersphereLoss(t=2.0, lam=0.7, alpha=2.0)(query, key)
    ours = align_uniform(query, key, unif_weight=0.7)
    assert_close(ours, theirs.to(ours.dtype))
    assert_close(torch.autograd.grad(ours, [query, key]),
                 torch.autograd.grad(theirs, [query, key]))
