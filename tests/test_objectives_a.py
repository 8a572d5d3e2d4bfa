"""NT-Xent (multi-view), CLIP, SigLIP and SupCon against naive loops, known answers,
invariances, and the reference libraries (pytorch-metric-learning, open_clip, lightly)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from reference_a import (
    log1p_exp,
    naive_clip,
    naive_nt_xent,
    naive_sigmoid,
    naive_simclr,
    naive_supcon,
)
from torch import Tensor
from torch.testing import assert_close

from contralign.objectives.clip import CLIPLoss, clip_loss
from contralign.objectives.inputs import Embedded
from contralign.objectives.multiview import Aggregation, NTXentLoss, nt_xent
from contralign.objectives.sigmoid import SigLIPLoss, sigmoid_loss
from contralign.objectives.supervised import SupConLoss, Variant, supcon

E = math.e

# nt_xent's aggregations; naive_nt_xent holds the naive loop of each.
AGGREGATIONS: list[Aggregation] = ["multi_positive", "pairwise", "poly_view"]


def leaf(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    """A random float64 leaf tensor that requires grad."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
    return values.requires_grad_()


def assert_value_and_grads(fast: Tensor, naive: Tensor, inputs: list[Tensor]) -> None:
    assert fast.dtype == torch.float64
    assert torch.isfinite(fast)
    assert_close(fast, naive)
    fast_grads = torch.autograd.grad(fast, inputs, retain_graph=True)
    naive_grads = torch.autograd.grad(naive, inputs, retain_graph=True)
    for fast_grad, naive_grad in zip(fast_grads, naive_grads, strict=True):
        assert torch.isfinite(fast_grad).all()
        assert_close(fast_grad, naive_grad)


# --- NT-Xent and its multi-view aggregations --------------------------------------------------


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("num_views", [2, 3, 4], ids=lambda v: f"V{v}")
@pytest.mark.parametrize(("batch", "temperature"), [(1, 0.5), (3, 0.1), (4, 0.5)],
                         ids=["B1-tau0.5", "B3-tau0.1", "B4-tau0.5"])
def test_nt_xent_matches_naive(
    batch: int, num_views: int, temperature: float, aggregation: Aggregation
) -> None:
    views = leaf(batch, num_views, 5, seed=batch * 10 + num_views)
    fast = nt_xent(views, temperature=temperature, aggregation=aggregation)
    naive = naive_nt_xent(views, temperature, aggregation)
    assert_value_and_grads(fast, naive, [views])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_two_views_is_simclr_nt_xent(batch: int, temperature: float,
                                     aggregation: Aggregation) -> None:
    query, key = leaf(batch, 6, seed=batch), leaf(batch, 6, seed=batch + 100)
    fast = nt_xent(torch.stack([query, key], dim=1), temperature=temperature,
                   aggregation=aggregation)
    assert_value_and_grads(fast, naive_simclr(query, key, temperature), [query, key])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_nt_xent_gradcheck(aggregation: Aggregation) -> None:
    views = leaf(3, 3, 4, seed=1)
    temperature = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def loss(v: Tensor, tau: Tensor) -> Tensor:
        return nt_xent(v, temperature=tau, aggregation=aggregation)

    assert torch.autograd.gradcheck(loss, (views, temperature))


