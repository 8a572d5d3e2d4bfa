"""Self-supervised image training end to end: ``contralign train`` with image views and the
from-scratch ResNet on real CIFAR-10 images (and grayscale 28-px ones), a model folder that
``load_tower`` reads back and embeds with, the fast paths that would differ refused for a
trainable BatchNorm tower, and the same image views on every path of a tower without one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign import load_tower
from contralign.cli.app import app
from contralign.core.errors import ConfigError
from contralign.encoders.image import ImageTower
from contralign.training.build import build_model, check_fast_paths
from contralign.training.check import check
from contralign.training.config import TrainConfig

runner = CliRunner()



def ssl_config(data: Path, out: Path, *, model: str = "resnet18-cifar-w8",
               views: list[dict] | None = None, **train: object) -> dict:
    return {"model": {"name": model, "projection_dim": 16},
            "data": {"path": str(data)},
            "objective": {"name": "nt_xent", "temperature": 0.5},
            "views": views or [{"name": "simclr"}],
            "optim": {"lr": 1e-3},
            # One thread: on a busy 2-core machine two OpenMP threads make small convolutions
            # an order of magnitude slower.
            "train": {"batch_size": 32, "max_steps": 2, "log_every": 1, "threads": 1, **train},
            "output_dir": str(out)}


def test_train_a_resnet_with_simclr_views_and_load_it_back(tiny_cifar, tmp_path):
    path = tmp_path / "simclr.yaml"
    path.write_text(yaml.safe_dump(ssl_config(tiny_cifar, tmp_path / "run")))
    result = runner.invoke(app, ["train", str(path), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [line["loss"] for line in lines if "loss" in line]
    # NT-Xent of 2 x 32 views: log(63) for uninformative embeddings; a real loss is near it.
    assert len(losses) == 2 and all(2.0 < loss < 6.0 for loss in losses)
    manifest = json.loads((tmp_path / "run" / "model" / "contralign.json").read_text())
    assert (manifest["tower"], manifest["architecture"]) == ("image", "resnet18-cifar-w8")
    tower = load_tower(tmp_path / "run")
    assert isinstance(tower, ImageTower) and tower.dim == 16
    with np.load(tiny_cifar) as data:
        images = list(data["images"][:5])
    embeddings = tower.encode(images)
    assert embeddings.shape == (5, 16) and np.isfinite(embeddings).all()
    # Trained weights, not a fresh initialisation: the saved state is what the run left.
    fresh = ImageTower("resnet18-cifar-w8")
    trained = tower.state_dict()
    assert any(not np.allclose(v.numpy(), trained[k].numpy()) for k, v in
               fresh.state_dict().items() if v.is_floating_point())
    np.testing.assert_array_equal(load_tower(tmp_path / "run" / "model").encode(images),
                                  embeddings)


def test_grayscale_28px_images_and_multi_crop_train(tmp_path, tiny_cifar):
    with np.load(tiny_cifar) as data:  # Fashion-MNIST's shape: (N, 28, 28) uint8
        gray = data["images"][:32, 2:30, 2:30].mean(axis=-1).astype(np.uint8)
    path = tmp_path / "gray.npz"
    np.savez(path, images=gray)
    views = [{"name": "swav", "local_crops": 2, "local_size": 16}]
    raw = ssl_config(path, tmp_path / "run", views=views, batch_size=16)
    path_yaml = tmp_path / "gray.yaml"
    path_yaml.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(path_yaml)])
    assert result.exit_code == 0, result.output
    assert load_tower(tmp_path / "run").encode(list(gray[:3])).shape == (3, 16)


def test_a_trainable_batchnorm_resnet_refuses_the_paths_that_would_differ(tiny_cifar, tmp_path):
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(ssl_config(
        tiny_cifar, tmp_path / "run", grad_cache={"enabled": True, "chunk_size": 16})))
    line = one_line_error(runner.invoke(app, ["train", str(path)]))
    assert "train.grad_cache: the tower has BatchNorm layers and trains" in line
    assert not (tmp_path / "run").exists()
    config = TrainConfig.model_validate(ssl_config(tiny_cifar, tmp_path / "run"))
    with pytest.raises(ConfigError, match="torchrun: the tower has BatchNorm layers"):
        check_fast_paths(config, build_model(config), processes=2)
    check_fast_paths(config, build_model(config), processes=1)


def test_image_views_are_the_same_on_every_path_of_a_tower_without_batchnorm_updates(
        tiny_cifar, tmp_path):
    # A locked EfficientNet (BatchNorm on running statistics) with a trained head: the gradient
    # cache and two processes must see the very views the plain path sees.
    raw = ssl_config(tiny_cifar, tmp_path / "run", batch_size=8)
    raw["model"] = {"name": "efficientnet-lite0", "image_size": 32, "frozen": True,
                    "projection_dim": 16}
    report = check(TrainConfig.model_validate(raw), steps=2, paths=["cached", "distributed"])
    for name, result in report.paths.items():
        assert result.ok, (name, result.reason, result.loss, result.gradient)


@pytest.mark.parametrize("objective", ["simsiam", "byol"])
def test_predictor_objectives_train_and_their_predictor_is_not_saved(objective, tiny_cifar,
                                                                     tmp_path):
    raw = ssl_config(tiny_cifar, tmp_path / "run", batch_size=16)
    raw["objective"] = {"name": objective, "hidden": 8}
    raw["model"] = {"name": "resnet18-cifar-w8", "head": {"dims": [32, 16], "batch_norm": True}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").open()
              if '"loss"' in line]
    assert len(losses) == 2 and all(-1.0 <= loss <= 1.0 for loss in losses)  # −cos
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert not any("predictor" in key or key.startswith("head.") for key in saved)
    assert load_tower(tmp_path / "run").dim == 64  # the ResNet's own features


def test_a_batchnorm_predictor_sees_the_whole_batch_on_every_path(tiny_cifar, tmp_path):
    # The predictor lives in the objective, which every path hands the whole batch: SimSiam's
    # BatchNorm predictor gives the same step with the gradient cache and two processes.
    raw = ssl_config(tiny_cifar, tmp_path / "run", batch_size=8)
    raw["model"] = {"name": "efficientnet-lite0", "image_size": 32, "frozen": True,
                    "projection_dim": 16}
    raw["objective"] = {"name": "simsiam", "hidden": 8}
    report = check(TrainConfig.model_validate(raw), steps=2, paths=["cached", "distributed"])
    for name, result in report.paths.items():
        assert result.ok, (name, result.reason, result.loss, result.gradient)
