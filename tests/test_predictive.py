"""SimSiam's and BYOL's losses (objectives.predictive) against loops written from the papers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from contralign.objectives import build_objective
from contralign.objectives.inputs import Embedded
from contralign.objectives.predictive import BYOLLoss, SimSiamLoss, negative_cosine


def leaf(*shape: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()


def naive_negative_cosine(predictions: Tensor, targets: Tensor) -> Tensor:
    """−(1/B) Σ_b p_b·z_b / (|p_b| |z_b|), the targets as constants."""
    total = torch.zeros((), dtype=torch.float64)
    for p, z in zip(predictions, targets, strict=True):
        z = torch.tensor(z.tolist(), dtype=torch.float64)  # sg(z): plain numbers
        dot = sum(p[d] * z[d] for d in range(len(p)))
        norm_p = torch.sqrt(sum(p[d] * p[d] for d in range(len(p))))
        total = total - dot / (norm_p * math.sqrt(float(z @ z)))
    return total / len(predictions)


def test_negative_cosine_matches_the_loop_and_stops_the_targets_gradient():
    p, z = leaf(5, 4, seed=1), leaf(5, 4, seed=2)
    fast, naive = negative_cosine(p, z), naive_negative_cosine(p, z)
    assert_close(fast, naive)
    assert_close(torch.autograd.grad(fast, p), torch.autograd.grad(naive, p))
    fast_grads = torch.autograd.grad(negative_cosine(p, z), (p, z), allow_unused=True)
    assert fast_grads[1] is None  # the target is detached
    assert_close(negative_cosine(z, z), torch.tensor(-1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        negative_cosine(p, z[:, :3])


@pytest.mark.parametrize("cls", [SimSiamLoss, BYOLLoss])
def test_the_losses_match_the_papers_formulas_in_value_and_gradient(cls):
    module = cls(dim=4, hidden=6).double()
    z1, z2 = leaf(8, 4, seed=3), leaf(8, 4, seed=4)
    loss = module(Embedded(z1, z2))
    h = module.predictor  # the same module in the same (training) mode: batch statistics
    naive = naive_negative_cosine(h(z1), z2)
    if cls is SimSiamLoss:  # (D(h(z1), z2) + D(h(z2), z1)) / 2
        naive = (naive + naive_negative_cosine(h(z2), z1)) / 2
    params = [*module.parameters()]
    assert_close(loss, naive)
    assert_close(torch.autograd.grad(loss, [z1, z2, *params], allow_unused=True, retain_graph=True),
                 torch.autograd.grad(naive, [z1, z2, *params], allow_unused=True))


def test_byol_sends_no_gradient_to_the_target_and_simsiam_only_through_the_predictor():
    z1, z2 = leaf(8, 4, seed=5), leaf(8, 4, seed=6)
    byol = BYOLLoss(dim=4, hidden=6).double()
    assert torch.autograd.grad(byol(Embedded(z1, z2)), z2, allow_unused=True)[0] is None
    simsiam = SimSiamLoss(dim=4, hidden=6).double()
    # z2's gradient is that of its own prediction h(z2) alone (its role as a target is cut).
    via_prediction = torch.autograd.grad(
        negative_cosine(simsiam.predictor(z2), z1) / 2, z2)[0]
    assert_close(torch.autograd.grad(simsiam(Embedded(z1, z2)), z2)[0], via_prediction)


def test_the_registry_builds_them_with_the_towers_width_and_byol_takes_momentum_keys():
    from contralign.objectives import OBJECTIVES

    simsiam = build_objective("simsiam", {"hidden": 8}, dim=16)
    assert isinstance(simsiam, SimSiamLoss) and simsiam.predictor.layers[0].in_features == 16
    assert simsiam.predictor.layers[-1].out_features == 16
    assert OBJECTIVES["byol"].momentum_keys and not OBJECTIVES["simsiam"].momentum_keys
    plain = build_objective("byol", {"batch_norm": False}, dim=16)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    assert plain.predictor.layers[0].bias is not None  # a bias where no BatchNorm follows
    with pytest.raises(ValueError, match="needs key"):
        simsiam(Embedded(torch.zeros(3, 16)))
