"""Every self-supervised image recipe (``simclr-images``, ``moco-v2-images``, ``swav-images``,
``supcon-images``, ``dcl-images``) trains end to end through ``contralign train RECIPE`` on a few
real CIFAR-10 images, with its own views, objective and kNN dev evaluator; only the sizes (tower
width, batch, steps) and the data paths are overridden."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from contralign import load_tower
from contralign.cli.app import app
from contralign.data.image_views import is_image_view
from contralign.training.recipes import list_recipes

runner = CliRunner()
IMAGE_SSL = [r for r in list_recipes()
             if is_image_view((yaml.safe_load(r.path.read_text()).get("views") or [{}])[0]
                              .get("name"))]


def test_the_image_recipes_are_bundled():
    assert {r.name for r in IMAGE_SSL} == {"simclr-images", "moco-v2-images", "swav-images",
                                           "supcon-images", "dcl-images"}


@pytest.fixture(scope="module")
def tiny_sets(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Disjoint real CIFAR-10 images: 32 to train on, 40 and 20 labelled ones for the kNN."""
    with np.load(shared_data / "images" / "cifar10-part-a.npz") as data:
        images, labels = data["images"][::50][:92], data["labels"][::50][:92]
    folder = tmp_path_factory.mktemp("image-recipes")
    sets = {"train": slice(0, 32), "bank": slice(32, 72), "test": slice(72, 92)}
    for name, rows in sets.items():
        np.savez(folder / f"{name}.npz", images=images[rows], labels=labels[rows])
    return {name: folder / f"{name}.npz" for name in sets}


@pytest.mark.parametrize("recipe", IMAGE_SSL, ids=[r.name for r in IMAGE_SSL])
def test_image_recipe_trains_end_to_end(recipe, tiny_sets: dict[str, Path], tmp_path: Path):
    overrides = ["model.name=resnet18-cifar-w4", "model.head.dims=[32, 16]",
                 "train.batch_size=16", "train.max_steps=2", "train.log_every=1",
                 f"eval.knn.train.path={tiny_sets['bank']}",
                 f"eval.knn.test.path={tiny_sets['test']}", "eval.knn.k=5",
                 f"output_dir={tmp_path / 'run'}",
                 # compiling takes most of a minute; tests/test_compile.py trains compiled
                 "train.compile=false"]
    result = runner.invoke(app, ["train", recipe.name, "--data", str(tiny_sets["train"]),
                                 "--json", *[arg for o in overrides for arg in ("--set", o)]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 2 and all(np.isfinite(losses))
    evaluations = [line["eval"] for line in lines if "eval" in line]
    # the dev evaluator ran on the untrained tower (step 0) and on the trained one
    assert len(evaluations) == 2 and all(0.0 <= e["knn/top1"] <= 1.0 for e in evaluations)
    # the training head is not saved: the tower embeds with its own features (8 x width 4)
    tower = load_tower(tmp_path / "run")
    with np.load(tiny_sets["test"]) as data:
        assert tower.encode(list(data["images"][:3])).shape == (3, 32)
