"""MoCo's symmetric loss (``objective.symmetric``; the authors' CIFAR demo and lightly's
benchmark): each view is a query of the online tower against the other view's key from the
momentum tower, both directions averaged, and both directions' keys queued after the loss."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_shuffle_bn import BATCH, SPLITS, batch_of, by_groups, moco_config

from contralign.objectives.momentum import moco_loss
from contralign.training.build import build_model, build_task
from contralign.training.config import TrainConfig
from contralign.training.task import ContrastiveTask

QUEUE = 64


def symmetric_task(tmp_path: Path, splits: int = 1) -> ContrastiveTask:
    config = moco_config(tmp_path, bn_splits=splits, symmetric=True, queue_size=QUEUE)
    torch.manual_seed(0)
    task = build_task(config, build_model(config)).train()
    task.objective.queue.enqueue(F.normalize(torch.randn(QUEUE - 2 * BATCH, 16), dim=-1))
    return task


def test_the_loss_is_the_mean_of_both_directions_against_the_same_queue(tmp_path: Path):
    """The naive reference, written as the authors' demo: q1 = f_q(x1), k2 = f_k(x2) and the
    swap, each InfoNCE against the queue as it was before the step; loss and every gradient."""
    task = symmetric_task(tmp_path)
    reference = copy.deepcopy(task)
    batch = batch_of(task)
    queue = task.objective.queue.negatives()

    loss = task(batch)["loss"]
    loss.backward()

    model = reference.model
    q1, q2 = (model.embed("anchor", batch[role]) for role in ("anchor", "positive"))
    k2, k1 = (model.embed("positive", batch[role]) for role in ("positive", "anchor"))
    temperature = reference.objective.temperature
    expected = (moco_loss(q1, k2, queue, temperature) + moco_loss(q2, k1, queue, temperature)) / 2
    expected.backward()

    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    grads = {n: p.grad for n, p in task.named_parameters() if p.grad is not None}
    wanted = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert grads.keys() == wanted.keys() and len(grads) > 10
    for name, grad in wanted.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # Both directions' keys are queued after the loss, item by item: k2_0, k1_0, k2_1, ...
    keys = F.normalize(torch.stack([k2, k1], dim=1).flatten(0, 1), dim=-1)
    torch.testing.assert_close(task.objective.queue.negatives(), torch.cat([queue, keys]))


def test_with_shuffle_bn_each_key_role_draws_its_own_groups(tmp_path: Path):
    """Roles in the demo's order (q1, k2, q2, k1); each momentum role draws the next randperm."""
    task = symmetric_task(tmp_path, splits=SPLITS)
    assert [role.name for role in task.roles(batch_of(task))] == [
        "anchor", "positive", "swapped.anchor", "swapped.positive"]
    batch = batch_of(task)
    torch.manual_seed(3)
    embedded = task.embed(batch)
    torch.manual_seed(3)
    orders = [torch.randperm(BATCH), torch.randperm(BATCH)]
    assert not torch.equal(orders[0], orders[1])
    for name, source, order in (("positive", "positive", orders[0]),
                                ("swapped.positive", "anchor", orders[1])):
        with torch.no_grad():
            expected = by_groups(task, "positive", batch[source], order)
        torch.testing.assert_close(embedded[name], expected, rtol=1e-5, atol=1e-6)
    assert embedded["swapped.anchor"].requires_grad
    assert not embedded["swapped.positive"].requires_grad


def test_symmetric_is_a_task_setting_of_moco_only(tmp_path: Path):
    config = moco_config(tmp_path, symmetric=True)
    assert config.objective.symmetric and "symmetric" not in config.objective.params
    assert not moco_config(tmp_path).objective.symmetric
    raw = {"data": {"path": str(tmp_path / "t.jsonl")},
           "objective": {"name": "byol", "symmetric": True}}
    with pytest.raises(ValueError, match="symmetric: unknown parameter of byol"):
        TrainConfig.model_validate(raw)
    # info_nce's own `symmetric` (CLIP's second direction) stays the objective's parameter
    raw["objective"] = {"name": "info_nce", "symmetric": True}
    info_nce = TrainConfig.model_validate(raw).objective
    assert info_nce.params == {"symmetric": True} and not info_nce.symmetric