def test_nt_xent_known_answers() -> None:
    # Items e1 and e2 (orthogonal), every view identical, τ = 1: cos 1 within an item, 0 across.
    e1, e2 = torch.eye(2, dtype=torch.float64)
    two = torch.stack([torch.stack([e1, e1]), torch.stack([e2, e2])])  # (B=2, V=2, D=2)
    # V = 2: one positive (e^1) among 3 candidates -> log(1 + 2/e) for every anchor.
    for aggregation in AGGREGATIONS:
        value = nt_xent(two, temperature=1.0, aggregation=aggregation)
        assert_close(value, torch.tensor(math.log(1 + 2 / E), dtype=torch.float64))
    three = torch.stack([torch.stack([e1, e1, e1]), torch.stack([e2, e2, e2])])  # V = 3
    expected = {
        # 2 positives (e) and 3 negatives (1) share one denominator 2e + 3.
        "multi_positive": math.log(2 + 3 / E),
        # each pair sees its target (e), the other item in view β (1) and in view α (1).
        "pairwise": math.log(1 + 2 / E),
        # each positive is contrasted with the other item's 3 views only: e / (e + 3).
        "poly_view": math.log(1 + 3 / E),
    }
    for aggregation in AGGREGATIONS:
        value = nt_xent(three, temperature=1.0, aggregation=aggregation)
        assert_close(value, torch.tensor(expected[aggregation], dtype=torch.float64))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_nt_xent_ignores_item_and_view_order_and_norms(aggregation: Aggregation) -> None:
    views = leaf(5, 3, 4, seed=3)
    kwargs: dict[str, Any] = dict(temperature=0.2, aggregation=aggregation)
    loss = nt_xent(views, **kwargs)
    items = torch.tensor([3, 0, 4, 1, 2])
    assert_close(nt_xent(views[items], **kwargs), loss)
    assert_close(nt_xent(views[:, [2, 0, 1]], **kwargs), loss)
    norms = torch.rand(5, 3, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert_close(nt_xent(views * (0.1 + 5 * norms), **kwargs), loss)
    # The aggregations differ once V > 2, so each check above can single one out.
    others = [nt_xent(views, temperature=0.2, aggregation=a)
              for a in AGGREGATIONS if a != aggregation]
    assert all(not torch.allclose(loss, other) for other in others)


def test_nt_xent_rejects_bad_shapes_and_options() -> None:
    with pytest.raises(ValueError, match="V >= 2"):
        nt_xent(torch.randn(4, 1, 3))
    with pytest.raises(ValueError, match="V >= 2"):
        nt_xent(torch.randn(4, 3))
    with pytest.raises(ValueError, match="'mean'"):
        nt_xent(torch.randn(4, 2, 3), aggregation="mean")  # type: ignore[arg-type]


def test_nt_xent_module_reads_views_or_query_and_key() -> None:
    views = leaf(4, 3, 5, seed=4)
    module = NTXentLoss(temperature=0.3, aggregation="poly_view")
    assert list(module.parameters()) == []
    assert_close(module(Embedded(views[:, 0], views=views)),
                 nt_xent(views, temperature=0.3, aggregation="poly_view"))
    pair = Embedded(views[:, 0], views[:, 1])
    assert_close(NTXentLoss()(pair), naive_simclr(views[:, 0], views[:, 1], 0.5))
    with pytest.raises(ValueError, match="nt_xent: needs views"):
        module(Embedded(views[:, 0]))


@pytest.mark.parametrize("kwargs", [{"aggregation": "sum"}, {"temperature": 0.0},
                                    {"temperature": float("nan")}])
def test_nt_xent_module_rejects_bad_options(kwargs: dict[str, Any]) -> None:
    bad = str(next(iter(kwargs.values())))
    with pytest.raises(ValueError, match=bad):
        NTXentLoss(**kwargs)


# --- CLIP -----------------------------------------------------------------------------------


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("logit_scale", [1.0, 1 / 0.07, 100.0])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_clip_matches_naive(batch: int, logit_scale: float, label_smoothing: float) -> None:
    query, key = leaf(batch, 7, seed=batch), leaf(batch, 7, seed=batch + 50)
    fast = clip_loss(query, key, logit_scale=logit_scale, label_smoothing=label_smoothing)
    naive = naive_clip(query, key, logit_scale, label_smoothing)
    assert_value_and_grads(fast, naive, [query, key])


def test_clip_gradcheck() -> None:
    query, key = leaf(4, 3, seed=5), leaf(4, 3, seed=6)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)

    def loss(q: Tensor, k: Tensor, s: Tensor) -> Tensor:
        return clip_loss(q, k, logit_scale=s, label_smoothing=0.1)

    assert torch.autograd.gradcheck(loss, (query, key, scale))


