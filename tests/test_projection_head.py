"""Training-only projection heads (``model.head``, SimCLR's ``g``): the loss reads the head and
its gradient reaches it; the saved model leaves it out and embeds the trained tower's own
features; a config with ``projection_dim`` alone still saves its linear head; a head with
BatchNorm refuses the gradient cache, and one without keeps every path equal to the plain one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign import load_tower
from contralign.cli.app import app
from contralign.core.errors import ConfigError
from contralign.encoders.heads import ProjectionHead
from contralign.encoders.image import ImageTower
from contralign.encoders.momentum import MomentumEncoder
from contralign.objectives.inputs import Embedded
from contralign.training.build import build_model, build_task, check_fast_paths
from contralign.training.check import check
from contralign.training.config import TrainConfig
from contralign.training.task import Role

runner = CliRunner()
HEAD = {"dims": [32, 16], "batch_norm": True}

pytestmark = pytest.mark.usefixtures("one_thread")


def pairs_data(path: Path) -> dict:
    return {"path": str(path), "columns": {"anchor": "query", "positive": "doc"}}




def config_of(data: Path, out: Path, model: dict, **train: object) -> dict:
    return {"model": model, "data": {"path": str(data)},
            "objective": {"name": "nt_xent", "temperature": 0.5},
            "views": [{"name": "simclr"}], "optim": {"lr": 1e-3},
            "train": {"batch_size": 32, "max_steps": 2, "log_every": 1, "threads": 1, **train},
            "output_dir": str(out)}


def images_of(path: Path, n: int) -> list[np.ndarray]:
    with np.load(path) as data:
        return list(data["images"][:n])


def test_the_head_is_applied_in_training_and_its_gradient_reaches_it(tiny_cifar, tmp_path):
    raw = config_of(tiny_cifar, tmp_path, {"name": "resnet18-cifar-w8", "head": HEAD})
    config = TrainConfig.model_validate(raw)
    task = build_task(config, build_model(config))
    model, tower = task.model, task.model.anchor_tower
    head = model.heads["tower"]
    assert isinstance(head, ProjectionHead) and [type(m).__name__ for m in head.layers] == [
        "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (tower.dim, model.trained_dim("anchor")) == (64, 16)  # ResNet w8: 8 * 8 features
    pixels = tower.preprocess(images_of(tiny_cifar, 16))
    task.train()
    torch.manual_seed(0)
    first = task.embed_role(Role("anchor", pixels))  # (16, 16): through the head
    np.testing.assert_allclose(first.detach().numpy(), head(tower(pixels)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    second = task.embed_role(Role("positive", {"pixel_values": pixels["pixel_values"].flip(-1)}))
    loss = task.loss(Embedded(first, second))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    # The loss reads the head: other head weights, another loss.
    with torch.no_grad():
        head.layers[-1].weight.mul_(3.0)
        changed = task.loss(Embedded(task.embed_role(Role("anchor", pixels)),
                                     task.embed_role(Role("positive", {
                                         "pixel_values": pixels["pixel_values"].flip(-1)}))))
    assert abs(changed.item() - loss.item()) > 1e-4


def test_the_saved_model_drops_the_head_and_embeds_the_trained_backbone(tiny_cifar, tmp_path):
    raw = config_of(tiny_cifar, tmp_path / "run", {"name": "resnet18-cifar-w8", "head": HEAD},
                    checkpoint_every=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    losses = [line["loss"] for line in map(json.loads, (tmp_path / "run" / "metrics.jsonl")
                                           .open()) if "loss" in line]
    assert len(losses) == 2 and all(np.isfinite(losses))
    folder = tmp_path / "run" / "model"
    saved = load_file(str(folder / "model.safetensors"))
    assert saved.keys() == ImageTower("resnet18-cifar-w8").state_dict().keys()  # no head
    assert json.loads((folder / "contralign.json").read_text())["projection_dim"] is None
    # The checkpoint holds the trained tower and its trained head.
    state = load_file(str(next((tmp_path / "run" / "checkpoints").iterdir())
                          / "task.safetensors"))
    assert any(key.startswith("model.heads.tower.layers.") for key in state)
    trained = ImageTower("resnet18-cifar-w8")
    prefix = "model.towers.tower."
    trained.load_state_dict({k.removeprefix(prefix): v for k, v in state.items()
                             if k.startswith(prefix)})
    images = images_of(tiny_cifar, 6)
    loaded = load_tower(folder)
    assert loaded.dim == 64
    np.testing.assert_array_equal(loaded.encode(images), trained.encode(images))


def test_projection_dim_alone_still_saves_its_linear_head(tiny_cifar, tmp_path):
    raw = config_of(tiny_cifar, tmp_path, {"name": "resnet18-cifar-w8", "projection_dim": 16})
    config = TrainConfig.model_validate(raw)
    model = build_model(config)
    assert len(model.heads) == 0 and model.trained_dim("anchor") == 16
    assert not any(".heads." in key for key in build_task(config, model).state_dict())
    model.save(tmp_path / "model")
    assert "head.weight" in load_file(str(tmp_path / "model" / "model.safetensors"))
    images = images_of(tiny_cifar, 4)
    loaded = load_tower(tmp_path / "model")
    assert loaded.dim == 16
    np.testing.assert_array_equal(loaded.encode(images), model.anchor_tower.encode(images))


def test_a_batchnorm_head_refuses_the_gradient_cache_and_torchrun(tmp_path, pairs_file):
    raw = {"model": {"name": "wordllama-256", "head": HEAD}, "data": pairs_data(pairs_file),
           "train": {"grad_cache": {"enabled": True, "chunk_size": 4}},
           "output_dir": str(tmp_path / "run")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    line = one_line_error(runner.invoke(app, ["train", str(tmp_path / "c.yaml")]))
    assert "train.grad_cache: model.head has BatchNorm layers" in line
    assert "set head.batch_norm: false" in line
    config = TrainConfig.model_validate({**raw, "train": {}})
    with pytest.raises(ConfigError, match="torchrun: model.head has BatchNorm"):
        check_fast_paths(config, build_model(config), processes=2)
    plain = TrainConfig.model_validate({**raw, "model": {
        "name": "wordllama-256", "head": {"dims": [32, 16], "batch_norm": False}}})
    check_fast_paths(plain, build_model(plain), processes=2)


@pytest.mark.parametrize("objective", [{"name": "info_nce"},
                                       {"name": "moco", "queue_size": 16}])
def test_every_path_equals_the_plain_one_with_a_head_without_batchnorm(objective, pairs_file):
    raw = {"model": {"name": "wordllama-256", "head": {"dims": [32, 16], "batch_norm": False}},
           "data": pairs_data(pairs_file), "objective": objective,
           "train": {"batch_size": 8, "threads": 1}}
    config = TrainConfig.model_validate(raw)
    if objective["name"] == "moco":  # the key tower's head follows the online head
        model = build_model(config)
        copy = model.heads["momentum"]
        assert isinstance(copy, MomentumEncoder)
        assert not any(p.requires_grad for p in copy.parameters())
    report = check(config, steps=2, paths=["cached", "distributed"])
    for name, result in report.paths.items():
        assert result.ok, (name, result.reason, result.loss, result.gradient)


def test_the_momentum_head_moves_towards_the_online_head(pairs_file):
    raw = {"model": {"name": "wordllama-256", "head": {"dims": [16], "batch_norm": False}},
           "data": pairs_data(pairs_file), "objective": {"name": "moco", "momentum": 0.5}}
    model = build_model(TrainConfig.model_validate(raw))
    online, copy = model.heads["tower"], model.heads["momentum"].encoder
    with torch.no_grad():
        online.layers[0].weight.add_(1.0)
    before = copy.layers[0].weight.clone()
    model.after_step()
    expected = 0.5 * before + 0.5 * online.layers[0].weight
    torch.testing.assert_close(copy.layers[0].weight, expected)


@pytest.mark.parametrize(("head", "message"), [
    ({"dims": []}, "dims"),
    ({"dims": [0]}, "dims"),
    ({"dims": [16], "kind": "mlp"}, "kind"),
])
def test_bad_head_configs_are_refused(head, message, pairs_file):
    with pytest.raises(ValidationError, match=message):
        TrainConfig.model_validate({"model": {"name": "wordllama-256", "head": head},
                                    "data": pairs_data(pairs_file)})


def test_a_momentum_copy_or_a_teacher_takes_no_head(pairs_file):
    towers = {"online": {"name": "wordllama-256"},
              "key": {"momentum_of": "online", "head": {"dims": [16]}}}
    with pytest.raises(ValidationError, match="towers.key.head: a momentum copy takes only"):
        TrainConfig.model_validate({"model": {"towers": towers, "roles": {
            "anchor": "online", "positive": "key"}}, "data": pairs_data(pairs_file),
            "objective": {"name": "moco"}})
    towers = {"student": {"name": "wordllama-256"},
              "teacher": {"name": "wordllama-256", "frozen": True, "head": {"dims": [16]}}}
    with pytest.raises(ValidationError, match="towers.teacher.head: a teacher's"):
        TrainConfig.model_validate({"model": {"towers": towers, "roles": {
            "anchor": "student", "positive": "student", "teacher": "teacher"}},
            "data": pairs_data(pairs_file), "objective": {"name": "distill_mse"}})
