"""``train.compile``: the towers' training embeds through ``torch.compile``. ``contralign check``
compares the compiled path with the eager one (loss, first gradient, updates) on real CIFAR-10
images with BatchNorm towers, a training head and MoCo's momentum copy in shuffle-BN groups; a
compiled run trains and evaluates end to end; a machine without a C++ compiler is told so in one
line before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.core.errors import ConfigError
from contralign.training.build import check_compiler
from contralign.training.check import check, default_paths, reference_config
from contralign.training.config import TrainConfig

runner = CliRunner()


def image_config(data: Path, out: Path, objective: dict, head_batch_norm: bool,
                 **train: object) -> dict:
    return {"model": {"name": "resnet18-cifar-w4", "image_size": 16,
                      "head": {"dims": [32, 16], "batch_norm": head_batch_norm}},
            "data": {"path": str(data), "columns": {"anchor": "images"}},
            "objective": objective,
            "views": [{"name": "simclr"}],
            "optim": {"lr": 1e-3},
            "train": {"batch_size": 32, "max_steps": 2, "log_every": 1, **train},
            "output_dir": str(out)}


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "head_batch_norm"), [
    ({"name": "nt_xent", "temperature": 0.2}, True),
    ({"name": "moco", "temperature": 0.2, "queue_size": 64, "momentum": 0.99, "bn_splits": 4},
     False),
])
def test_the_compiled_path_trains_like_the_eager_one(objective, head_batch_norm, tiny_cifar,
                                                      tmp_path):
    config = TrainConfig.model_validate(
        image_config(tiny_cifar, tmp_path / "run", objective, head_batch_norm, compile=True))
    report = check(config, steps=3)
    assert list(report.paths) == ["cached", "tiled", "distributed", "compiled"]
    result = report.paths["compiled"]
    assert result.ok, (result.loss, result.gradient, result.parameters, result.worst_tensor)
    assert "train.compile: True -> False" in report.notes  # the plain path is eager


@pytest.mark.slow
def test_a_compiled_run_trains_and_evaluates_eagerly(tiny_cifar, tmp_path):
    raw = image_config(tiny_cifar, tmp_path / "run", {"name": "nt_xent", "temperature": 0.2},
                       True, compile=True)
    raw["eval"] = {"knn": {"train": {"path": str(tiny_cifar)}, "test": {"path": str(tiny_cifar)},
                           "k": 5}}
    path = tmp_path / "compiled.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert "knn/top1" in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_check_compares_the_compiled_path_only_when_the_config_compiles(tiny_cifar, tmp_path):
    objective = {"name": "nt_xent"}
    eager = TrainConfig.model_validate(image_config(tiny_cifar, tmp_path, objective, True))
    compiled = TrainConfig.model_validate(
        image_config(tiny_cifar, tmp_path, objective, True, compile=True))
    assert "compiled" not in default_paths(eager)
    assert "compiled" in default_paths(compiled)
    reference, notes = reference_config(compiled)
    assert reference.train.compile is False and "train.compile: True -> False" in notes


@pytest.fixture
def no_compiler(monkeypatch):
    from torch._inductor import config as inductor
    from torch._inductor.cpp_builder import cpp_compiler_search

    monkeypatch.setattr(inductor.cpp, "cxx", ("contralign-no-such-compiler",))
    cpp_compiler_search.cache_clear()  # torch remembers the compiler it found
    yield
    cpp_compiler_search.cache_clear()


def test_without_a_cxx_compiler_a_compiled_run_is_refused_in_one_line(no_compiler, tiny_cifar,
                                                                        tmp_path):
    raw = image_config(tiny_cifar, tmp_path / "run", {"name": "nt_xent"}, True, compile=True)
    with pytest.raises(ConfigError, match="train.compile: .* no C.. compiler was found"):
        check_compiler(TrainConfig.model_validate(raw), torch.device("cpu"))
    check_compiler(TrainConfig.model_validate(raw), torch.device("cuda"))  # no C++ there
    path = tmp_path / "compiled.yaml"
    path.write_text(yaml.safe_dump(raw))
    line = one_line_error(runner.invoke(app, ["train", str(path)]))
    assert line.startswith("error: train.compile:"), line
    assert not (tmp_path / "run").exists()