def test_clip_known_answer() -> None:
    # q = k = [e1, e2], scale 1: each row's logits are [1, 0] (target first).
    eye = torch.eye(2, dtype=torch.float64)
    assert_close(clip_loss(eye, eye, logit_scale=1.0),
                 torch.tensor(log1p_exp(-1.0), dtype=torch.float64))
    # Label smoothing 0.2 over 2 classes: targets [0.9, 0.1].
    smoothed = -(0.9 * math.log(E / (E + 1)) + 0.1 * math.log(1 / (E + 1)))
    assert_close(clip_loss(eye, eye, logit_scale=1.0, label_smoothing=0.2),
                 torch.tensor(smoothed, dtype=torch.float64))


def test_clip_is_symmetric_and_ignores_order_and_norms() -> None:
    query, key = leaf(6, 5, seed=7), leaf(6, 5, seed=8)
    loss = clip_loss(query, key, logit_scale=10.0, label_smoothing=0.1)
    assert_close(clip_loss(key, query, logit_scale=10.0, label_smoothing=0.1), loss)
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    assert_close(clip_loss(query[perm], key[perm], logit_scale=10.0, label_smoothing=0.1), loss)
    assert_close(clip_loss(3.0 * query, 0.2 * key, logit_scale=10.0, label_smoothing=0.1), loss)
    # Permuting one side only breaks the pairs, so the checks above can fail.
    assert not torch.allclose(clip_loss(query[perm], key, logit_scale=10.0), loss)


def test_clip_module_learns_a_clamped_scale() -> None:
    module = CLIPLoss()
    assert "log_scale" in dict(module.named_parameters())
    assert_close(module.logit_scale, torch.tensor(1 / 0.07), rtol=1e-6, atol=0.0)
    query, key = leaf(4, 5, seed=9), leaf(4, 5, seed=10)
    loss = module(Embedded(query, key))
    assert_close(loss.detach(), clip_loss(query, key, logit_scale=1 / 0.07).detach(),
                 rtol=1e-5, atol=1e-6)
    loss.backward()
    assert module.log_scale.grad is not None and module.log_scale.grad.abs() > 0
    with torch.no_grad():
        module.log_scale.fill_(math.log(250.0))
    module.log_scale.grad = None
    loss = module(Embedded(query, key))
    assert_close(loss.detach(), clip_loss(query, key, logit_scale=100.0).detach(),
                 rtol=1e-5, atol=1e-6)
    loss.backward()
    assert module.log_scale.grad == 0  # past the clamp the scale gets no update


def test_clip_module_align_setting_and_fixed_temperature() -> None:
    query, key = leaf(4, 5, seed=11), leaf(4, 5, seed=12)
    align = CLIPLoss(temperature=1.0, label_smoothing=0.1)
    assert_close(align(Embedded(query, key)),
                 naive_clip(query, key, 1.0, 0.1), rtol=1e-5, atol=1e-6)
    fixed = CLIPLoss(temperature=0.05, learnable_temperature=False)
    assert list(fixed.parameters()) == []
    assert "log_scale" in fixed.state_dict()
    with pytest.raises(ValueError, match="clip: needs key"):
        fixed(Embedded(query))


@pytest.mark.parametrize("kwargs", [{"temperature": -1.0}, {"max_logit_scale": 0.0},
                                    {"label_smoothing": 1.0}, {"label_smoothing": -0.1}])
def test_clip_module_rejects_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
        CLIPLoss(**kwargs)


