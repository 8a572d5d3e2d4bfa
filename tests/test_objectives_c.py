"""MoCo, SwAV and WhitenedCSE against their naive references, known answers, invariances, and
a 2-process gloo run against one process."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference_c import (
    NaiveQueue,
    naive_group_whiten,
    naive_moco_loss,
    naive_sinkhorn,
    naive_swav_loss,
    naive_whitened_cse_loss,
)
from torch import Tensor, nn
from torch.testing import assert_close

from contralign.encoders.momentum import MomentumEncoder
from contralign.objectives.inputs import Embedded
from contralign.objectives.momentum import (
    KeyQueue,
    MoCoLoss,
    gather_rows,
    moco_loss,
)
from contralign.objectives.prototypes import (
    SwAVLoss,
    sinkhorn,
    swav_loss,
    swav_multi_view_loss,
)
from contralign.objectives.whitening import (
    WhitenedCSELoss,
    WhiteningMethod,
    group_whiten,
    whitened_cse_loss,
)


def randn(*shape: int, seed: int, grad: bool = True, scale: float = 1.0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
    return values.requires_grad_(grad)


def unit_rows(*shape: int, seed: int) -> Tensor:
    return F.normalize(randn(*shape, seed=seed, grad=False), dim=-1)


# === MoCo: the queue =========================================================================


def test_queue_is_fifo_and_wraps_around() -> None:
    queue, naive = KeyQueue(dim=2, size=5).double(), NaiveQueue(5)
    counter = 0
    for batch in [2, 2, 3, 1, 7, 5, 4]:  # wraps mid-batch, and one batch larger than the queue
        keys = torch.tensor([[float(counter + i), -float(counter + i)] for i in range(batch)],
                            dtype=torch.float64)
        counter += batch
        queue.enqueue(keys)
        naive.enqueue(keys)
        assert torch.equal(queue.negatives(), naive.negatives(2))  # oldest first
        assert len(queue) == min(counter, 5)
        assert int(queue.pointer) == counter % 5
    # After 24 keys the queue holds the last five, 19..23, oldest first.
    assert queue.negatives()[:, 0].tolist() == [19.0, 20.0, 21.0, 22.0, 23.0]


def test_queue_not_yet_full_serves_only_its_filled_part() -> None:
    queue = KeyQueue(dim=3, size=8)
    assert queue.negatives().shape == (0, 3)
    assert len(queue) == 0
    queue.enqueue(torch.ones(3, 3))
    assert queue.negatives().shape == (3, 3)
    assert int(queue.count) == 3
    queue.enqueue(2 * torch.ones(6, 3))
    assert int(queue.count) == 8  # capped at the size
    assert queue.negatives()[:, 0].tolist() == [1.0] * 2 + [2.0] * 6  # the oldest 1 is gone


def test_queue_state_dict_round_trip_through_a_checkpoint_file() -> None:
    module = MoCoLoss(dim=4, queue_size=6).double()
    module.queue.enqueue(randn(9, 4, seed=1, grad=False))
    assert {"queue.keys", "queue.pointer", "queue.count"} <= set(module.state_dict())
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    restored = MoCoLoss(dim=4, queue_size=6).double()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.queue.negatives(), module.queue.negatives())
    more = randn(4, 4, seed=2, grad=False)
    module.queue.enqueue(more)
    restored.queue.enqueue(more)
    assert torch.equal(restored.queue.negatives(), module.queue.negatives())


def test_queue_rejects_wrong_width_and_sizes() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        KeyQueue(dim=3, size=4).enqueue(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="size"):
        KeyQueue(dim=3, size=0)


# === MoCo: the momentum encoder ==============================================================


def _tower() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("momentum", [0.999, 0.9, 0.0, 1.0])
def test_momentum_update_matches_the_formula_for_every_parameter(momentum: float) -> None:
    online = _tower()
    copy = MomentumEncoder(online, momentum=momentum)
    assert all(not p.requires_grad for p in copy.parameters())
    for step in range(3):
        with torch.no_grad():  # the online tower moves (as an optimiser step would)...
            for parameter in online.parameters():
                parameter.add_(randn(*parameter.shape, seed=10 + step, grad=False))
        online(randn(8, 4, seed=20 + step, grad=False))  # ...and its batch-norm stats too
        before = {name: p.detach().clone() for name, p in copy.encoder.named_parameters()}
        copy.update(online)
        online_params = dict(online.named_parameters())
        for name, parameter in copy.encoder.named_parameters():
            expected = momentum * before[name] + (1 - momentum) * online_params[name].detach()
            assert_close(parameter, expected, rtol=0.0, atol=1e-14)
        for name, buffer in copy.encoder.named_buffers():
            assert torch.equal(buffer, dict(online.named_buffers())[name])
    assert len(before) == 6  # both Linear layers and the batch norm's affine parameters


def test_momentum_encoder_is_a_copy_and_runs_without_graph() -> None:
    online = _tower()
    copy = MomentumEncoder(online)
    online_weight = dict(online.named_parameters())["0.weight"]
    with torch.no_grad():
        online_weight.add_(1.0)
    copy_weight = dict(copy.encoder.named_parameters())["0.weight"]
    assert not torch.equal(copy_weight, online_weight)  # not shared storage
    out = copy(randn(5, 4, seed=3))
    assert out.shape == (5, 3)
    assert not out.requires_grad


def test_momentum_encoder_rejects_bad_momentum_and_other_towers() -> None:
    with pytest.raises(ValueError, match="momentum"):
        MomentumEncoder(_tower(), momentum=1.5)
    with pytest.raises(ValueError, match="momentum"):
        MomentumEncoder(_tower(), momentum=float("nan"))
    with pytest.raises(ValueError, match="parameters"):
        MomentumEncoder(_tower()).update(nn.Linear(4, 3))


# === MoCo: the loss ==========================================================================


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("n_negatives", [0, 1, 7])
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_moco_loss_matches_naive_value_and_gradient(
    batch: int, n_negatives: int, temperature: float
) -> None:
    query, key = randn(batch, 6, seed=batch), randn(batch, 6, seed=batch + 50)
    queue = unit_rows(n_negatives, 6, seed=n_negatives + 100)
    fast = moco_loss(query, key, queue, temperature)
    naive = naive_moco_loss(query, key, queue, temperature)
    assert_close(fast, naive)
    assert_close(torch.autograd.grad(fast, query), torch.autograd.grad(naive, query))


def test_moco_loss_known_answers() -> None:
    e1, e2 = torch.eye(2, dtype=torch.float64)
    # q = k = e1, one negative e2, τ = 1: logits [1, 0] -> log(1 + e^-1).
    loss = moco_loss(e1[None], e1[None], e2[None], temperature=1.0)
    assert_close(loss, torch.tensor(math.log1p(math.exp(-1.0)), dtype=torch.float64))
    # No negatives: the positive is the only candidate, −log 1 = 0.
    assert moco_loss(e1[None], e2[None], torch.zeros(0, 2, dtype=torch.float64)) == 0


def test_moco_key_and_queue_get_no_gradient() -> None:
    query, key = randn(4, 5, seed=1), randn(4, 5, seed=2)
    queue = randn(6, 5, seed=3)
    moco_loss(query, key, queue).backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert key.grad is None
    assert queue.grad is None


def test_moco_module_computes_the_loss_before_enqueueing() -> None:
    module = MoCoLoss(dim=5, queue_size=16, temperature=0.2).double()
    module.queue.enqueue(unit_rows(6, 5, seed=4))
    before = module.queue.negatives()
    query, key = randn(3, 5, seed=5), randn(3, 5, seed=6)

    loss = module(Embedded(query, key))

    assert_close(loss, naive_moco_loss(query, key, before, 0.2))
    # Enqueuing first would put each row's own key among its negatives: a different value.
    enqueued_first = moco_loss(query, key, torch.cat([before, F.normalize(key.detach())]))
    assert not torch.allclose(loss, enqueued_first)
    # Afterwards the queue holds the old keys, then this batch's keys, normalised.
    assert_close(module.queue.negatives(), torch.cat([before, F.normalize(key.detach())]))
    # The graph survives the in-place enqueue, and the key still gets no gradient.
    loss.backward()
    assert query.grad is not None and key.grad is None


def test_moco_module_enqueues_only_in_training_mode() -> None:
    module = MoCoLoss(dim=5, queue_size=16).double()
    module.eval()
    module(Embedded(randn(3, 5, seed=7), randn(3, 5, seed=8)))
    assert len(module.queue) == 0
    module.train()
    module(Embedded(randn(3, 5, seed=7), randn(3, 5, seed=8)))
    assert len(module.queue) == 3


def test_moco_module_needs_a_key_and_valid_settings() -> None:
    with pytest.raises(ValueError, match="moco: needs key"):
        MoCoLoss(dim=5)(Embedded(randn(3, 5, seed=1)))
    with pytest.raises(ValueError, match="temperature"):
        MoCoLoss(dim=5, temperature=0.0)
    with pytest.raises(ValueError, match="queue_size"):
        MoCoLoss(dim=5, queue_size=0)


def test_gather_rows_is_identity_in_one_process() -> None:
    rows = randn(3, 4, seed=1, grad=False)
    assert gather_rows(rows) is rows


# === SwAV: Sinkhorn ==========================================================================


@pytest.mark.parametrize("iterations", [0, 1, 3, 10])
@pytest.mark.parametrize("epsilon", [0.05, 0.5])
@pytest.mark.parametrize(("batch", "n_prototypes"), [(1, 3), (6, 4), (5, 9)])
def test_sinkhorn_matches_the_papers_algorithm(
    batch: int, n_prototypes: int, epsilon: float, iterations: int
) -> None:
    scores = unit_rows(batch, 7, seed=batch) @ unit_rows(n_prototypes, 7, seed=n_prototypes).T
    assert_close(sinkhorn(scores, epsilon, iterations), naive_sinkhorn(scores, epsilon, iterations))


def test_sinkhorn_codes_are_doubly_stochastic() -> None:
    batch, n_prototypes = 12, 4
    scores = unit_rows(batch, 6, seed=1) @ unit_rows(n_prototypes, 6, seed=2).T  # (B, K)
    codes = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert codes.shape == (batch, n_prototypes) and (codes >= 0).all()
    assert_close(codes.sum(dim=1), torch.ones(batch, dtype=torch.float64))  # rows: exactly 1
    # Columns: B/K = 3 each, reached as the iterations converge.
    converged = sinkhorn(scores, epsilon=0.3, iterations=60)
    assert_close(converged.sum(dim=1), torch.ones(batch, dtype=torch.float64))
    assert_close(converged.sum(dim=0), torch.full((n_prototypes,), batch / n_prototypes,
                                                  dtype=torch.float64), rtol=0, atol=1e-8)
    # Without iterations the rows are a plain softmax and the columns are not balanced.
    raw = sinkhorn(scores, epsilon=0.3, iterations=0)
    assert_close(raw, torch.softmax(scores / 0.3, dim=1))
    assert not torch.allclose(raw.sum(dim=0), converged.sum(dim=0), atol=1e-3)


def test_sinkhorn_is_shift_invariant_finite_on_large_scores_and_has_no_graph() -> None:
    scores = randn(5, 4, seed=3, scale=50.0)  # exp(scores / 0.05) overflows float64
    codes = sinkhorn(scores)
    assert torch.isfinite(codes).all()
    assert not codes.requires_grad
    assert_close(sinkhorn(scores + 7.0), codes)
    half = sinkhorn(scores.detach().float())
    assert half.dtype == torch.float32


def test_sinkhorn_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.zeros(2, 3), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(torch.zeros(2, 3), iterations=-1)
    with pytest.raises(ValueError, match="scores"):
        sinkhorn(torch.zeros(2, 3, 4))


# === SwAV: the loss ==========================================================================


@pytest.mark.parametrize("n_views", [2, 3])
def test_swav_loss_matches_naive_value_and_gradients(n_views: int) -> None:
    views = [randn(6, 5, seed=v) for v in range(n_views)]
    prototypes = unit_rows(4, 5, seed=9).requires_grad_()
    if n_views == 2:
        fast = swav_loss(views[0], views[1], prototypes, temperature=0.1, epsilon=0.05,
                         iterations=3)
    else:
        fast = swav_multi_view_loss(torch.stack(views, dim=1), prototypes, temperature=0.1,
                                    epsilon=0.05, iterations=3)
    naive = naive_swav_loss(views, prototypes, temperature=0.1, epsilon=0.05, iterations=3)
    inputs = [*views, prototypes]
    assert_close(fast, naive)
    assert_close(torch.autograd.grad(fast, inputs), torch.autograd.grad(naive, inputs))


def test_swav_loss_is_symmetric_in_its_two_views() -> None:
    z1, z2 = randn(6, 5, seed=1), randn(6, 5, seed=2)
    prototypes = unit_rows(4, 5, seed=3)
    assert_close(swav_loss(z1, z2, prototypes), swav_loss(z2, z1, prototypes))


def test_swav_gradcheck_with_fixed_codes() -> None:
    views = randn(3, 3, 4, seed=1)  # (B, V, D)
    prototypes = unit_rows(4, 4, seed=2).requires_grad_()
    codes = torch.softmax(randn(3, 3, 4, seed=3, grad=False), dim=-1)  # (B, V, K)

    def loss(v: Tensor, c: Tensor) -> Tensor:
        return swav_multi_view_loss(v, c, temperature=0.5, codes=codes)

    assert torch.autograd.gradcheck(loss, (views, prototypes))


def test_swav_module_normalises_prototypes_and_trains_them() -> None:
    module = SwAVLoss(dim=5, n_prototypes=4, temperature=0.1).double()
    with torch.no_grad():
        module.prototypes.mul_(3.0)  # drifted off the sphere, as after an optimiser step
    unit = F.normalize(module.prototypes.detach(), dim=1)
    z1, z2 = randn(6, 5, seed=1), randn(6, 5, seed=2)

    loss = module(Embedded(z1, z2))

    assert_close(module.prototypes.detach().norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert_close(loss, swav_loss(z1, z2, unit))
    loss.backward()
    assert module.prototypes.grad is not None
    assert (module.prototypes.grad.abs().sum(dim=1) > 0).all()  # every prototype gets one
    assert z1.grad is not None and z2.grad is not None


def test_swav_module_uses_views_when_present() -> None:
    module = SwAVLoss(dim=5, n_prototypes=4).double()
    views = randn(6, 3, 5, seed=4)
    expected = swav_multi_view_loss(views, module.prototypes)
    assert_close(module(Embedded(views[:, 0], views=views)), expected)


def test_swav_codes_of_the_global_views_only_match_naive() -> None:
    views = [randn(6, 5, seed=v) for v in range(4)]  # 2 global + 2 local crops
    prototypes = unit_rows(4, 5, seed=9).requires_grad_()
    fast = swav_multi_view_loss(torch.stack(views, dim=1), prototypes, assign=2)
    naive = naive_swav_loss(views, prototypes, temperature=0.1, epsilon=0.05, iterations=3,
                            assign=2)
    inputs = [*views, prototypes]
    assert_close(fast, naive)
    assert_close(torch.autograd.grad(fast, inputs), torch.autograd.grad(naive, inputs))
    with pytest.raises(ValueError, match="assign must be between 1 and 4"):
        swav_multi_view_loss(torch.stack(views, dim=1), prototypes, assign=5)


def test_swav_queue_joins_the_sinkhorn_step_once_full_and_survives_a_checkpoint() -> None:
    module = SwAVLoss(dim=5, n_prototypes=4, assign_views=2, queue_size=6).double()
    batches = [randn(3, 3, 5, seed=s) for s in range(4)]  # (B, V, D), 3 views, 2 assigned
    seen: list[Tensor] = []  # the unit embeddings of the assigned views, batch by batch
    for step, views in enumerate(batches):
        unit = F.normalize(module.prototypes.detach(), dim=1)
        queues = None
        if step >= 2:  # two batches of 3 fill the 6 slots
            queues = [torch.cat([F.normalize(b[:, i], dim=-1) for b in seen[-2:]])
                      for i in range(2)]
        expected = naive_swav_loss(list(views.unbind(1)), unit, 0.1, 0.05, 3, assign=2,
                                   queues=queues)
        if step == 3:  # a fresh module loaded from the checkpoint continues the same
            restored = SwAVLoss(dim=5, n_prototypes=4, assign_views=2, queue_size=6).double()
            restored.load_state_dict(module.state_dict())
            assert_close(restored(Embedded(views[:, 0], views=views)), expected)
        assert_close(module(Embedded(views[:, 0], views=views)), expected)
        seen.append(views.detach())
    assert int(module.steps) == 4
    module.eval()  # evaluation neither counts nor enqueues
    before = [queue.negatives() for queue in module.queues]
    module(Embedded(batches[0][:, 0], views=batches[0]))
    assert int(module.steps) == 4
    assert all(torch.equal(a, q.negatives()) for a, q in zip(before, module.queues, strict=True))


def test_swav_prototypes_are_frozen_for_their_first_steps() -> None:
    module = SwAVLoss(dim=5, n_prototypes=4, freeze_prototypes_steps=2).double()
    views = randn(6, 2, 5, seed=1)
    grads = []
    for _ in range(3):
        module.prototypes.grad = None
        module(Embedded(views[:, 0], views=views)).backward()
        grads.append(module.prototypes.grad)
    assert grads[0] is None and grads[1] is None and grads[2] is not None
    assert views.grad is not None  # the embeddings learn throughout


def test_swav_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="swav: needs key"):
        SwAVLoss(dim=5, n_prototypes=4)(Embedded(torch.zeros(3, 5)))
    with pytest.raises(ValueError, match="V >= 2"):
        swav_multi_view_loss(torch.zeros(3, 1, 5), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="epsilon"):
        SwAVLoss(dim=5, epsilon=-1.0)


# === WhitenedCSE: shuffled group whitening ===================================================


def _correlated(rows: int, dim: int, seed: int) -> Tensor:
    mixing = randn(dim, dim, seed=seed + 1, grad=False)
    return (randn(rows, dim, seed=seed, grad=False) @ mixing + 3.0).requires_grad_()


@pytest.mark.parametrize("method", ["zca", "cholesky"])
def test_whitened_groups_have_identity_covariance(method: WhiteningMethod) -> None:
    x = _correlated(64, 12, seed=1)
    permutation = torch.randperm(12, generator=torch.Generator().manual_seed(2))
    white = group_whiten(x, groups=3, permutation=permutation, eps=0.0, method=method)
    centred = white - white.mean(dim=0)
    covariance = centred.T @ centred / 64  # (D, D)
    for g in range(3):
        dims = permutation[4 * g: 4 * (g + 1)]
        assert_close(covariance[dims][:, dims], torch.eye(4, dtype=torch.float64),
                     rtol=0, atol=1e-9)
    # Only within groups: dimensions in different groups stay correlated.
    other = permutation[4:8]
    assert covariance[permutation[:4]][:, other].abs().max() > 0.05


@pytest.mark.parametrize("method", ["zca", "cholesky"])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
@pytest.mark.parametrize(("rows", "dim", "groups"), [(9, 8, 4), (7, 6, 1), (12, 12, 3)])
def test_group_whiten_matches_naive_per_group(
    rows: int, dim: int, groups: int, eps: float, method: WhiteningMethod
) -> None:
    x = _correlated(rows, dim, seed=rows)
    permutation = torch.randperm(dim, generator=torch.Generator().manual_seed(dim))
    fast = group_whiten(x, groups, permutation, eps, method)
    naive = naive_group_whiten(x, groups, permutation, eps, method)
    assert_close(fast, naive)
    assert_close(torch.autograd.grad(fast.sin().sum(), x),
                 torch.autograd.grad(naive.sin().sum(), x))


def test_zca_is_the_symmetric_inverse_square_root() -> None:
    # Independent of eigh: scipy's matrix square root.
    from scipy.linalg import sqrtm

    x = _correlated(20, 5, seed=3).detach()
    centred = (x - x.mean(dim=0)).numpy()
    covariance = centred.T @ centred / 20
    expected = centred @ np.linalg.inv(np.real(sqrtm(covariance)))
    assert np.allclose(group_whiten(x, groups=1, eps=0.0).numpy(), expected, atol=1e-9)


def test_unshuffling_restores_the_original_dimension_order() -> None:
    # One group: ZCA commutes with permuting dimensions, so shuffle + unshuffle is no shuffle.
    # A wrong inverse (e.g. indexing by the permutation again) leaves the columns permuted.
    x = _correlated(16, 6, seed=4)
    permutation = torch.tensor([3, 0, 5, 1, 4, 2])
    assert_close(group_whiten(x, 1, permutation, eps=0.0), group_whiten(x, 1, None, eps=0.0))
    assert not torch.allclose(group_whiten(x, 1, None, eps=0.0)[:, permutation],
                              group_whiten(x, 1, None, eps=0.0))
    # With groups the shuffle matters: a different partition whitens differently.
    assert not torch.allclose(group_whiten(x, 2, permutation), group_whiten(x, 2, None))


@pytest.mark.parametrize("stop_gradient", [False, True])
@pytest.mark.parametrize("method", ["zca", "cholesky"])
def test_group_whiten_gradcheck(method: WhiteningMethod, stop_gradient: bool) -> None:
    x = _correlated(6, 4, seed=5)
    permutation = torch.tensor([2, 0, 3, 1])

    def whiten(v: Tensor) -> Tensor:
        return group_whiten(v, 2, permutation, 1e-3, method, stop_gradient)

    if stop_gradient:  # backward treats W as constant: finite differences do not
        white, constant = whiten(x), group_whiten(x, 2, permutation, 1e-3, method)
        assert_close(white, constant)
        weights = randn(6, 4, seed=6, grad=False)
        assert not torch.allclose(torch.autograd.grad((white * weights).sum(), x)[0],
                                  torch.autograd.grad((constant * weights).sum(), x)[0])
    else:
        assert torch.autograd.gradcheck(whiten, (x,))


def test_group_whiten_rejects_bad_arguments() -> None:
    x = torch.randn(8, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="groups must divide"):
        group_whiten(x, groups=4)
    with pytest.raises(ValueError, match="more rows"):
        group_whiten(x[:3], groups=2)
    with pytest.raises(ValueError, match="permutation"):
        group_whiten(x, groups=2, permutation=torch.tensor([0, 0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="method"):
        group_whiten(x, groups=2, method="pca")  # type: ignore[arg-type]


# === WhitenedCSE: the loss ===================================================================


@pytest.mark.parametrize("method", ["zca", "cholesky"])
@pytest.mark.parametrize("n_positives", [1, 2, 3])
def test_whitened_cse_loss_matches_naive_value_and_gradients(
    method: WhiteningMethod, n_positives: int
) -> None:
    anchor, positives = _correlated(8, 6, seed=7), randn(8, n_positives, 6, seed=8)
    generator = torch.Generator().manual_seed(9)
    permutations = torch.stack([torch.randperm(6, generator=generator)
                                for _ in range(n_positives + 1)])
    fast = whitened_cse_loss(anchor, positives, permutations, groups=2, temperature=0.05,
                             eps=1e-4, method=method)
    naive = naive_whitened_cse_loss(anchor, positives, permutations, 2, 0.05, 1e-4, method)
    assert_close(fast, naive)
    assert_close(torch.autograd.grad(fast, [anchor, positives]),
                 torch.autograd.grad(naive, [anchor, positives]))


def test_whitened_cse_loss_gradcheck() -> None:
    anchor, positives = _correlated(5, 4, seed=10), randn(5, 2, 4, seed=11)
    permutations = torch.tensor([[0, 1, 2, 3], [3, 1, 0, 2], [1, 3, 2, 0]])

    def loss(a: Tensor, p: Tensor) -> Tensor:
        return whitened_cse_loss(a, p, permutations, groups=2, temperature=0.5, eps=1e-3)

    assert torch.autograd.gradcheck(loss, (anchor, positives))


def test_whitened_cse_module_whitens_the_key_with_fresh_shuffles() -> None:
    module = WhitenedCSELoss(groups=2, num_positives=3, temperature=0.05)
    query, key = _correlated(10, 6, seed=12), _correlated(10, 6, seed=13)
    torch.manual_seed(123)
    loss = module(Embedded(query, key))
    torch.manual_seed(123)  # the module draws the anchor's shuffle, then one per positive
    permutations = torch.stack([torch.randperm(6) for _ in range(4)])
    positives = key[:, None].expand(-1, 3, -1)
    assert_close(loss, naive_whitened_cse_loss(query, positives, permutations, 2, 0.05, 1e-5))
    # Three positives: about three times one positive's loss, not their mean.
    assert loss > 2 * whitened_cse_loss(query, positives[:, :1], permutations[:2], groups=2)


def test_whitened_cse_module_uses_views_as_positives() -> None:
    module = WhitenedCSELoss(groups=3, method="cholesky")
    views = randn(9, 3, 6, seed=14)
    torch.manual_seed(5)
    loss = module(Embedded(views[:, 0], views=views))
    torch.manual_seed(5)
    permutations = torch.stack([torch.randperm(6) for _ in range(3)])
    expected = whitened_cse_loss(views[:, 0], views[:, 1:], permutations, groups=3,
                                 method="cholesky")
    assert_close(loss, expected)


def test_whitened_cse_module_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="method"):
        WhitenedCSELoss(method="pca")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        WhitenedCSELoss(temperature=float("nan"))
    with pytest.raises(ValueError, match="whitened_cse: needs key"):
        WhitenedCSELoss(groups=2)(Embedded(torch.randn(8, 4)))
    with pytest.raises(ValueError, match="groups must divide"):
        WhitenedCSELoss(groups=128)(Embedded(torch.randn(8, 32), torch.randn(8, 32)))


# === distributed: 2 gloo processes against one ===============================================

_WORLD = 2
_SIZES = [3, 5]  # rows per rank: unequal on purpose
_DIM, _PROTOTYPES = 4, 3


def _rank_rows(full: Tensor, rank: int) -> Tensor:
    start = sum(_SIZES[:rank])
    return full[start:start + _SIZES[rank]]


def _worker(rank: int, init_file: str, out_dir: str, keys: Tensor, scores: Tensor) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=_WORLD)
    try:
        module = MoCoLoss(dim=_DIM, queue_size=32).double()
        module(Embedded(_rank_rows(keys, rank), _rank_rows(keys, rank)))
        codes = sinkhorn(_rank_rows(scores, rank), epsilon=0.1, iterations=3)
        torch.save({"queue": module.queue.negatives(), "codes": codes},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    total = sum(_SIZES)
    keys = randn(total, _DIM, seed=1, grad=False)
    scores = unit_rows(total, _DIM, seed=2) @ unit_rows(_PROTOTYPES, _DIM, seed=3).T
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), keys, scores),
             nprocs=_WORLD, join=True)

    single_codes = sinkhorn(scores, epsilon=0.1, iterations=3)
    for rank in range(_WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        # Every rank's queue holds all ranks' keys, in rank order.
        assert_close(result["queue"], F.normalize(keys))
        # Sinkhorn over 2 ranks = Sinkhorn over the whole batch in one process.
        assert_close(result["codes"], _rank_rows(single_codes, rank))
    # ...which differs from each rank running Sinkhorn on its own rows.
    assert not torch.allclose(sinkhorn(_rank_rows(scores, 0), 0.1, 3), single_codes[:3])
