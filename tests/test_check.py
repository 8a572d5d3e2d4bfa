"""`contralign check`: the fast paths agree with the plain one on a real config, a broken path
is caught, the plain path is what `contralign train` computes, and bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.training import cached
from contralign.training.check import (
    NOISE_FLOOR,
    TOLERANCE,
    check,
    noise_tensors,
    relative_difference,
    turn_off_dropout,
)
from contralign.training.config import TrainConfig

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")



def _config(model: Path, data: Path, out: Path, **objective: Any) -> dict[str, Any]:
    return {"model": {"name": str(model), "max_length": 16},
            "data": {"path": str(data), "columns": {"anchor": "query", "positive": "doc"}},
            "objective": {"name": "info_nce", "learnable_temperature": True, **objective},
            "optim": {"lr": 1e-3, "warmup_ratio": 0.2},
            "train": {"batch_size": 6, "seed": 0, "log_every": 1},
            "output_dir": str(out)}


def _write(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _check_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["check", *args, "--json"])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, json.loads(result.stdout)


def test_cached_and_tiled_agree_with_plain(tiny_model_dir, pairs_file, tmp_path):
    """The tiny BERT (dropout 0.1 in its config), learnable temperature: chunks of 2 and tiles
    of 2 agree within the tolerance; nothing is written to output_dir."""
    path = _write(_config(tiny_model_dir, pairs_file, tmp_path / "run"), tmp_path / "c.yaml")
    code, report = _check_json(str(path), "--paths", "cached,tiled")
    assert code == 0 and report["ok"]
    assert {"cached", "tiled", "steps", "objective", "batch_size", "tolerance"} <= set(report)
    assert "distributed" not in report
    assert report["steps"] == 3 and len(report["plain"]["losses"]) == 3
    for name, setting in (("cached", "chunks of 2"), ("tiled", "tiles of 2")):
        assert report[name]["ok"] is True and report[name]["setting"] == setting
        for key in ("loss", "gradient", "parameters"):
            assert 0 <= report[name][key] <= TOLERANCE, (name, key)
    assert not (tmp_path / "run").exists()


def test_dropout_is_what_makes_chunks_differ(tiny_model_dir, pairs_file, tmp_path,
                                             monkeypatch):
    """With dropout left on, the cached path draws its masks chunk by chunk and differs: the
    agreement above needs the check to turn dropout off."""
    from contralign.training import check as check_module

    monkeypatch.setattr(check_module, "turn_off_dropout", lambda module: 0)
    config = TrainConfig.model_validate(_config(tiny_model_dir, pairs_file, tmp_path / "run"))
    report = check(config, paths=["cached"])
    assert report.paths["cached"].ok is False
    assert "draws random numbers" in " ".join(report.notes)


def test_a_broken_path_is_reported_as_different(tiny_model_dir, pairs_file, tmp_path,
                                                monkeypatch):
    """The gradient cache with one anchor row's embedding gradient doubled: exit code 1, and the
    table names the path; the tiled path (which does not use the cache) still agrees."""
    original = cached.loss_and_embedding_grads

    def broken(*args: Any, **kwargs: Any) -> Any:
        loss, grads = original(*args, **kwargs)
        grads["anchor"] = grads["anchor"].clone()
        grads["anchor"][0] *= 2
        return loss, grads

    monkeypatch.setattr(cached, "loss_and_embedding_grads", broken)
    path = _write(_config(tiny_model_dir, pairs_file, tmp_path / "run"), tmp_path / "c.yaml")
    code, report = _check_json(str(path), "--paths", "cached,tiled")
    assert code == 1 and report["ok"] is False
    assert report["cached"]["ok"] is False and report["tiled"]["ok"] is True
    assert report["cached"]["gradient"] > 10 * TOLERANCE
    assert report["cached"]["parameters"] > 10 * TOLERANCE
    result = runner.invoke(app, ["check", str(path), "--paths", "cached"])
    assert result.exit_code == 1
    assert "DIFFERENT" in result.output and "cached differs from the plain path" in result.output


def test_a_gradient_off_by_a_constant_factor_shows_in_the_gradient(
        tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    """Every embedding gradient 1 % too large: AdamW divides the gradient by its own scale, so
    the weights move as they should and only the first step's gradient tells."""
    original = cached.loss_and_embedding_grads

    def scaled(*args: Any, **kwargs: Any) -> Any:
        loss, grads = original(*args, **kwargs)
        return loss, {name: grad * 1.01 for name, grad in grads.items()}

    monkeypatch.setattr(cached, "loss_and_embedding_grads", scaled)
    config = TrainConfig.model_validate(_config(tiny_model_dir, pairs_file, tmp_path / "run"))
    result = check(config, paths=["cached"]).paths["cached"]
    assert result.ok is False and result.gradient == pytest.approx(0.01, rel=1e-2)
    assert result.parameters is not None and result.parameters < TOLERANCE