# --- SigLIP ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("logit_scale", "logit_bias"), [(10.0, -10.0), (1.0, 0.0), (3.5, 2.0)])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_sigmoid_matches_naive(batch: int, logit_scale: float, logit_bias: float) -> None:
    query, key = leaf(batch, 6, seed=batch + 3), leaf(batch, 6, seed=batch + 60)
    fast = sigmoid_loss(query, key, logit_scale=logit_scale, logit_bias=logit_bias)
    naive = naive_sigmoid(query, key, logit_scale, logit_bias)
    assert_value_and_grads(fast, naive, [query, key])


def test_sigmoid_gradcheck() -> None:
    query, key = leaf(4, 3, seed=13), leaf(4, 3, seed=14)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)

    def loss(q: Tensor, k: Tensor, t: Tensor, b: Tensor) -> Tensor:
        return sigmoid_loss(q, k, logit_scale=t, logit_bias=b)

    assert torch.autograd.gradcheck(loss, (query, key, scale, bias))


def test_sigmoid_known_answer() -> None:
    # q = k = [e1, e2], t = 1, b = 0: two positives at logit 1, two negatives at logit 0.
    # (2·log(1 + e^-1) + 2·log 2) / B with B = 2.
    eye = torch.eye(2, dtype=torch.float64)
    expected = log1p_exp(-1.0) + math.log(2.0)
    assert_close(sigmoid_loss(eye, eye, logit_scale=1.0, logit_bias=0.0),
                 torch.tensor(expected, dtype=torch.float64))


def test_sigmoid_is_symmetric_and_ignores_order_and_norms() -> None:
    query, key = leaf(6, 5, seed=15), leaf(6, 5, seed=16)
    loss = sigmoid_loss(query, key, logit_scale=10.0, logit_bias=-10.0)
    assert_close(sigmoid_loss(key, query, logit_scale=10.0, logit_bias=-10.0), loss)
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    assert_close(sigmoid_loss(query[perm], key[perm], logit_scale=10.0, logit_bias=-10.0), loss)
    assert_close(sigmoid_loss(4.0 * query, 0.3 * key, logit_scale=10.0, logit_bias=-10.0), loss)
    assert not torch.allclose(sigmoid_loss(query[perm], key, logit_scale=10.0, logit_bias=-10.0),
                              loss)


def test_siglip_module_learns_scale_and_bias() -> None:
    module = SigLIPLoss()
    params = dict(module.named_parameters())
    assert set(params) == {"log_scale", "bias"}
    assert_close(module.log_scale.detach(), torch.tensor(math.log(10.0)))
    assert_close(module.bias.detach(), torch.tensor(-10.0))
    query, key = leaf(4, 5, seed=17), leaf(4, 5, seed=18)
    loss = module(Embedded(query, key))
    assert_close(loss.detach(), naive_sigmoid(query, key, 10.0, -10.0).detach(),
                 rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in params.values())
    fixed = SigLIPLoss(learnable=False)
    assert list(fixed.parameters()) == []
    assert {"log_scale", "bias"} <= set(fixed.state_dict())
    with pytest.raises(ValueError, match="siglip: needs key"):
        fixed(Embedded(query))


@pytest.mark.parametrize("kwargs", [{"logit_scale": 0.0}, {"logit_scale": float("inf")},
                                    {"logit_bias": float("nan")}])
def test_siglip_module_rejects_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
        SigLIPLoss(**kwargs)


# --- SupCon ---------------------------------------------------------------------------------


