"""Image–text training end to end on tiny towers: every fast path agrees with the plain one
(``contralign check`` on a LiT config), a trainable BatchNorm tower refuses the paths whose
step would differ, and a run trains, evaluates zero-shot and searches images by text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.core.errors import ConfigError
from contralign.training.check import check
from contralign.training.config import TrainConfig
from contralign.training.loop import fit

runner = CliRunner()
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]


@pytest.fixture()
def images_npz(tmp_path: Path) -> Path:
    """12 small images of 4 classes (each class its own colour), and 6 class names."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3)
    colours = rng.integers(0, 256, size=(4, 3))
    images = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 20, (12, 32, 32, 3)),
                     0, 255).astype(np.uint8)
    path = tmp_path / "images.npz"
    np.savez(path, images=images, labels=labels, classes=np.array(CLASSES))
    return path


def lit_config(tiny_model_dir: Path, data: Path, out: Path, *, image_frozen: bool = True,
               **train: object) -> dict:
    towers = {"image": {"name": "efficientnet-lite0", "image_size": 32, "frozen": image_frozen,
                        "projection_dim": 32},
              "text": {"name": str(tiny_model_dir), "max_length": 16}}
    return {"model": {"towers": towers, "roles": {"anchor": "image", "positive": "text"}},
            "data": {"path": str(data), "columns": {"anchor": "images", "label": "labels"},
                     "captions": {"templates": ["a photo of a {label}.", "a {label}."],
                                  "classes": "classes"}},
            "objective": {"name": "siglip"},
            "optim": {"lr": 1e-3},
            "train": {"batch_size": 6, "max_steps": 2, **train},
            "output_dir": str(out)}


def test_every_fast_path_equals_the_plain_one_with_two_towers(tiny_model_dir, images_npz,
                                                              tmp_path):
    config = TrainConfig.model_validate(lit_config(tiny_model_dir, images_npz, tmp_path / "r"))
    report = check(config, steps=2, paths=["cached", "tiled", "distributed"])
    assert set(report.paths) == {"cached", "tiled", "distributed"}
    for name, result in report.paths.items():
        assert result.ok, (name, result.reason, result.loss, result.gradient, result.parameters)


def test_a_trainable_batchnorm_tower_refuses_the_gradient_cache(tiny_model_dir, images_npz,
                                                                tmp_path):
    raw = lit_config(tiny_model_dir, images_npz, tmp_path / "r", image_frozen=False,
                     grad_cache={"enabled": True, "chunk_size": 3})
    with pytest.raises(ConfigError, match="train.grad_cache: tower image has BatchNorm layers "
                                          "and trains"):
        fit(TrainConfig.model_validate(raw), progress=False)
    assert not (tmp_path / "r").exists()
    report = check(TrainConfig.model_validate(raw), steps=1, paths=["cached"])
    assert report.paths["cached"].ok is None and "BatchNorm" in report.paths["cached"].reason


def test_train_evaluate_and_search_images_by_text(tiny_model_dir, images_npz, tmp_path):
    path = tmp_path / "lit.yaml"
    path.write_text(yaml.safe_dump(lit_config(tiny_model_dir, images_npz, tmp_path / "run",
                                              max_steps=4)))
    assert runner.invoke(app, ["train", str(path), "--json"]).exit_code == 0
    model = tmp_path / "run" / "model"
    manifest = json.loads((model / "contralign.json").read_text())
    assert manifest["model"]["towers"] == {"image": "image", "text": "text"}
    result = runner.invoke(app, ["eval", str(tmp_path / "run"), "--zero-shot", str(images_npz),
                                 "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out["metrics"]) == {"zero_shot/top1", "zero_shot/top5",
                                   "zero_shot/mean_per_class"}
    confusion = np.array(out["details"]["zero_shot"]["confusion_matrix"])
    assert confusion.shape == (6, 6) and confusion.sum() == 12
    assert runner.invoke(app, ["index", str(model), str(images_npz), "--tower", "image", "-o",
                               str(tmp_path / "idx")]).exit_code == 0
    index = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert (index["tower"], index["modality"], index["count"]) == ("image", "image", 12)
    hits = json.loads(runner.invoke(app, ["search", str(tmp_path / "idx"), "a photo of a cat",
                                          "-k", "3", "--json"]).stdout)
    assert len(hits[0]["hits"]) == 3 and hits[0]["hits"][0]["text"].startswith(str(images_npz))
    line = one_line_error(runner.invoke(app, ["encode", str(model), str(images_npz), "-o",
                                              str(tmp_path / "v.npy")]))
    assert "holds several towers: image (image), text (text); choose one with --tower" in line
    assert runner.invoke(app, ["encode", str(model), str(images_npz), "--tower", "image", "-o",
                               str(tmp_path / "v.npy")]).exit_code == 0
    assert np.load(tmp_path / "v.npy").shape == (12, 32)


def test_a_text_tower_on_image_data_is_one_line(tiny_model_dir, images_npz, tmp_path):
    raw = lit_config(tiny_model_dir, images_npz, tmp_path / "r")
    raw["model"]["roles"] = {"anchor": "text", "positive": "image"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    line = one_line_error(runner.invoke(app, ["train", str(path)]))
    assert "model.roles: the anchor role's tower embeds text" in line and "holds images" in line


def test_a_killed_two_tower_run_resumes_exactly(tiny_model_dir, images_npz, tmp_path,
                                                monkeypatch):
    """The locked tower's cache starts empty after the resume and fills again: the same
    weights as an uninterrupted run."""
    import torch
    from safetensors.torch import load_file
    from tests.test_resume import Crash, crash_after

    def config(out: Path) -> TrainConfig:
        return TrainConfig.model_validate(lit_config(
            tiny_model_dir, images_npz, out, max_steps=6, checkpoint_every=2))

    fit(config(tmp_path / "full"), progress=False)
    crash_after(monkeypatch, 3)
    with pytest.raises(Crash):
        fit(config(tmp_path / "killed"), progress=False)
    monkeypatch.undo()
    fit(config(tmp_path / "killed"), resume=True, progress=False)
    for tower in ("image", "text"):
        full = load_file(str(tmp_path / "full" / "model" / tower / "model.safetensors"))
        resumed = load_file(str(tmp_path / "killed" / "model" / tower / "model.safetensors"))
        assert all(torch.equal(full[k], resumed[k]) for k in full), tower


def test_two_towers_train_under_bf16_autocast(tiny_model_dir, images_npz, tmp_path):
    """The towers run under bfloat16 autocast, their embeddings (and the cached features) are
    cast to float32 for the objective: a finite loss and a trained image head."""
    raw = lit_config(tiny_model_dir, images_npz, tmp_path / "r", precision="bf16", log_every=1)
    result = fit(TrainConfig.model_validate(raw), progress=False)
    losses = [json.loads(line)["loss"] for line in
              (result.run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert losses and all(np.isfinite(losses))
