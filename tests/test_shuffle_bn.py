"""Shuffle-BN in one process (``objective.bn_splits``, MoCo arXiv:1911.05722 section 3.3; the
authors' one-GPU CIFAR demo simulates it with a split BatchNorm): while training, the online tower
embeds consecutive groups of the batch apart and the momentum tower random groups, so each
BatchNorm normalises a group by that group's statistics and a query never shares its key's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from contralign.core.errors import BatchError, ConfigError
from contralign.training.build import build_model, build_task, check_fast_paths
from contralign.training.config import TrainConfig
from contralign.training.recipes import find_config
from contralign.training.task import ContrastiveTask

BATCH, SPLITS = 16, 4


def moco_config(tmp_path: Path, **objective: Any) -> TrainConfig:
    """The ``moco-v2-images`` recipe at width 4, eager, without dev evaluation."""
    raw = yaml.safe_load(find_config("moco-v2-images").read_text(encoding="utf-8"))
    raw.pop("eval", None)
    raw["model"].update(name="resnet18-cifar-w4", head={"dims": [32, 16], "batch_norm": False})
    raw["objective"].update(objective)
    raw["train"]["compile"] = False  # eager, as the groups are checked against eager embeds
    raw["data"]["path"] = str(tmp_path / "train.npz")
    return TrainConfig.model_validate(raw)


def moco_task(tmp_path: Path, splits: int) -> ContrastiveTask:
    config = moco_config(tmp_path, bn_splits=splits)
    torch.manual_seed(0)
    task = build_task(config, build_model(config))
    return task.train()


def batch_of(task: ContrastiveTask, rows: int = BATCH) -> dict[str, Any]:
    """Two different random 'views' of ``rows`` images, scaled as the tower expects."""
    scale = task.model.anchor_tower.preprocessor.scale
    generator = torch.Generator().manual_seed(1)
    views = [scale(torch.rand(rows, 3, 28, 28, generator=generator)) for _ in range(2)]
    ids = torch.arange(rows)
    return {"anchor": views[0], "positive": views[1], "anchor_ids": ids, "positive_ids": ids}


def by_groups(task: ContrastiveTask, tower: str, inputs: dict[str, torch.Tensor],
              order: torch.Tensor) -> torch.Tensor:
    """The reference: the tower on each group of ``order`` alone, rows put back in place."""
    out = torch.empty(BATCH, task.model.trained_dim("anchor"))
    for group in order.tensor_split(SPLITS):
        out[group] = task.model.embed(tower, {k: v[group] for k, v in inputs.items()})
    return out


def test_queries_are_normalised_by_consecutive_groups_and_keys_by_random_ones(tmp_path: Path):
    task = moco_task(tmp_path, SPLITS)
    batch = batch_of(task)
    torch.manual_seed(7)
    embedded = task.embed(batch)
    torch.manual_seed(7)  # the same permutation: the keys' groups are torch's next randperm
    order = torch.randperm(BATCH)
    assert not torch.equal(order, torch.arange(BATCH))
    with torch.no_grad():
        queries = by_groups(task, "anchor", batch["anchor"], torch.arange(BATCH))
        keys = by_groups(task, "positive", batch["positive"], order)
        whole = task.model.embed("anchor", batch["anchor"])
    torch.testing.assert_close(embedded["anchor"].detach(), queries, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedded["positive"], keys, rtol=1e-5, atol=1e-6)
    # BatchNorm did see groups: the whole batch at once normalises differently
    assert (embedded["anchor"].detach() - whole).abs().max() > 1e-3
    assert embedded["anchor"].requires_grad and not embedded["positive"].requires_grad


def test_one_split_and_evaluation_embed_the_whole_batch(tmp_path: Path):
    plain, split = moco_task(tmp_path, 1), moco_task(tmp_path, SPLITS)
    batch = batch_of(plain)
    with torch.no_grad():
        whole = plain.model.embed("anchor", batch["anchor"])
        torch.testing.assert_close(plain.embed(batch)["anchor"], whole)
        split.eval()
        evaluated = split.embed(batch)["anchor"]
        torch.testing.assert_close(evaluated, split.model.embed("anchor", batch["anchor"]))


def test_a_group_of_one_row_is_refused_naming_the_key(tmp_path: Path):
    task = moco_task(tmp_path, SPLITS)
    with pytest.raises(BatchError, match=r"objective\.bn_splits: 4 groups of a batch of 7"):
        task.embed(batch_of(task, rows=7))


def test_bn_splits_is_validated_and_only_for_momentum_keys(tmp_path: Path):
    with pytest.raises(ValueError, match="bn_splits"):
        moco_config(tmp_path, bn_splits=0)
    raw = {"data": {"path": str(tmp_path / "t.jsonl")},
           "objective": {"name": "nt_xent", "bn_splits": 2}}
    with pytest.raises(ValueError, match="bn_splits: unknown parameter of nt_xent"):
        TrainConfig.model_validate(raw)
    assert moco_config(tmp_path, bn_splits=8).objective.params.get("bn_splits") is None


@pytest.mark.parametrize("path", ["train.grad_cache", "torchrun"])
def test_the_fast_paths_refuse_bn_splits(tmp_path: Path, path: str):
    config = moco_config(tmp_path, bn_splits=2)
    config.train.grad_cache.enabled = path == "train.grad_cache"
    with pytest.raises(ConfigError, match=rf"^{path}: objective\.bn_splits"):
        check_fast_paths(config, build_model(config), 2 if path == "torchrun" else 1)


@pytest.mark.parametrize("symmetric", [False, True])
def test_a_moco_run_with_shuffle_bn_trains(tmp_path: Path, symmetric: bool):
    from contralign.training.loop import fit

    images = (np.random.default_rng(0).random((24, 28, 28)) * 255).astype(np.uint8)
    np.savez(tmp_path / "train.npz", images=images)
    config = moco_config(tmp_path, bn_splits=2, symmetric=symmetric)
    config.train.batch_size, config.train.max_steps = 8, 2
    config.output_dir = str(tmp_path / "run")
    result = fit(config)
    assert result.steps == 2