def make_labels(batch: int) -> Tensor:
    """Repeated labels, and a last item whose label no other item has (no positive when V = 1)."""
    labels = torch.arange(batch) % max(1, batch // 2)
    labels[-1] = 99
    return labels


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("num_views", [1, 2, 3], ids=lambda v: f"V{v}")
@pytest.mark.parametrize(("batch", "temperature"), [(3, 0.1), (5, 0.5), (8, 0.1)],
                         ids=["B3-tau0.1", "B5-tau0.5", "B8-tau0.1"])
def test_supcon_matches_naive(batch: int, num_views: int, temperature: float,
                              variant: Variant) -> None:
    views = leaf(batch, num_views, 5, seed=batch * 7 + num_views)
    labels = make_labels(batch)
    fast = supcon(views, labels, temperature=temperature, variant=variant)
    naive = naive_supcon(views, labels, temperature, variant)
    assert_value_and_grads(fast, naive, [views])


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_gradcheck(variant: Variant) -> None:
    views = leaf(4, 2, 3, seed=19)
    labels = torch.tensor([0, 1, 0, 2])
    temperature = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)

    def loss(v: Tensor, tau: Tensor) -> Tensor:
        return supcon(v, labels, temperature=tau, variant=variant)

    assert torch.autograd.gradcheck(loss, (views, temperature))
    one_view = leaf(4, 3, seed=20)  # item 1 and item 3 have no positive
    assert torch.autograd.gradcheck(lambda v: loss(v, temperature), (one_view,))


def test_supcon_known_answers() -> None:
    # x = [e1, e1, e2, e2], labels [0, 0, 0, 1], τ = 1 (one view).
    # Anchors 0, 1: positives cos 1 and 0, denominator e + 2. Anchor 2: positives cos 0, 0;
    # denominator 2 + e. Anchor 3 has no positive and is left out.
    e1, e2 = torch.eye(2, dtype=torch.float64)
    x = torch.stack([e1, e1, e2, e2])
    labels = torch.tensor([0, 0, 0, 1])
    out = math.log(E + 2) - 1 / 3
    inner = (2 * math.log(2 * (E + 2) / (E + 1)) + math.log(E + 2)) / 3
    assert_close(supcon(x, labels, temperature=1.0), torch.tensor(out, dtype=torch.float64))
    assert_close(supcon(x, labels, temperature=1.0, variant="in"),
                 torch.tensor(inner, dtype=torch.float64))
    # base_temperature rescales by τ / base, as the official code.
    assert_close(supcon(x, labels, temperature=1.0, base_temperature=0.5),
                 torch.tensor(2 * out, dtype=torch.float64))
    # No positive anywhere: 0, and the graph still backpropagates zeros.
    lonely = leaf(3, 4, seed=21)
    zero = supcon(lonely, torch.tensor([0, 1, 2]))
    assert zero.item() == 0.0
    (grad,) = torch.autograd.grad(zero, [lonely])
    assert torch.equal(grad, torch.zeros_like(lonely))


def test_supcon_with_distinct_labels_is_nt_xent() -> None:
    # The SupCon paper: with one label per item and two views it is SimCLR's loss.
    query, key = leaf(5, 6, seed=22), leaf(5, 6, seed=23)
    views = torch.stack([query, key], dim=1)
    assert_close(supcon(views, torch.arange(5), temperature=0.2),
                 naive_simclr(query, key, 0.2))


def test_supcon_invariances() -> None:
    views = leaf(6, 2, 5, seed=24)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    loss = supcon(views, labels, temperature=0.1)
    renamed = torch.tensor([7, 3, 5])[labels]  # 0 -> 7, 1 -> 3, 2 -> 5
    assert_close(supcon(views, renamed, temperature=0.1), loss)
    perm = torch.tensor([3, 5, 0, 1, 4, 2])
    assert_close(supcon(views[perm], labels[perm], temperature=0.1), loss)
    assert_close(supcon(views[:, [1, 0]], labels, temperature=0.1), loss)
    assert_close(supcon(views * 3.3, labels, temperature=0.1), loss)
    # A renaming that merges two classes changes the positives, so the checks can fail.
    assert not torch.allclose(supcon(views, torch.tensor([0, 1, 0, 1, 1, 0]), temperature=0.1),
                              loss)