def test_plain_path_is_what_train_computes(tiny_model_dir, pairs_file, tmp_path):
    """The check's plain losses are `contralign train`'s on a model without dropout: the same
    batches, the same steps, the same schedule (12 records, batch 5: steps cross an epoch)."""
    from contralign.training.loop import fit

    model = tmp_path / "no-dropout"
    shutil.copytree(tiny_model_dir, model)
    settings = json.loads((model / "config.json").read_text())
    settings.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(settings))
    config = _config(model, pairs_file, tmp_path / "run")
    config["train"].update(batch_size=5, max_steps=4)
    run = fit(config, progress=False)
    logged = [json.loads(line)["loss"] for line in
              (run.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    report = check(TrainConfig.model_validate(config), steps=4, paths=[])
    assert report.losses == pytest.approx(logged, rel=1e-6)


def test_a_recipe_with_data_and_a_tiled_objective(tiny_model_dir, tmp_path):
    """A recipe name with --data, as `contralign train` takes them; siglip's tiled path."""
    data = tmp_path / "sentences.txt"
    data.write_text("".join(f"sentence number {i} about topic {i % 3}\n" for i in range(10)))
    code, report = _check_json("siglip-text", "--data", str(data), "--paths", "cached,tiled",
                               "--set", f"model.name={tiny_model_dir}", "--set",
                               "data.columns={anchor: text}", "--set", "train.batch_size=6",
                               "--steps", "2")
    assert code == 0, report
    assert report["objective"] == "siglip" and report["tiled"]["ok"] is True


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["--set", "train.batch_sise=8"], "--set: train.batch_sise: unknown key"),
     (["--paths", "cached,sharded"], "--paths: unknown path 'sharded'"),
     (["--steps", "0"], "--steps: must be at least 1, got 0")],
    ids=["unknown-key", "unknown-path", "no-steps"],
)
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, pairs_file, tmp_path, args, expected):
    path = _write(_config(tiny_model_dir, pairs_file, tmp_path / "run"), tmp_path / "c.yaml")
    result = runner.invoke(app, ["check", str(path), *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert expected in lines[0]


def test_turn_off_dropout_finds_layers_and_attributes():
    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention_dropout = 0.1  # read by the attention function, not a layer
            self.config = type("Config", (), {})()
            self.config.hidden_dropout_prob = 0.2
            self.drop = torch.nn.Dropout(0.3)

    module = torch.nn.Sequential(Attention(), torch.nn.Dropout(0.0))
    assert turn_off_dropout(module) == 3
    attention = module[0]
    assert attention.attention_dropout == 0.0 and attention.drop.p == 0.0
    assert attention.config.hidden_dropout_prob == 0.0
    assert turn_off_dropout(module) == 0


def test_relative_difference_and_noise():
    expected = {"big": torch.tensor([300.0, 400.0]), "tiny": torch.tensor([1e-9])}
    actual = {"big": torch.tensor([303.0, 400.0]), "tiny": torch.tensor([3e-9])}
    # "tiny" is off by 200 % of itself, but by 2e-9 against the floor of 1 % of the norm 500.
    assert relative_difference(actual, expected) == (pytest.approx(3 / 500), "big")
    actual["big"] = expected["big"]
    worst, name = relative_difference(actual, expected)
    assert name == "tiny" and worst == pytest.approx(2e-9 / (NOISE_FLOOR * 500), rel=1e-3)
    assert relative_difference({"big": expected["big"]}, expected)[0] == float("inf")
    assert noise_tensors(expected) == {"tiny"}


@pytest.mark.slow
def test_two_processes_agree_with_plain(tiny_model_dir, pairs_file, tmp_path):
    """Every path, the distributed one through torchrun with two gloo processes."""
    path = _write(_config(tiny_model_dir, pairs_file, tmp_path / "run"), tmp_path / "c.yaml")
    code, report = _check_json(str(path))
    assert code == 0, report
    assert report["distributed"]["setting"] == "2 processes"
    for name in ("cached", "tiled", "distributed"):
        assert report[name]["ok"] is True, (name, report[name])
        assert report[name]["gradient"] <= TOLERANCE