def test_supcon_module_reads_views_query_and_key() -> None:
    views = leaf(4, 3, 5, seed=25)
    labels = torch.tensor([0, 1, 1, 0])
    module = SupConLoss(temperature=0.2, variant="in")
    assert list(module.parameters()) == []
    assert_close(module(Embedded(views[:, 0], views=views, labels=labels)),
                 supcon(views, labels, temperature=0.2, variant="in"))
    assert_close(module(Embedded(views[:, 0], views[:, 1], labels=labels)),
                 supcon(views[:, :2], labels, temperature=0.2, variant="in"))
    assert_close(module(Embedded(views[:, 0], labels=labels)),
                 supcon(views[:, 0], labels, temperature=0.2, variant="in"))
    with pytest.raises(ValueError, match="supcon: needs labels"):
        module(Embedded(views[:, 0]))
    with pytest.raises(ValueError, match="labels"):
        supcon(views, torch.tensor([0, 1]))


@pytest.mark.parametrize("kwargs", [{"variant": "mean"}, {"temperature": 0.0},
                                    {"base_temperature": -0.07}])
def test_supcon_module_rejects_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
        SupConLoss(**kwargs)


# --- reference libraries --------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("num_views", [1, 2, 3])
def test_supcon_matches_pytorch_metric_learning(num_views: int, temperature: float) -> None:
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    batch = 8
    views = leaf(batch, num_views, 6, seed=26 + num_views)
    labels = make_labels(batch)  # with V = 1 the last item has no positive
    # pml's temperature divides the cosine, as ours; it averages over anchors with a nonzero loss.
    pml = losses.SupConLoss(temperature=temperature)(
        views.reshape(batch * num_views, 6), labels.repeat_interleave(num_views)
    )
    ours = supcon(views, labels, temperature=temperature)
    assert_value_and_grads(ours, pml, [views])


@pytest.mark.reference
@pytest.mark.parametrize("logit_scale", [1 / 0.07, 100.0])
@pytest.mark.parametrize("batch", [1, 5])
def test_clip_matches_open_clip(batch: int, logit_scale: float) -> None:
    open_clip_loss = pytest.importorskip("open_clip.loss")
    query, key = leaf(batch, 8, seed=27), leaf(batch, 8, seed=28)
    scale = torch.tensor(logit_scale, dtype=torch.float64, requires_grad=True)
    theirs = open_clip_loss.ClipLoss()(  # open_clip expects normalised features
        torch.nn.functional.normalize(query, dim=-1), torch.nn.functional.normalize(key, dim=-1),
        scale,
    )
    ours = clip_loss(query, key, logit_scale=scale)
    assert_value_and_grads(ours, theirs, [query, key, scale])


@pytest.mark.reference
@pytest.mark.parametrize(("logit_scale", "logit_bias"), [(10.0, -10.0), (2.0, 0.5)])
@pytest.mark.parametrize("batch", [1, 5])
def test_sigmoid_matches_open_clip(batch: int, logit_scale: float, logit_bias: float) -> None:
    open_clip_loss = pytest.importorskip("open_clip.loss")
    query, key = leaf(batch, 8, seed=29), leaf(batch, 8, seed=30)
    scale = torch.tensor(logit_scale, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(logit_bias, dtype=torch.float64, requires_grad=True)
    theirs = open_clip_loss.SigLipLoss()(
        torch.nn.functional.normalize(query, dim=-1), torch.nn.functional.normalize(key, dim=-1),
        scale, bias,
    )
    ours = sigmoid_loss(query, key, logit_scale=scale, logit_bias=bias)
    assert_value_and_grads(ours, theirs, [query, key, scale, bias])


@pytest.mark.reference
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_two_view_nt_xent_matches_lightly(temperature: float, aggregation: Aggregation) -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    query, key = leaf(6, 8, seed=31), leaf(6, 8, seed=32)
    theirs = lightly_loss.NTXentLoss(temperature=temperature)(query, key)
    ours = nt_xent(torch.stack([query, key], dim=1), temperature=temperature,
                   aggregation=aggregation)
    assert_value_and_grads(ours, theirs, [query, key])
