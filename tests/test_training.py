"""The trainer: a real (tiny) model trains, logs, checkpoints atomically and resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from contralign.core.config import load_config
from contralign.training.config import TrainConfig
from contralign.training.loop import fit


def _config(tiny_model_dir: Path, pairs_file: Path, out: Path, **train: object) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": {"name": str(tiny_model_dir), "max_length": 32},
        "data": {"path": str(pairs_file), "columns": {"anchor": "query", "positive": "doc"}},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.1},
        "train": {"epochs": 3, "batch_size": 4, "seed": 0, "log_every": 1, **train},
        "eval": {"retrieval": {"path": str(pairs_file),
                               "columns": {"anchor": "query", "positive": "doc"}}},
        "output_dir": str(out),
    })


def test_fit_trains_logs_and_saves(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path):
    config = _config(tiny_model_dir, pairs_file, tmp_path / "run", checkpoint_every=4, epochs=8)
    result = fit(config, progress=False)
    assert result.steps == 24  # 12 pairs / batch 4 × 8 epochs
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 24 and sum(losses[-3:]) < sum(losses[:3])
    assert lines[-1]["eval"]["retrieval/ndcg@10"] == result.metrics["retrieval/ndcg@10"]
    assert sorted(p.name for p in (result.run_dir / "checkpoints").iterdir()) == ["step-20",
                                                                                  "step-24"]
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["train"]["epochs"] == 8
    assert (result.model_dir / "model.safetensors").is_file()
    assert not list(result.model_dir.glob("*.bin"))


def test_same_seed_same_weights(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path):
    a = fit(_config(tiny_model_dir, pairs_file, tmp_path / "a"), progress=False)
    b = fit(_config(tiny_model_dir, pairs_file, tmp_path / "b"), progress=False)
    wa, wb = (load_file(str(r.model_dir / "model.safetensors")) for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_existing_run_dir_is_not_overwritten(tiny_model_dir, pairs_file, tmp_path):
    fit(_config(tiny_model_dir, pairs_file, tmp_path / "run"), progress=False)
    from contralign.core.errors import ContralignError

    with pytest.raises(ContralignError, match="already holds a run"):
        fit(_config(tiny_model_dir, pairs_file, tmp_path / "run"), progress=False)


def _train_cmd(config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "contralign.cli.app", "train", str(config_path), *extra]


def test_killed_run_resumes_exactly(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path):
    """SIGKILL a run right after its first checkpoint; --resume ends with the same weights."""
    def write(out: Path) -> Path:
        config = _config(tiny_model_dir, pairs_file, out, epochs=40, checkpoint_every=6,
                         keep_checkpoints=1)
        path = out.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        return path

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    full_cfg = write(tmp_path / "full")
    subprocess.run(_train_cmd(full_cfg, "--json"), check=True, env=env, capture_output=True)

    killed_cfg = write(tmp_path / "killed")
    proc = subprocess.Popen(_train_cmd(killed_cfg, "--json"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(checkpoint.glob("step-*/state.json")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists(), "the run finished before the kill"
    done = subprocess.run(_train_cmd(killed_cfg, "--resume", "--json"), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 120
    full = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    steps = [json.loads(x)["step"] for x in
             (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len([s for s in steps]) == len(set(steps)) + 1  # + eval


def test_overrides_and_unknown_keys(tmp_path: Path):
    from contralign.core.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("data: {path: x.jsonl}\ntrain: {batch_size: 8}\n")
    config = load_config(TrainConfig, path, ["optim.lr=1e-4", "train.epochs=2"])
    assert config.optim.lr == 1e-4 and config.train.epochs == 2 and config.train.batch_size == 8
    path.write_text("data: {path: x.jsonl}\ntrain: {batch_sise: 8}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train.batch_sise: unknown key"):
        load_config(TrainConfig, path)
    path.write_text("data: {path: x.jsonl}\noptim: {schedule: cubic}\n")
    with pytest.raises(ConfigError, match=r"optim.schedule: .*cubic"):
        load_config(TrainConfig, path)


def test_fit_takes_a_dict_or_a_yaml_file(tiny_model_dir, pairs_file, tmp_path):
    from contralign.core.errors import ConfigError

    config = _config(tiny_model_dir, pairs_file, tmp_path / "run", epochs=1).model_dump()
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert fit(str(path), progress=False).steps == 3
    with pytest.raises(ConfigError, match=r"config: optim.warmup_ratio: .*2"):
        fit({**config, "optim": {"warmup_ratio": 2}}, progress=False)


@pytest.mark.parametrize(
    ("objective", "message"),
    [({"name": "info_nce", "temprature": 0.1}, "objective.temprature: unknown parameter"),
     ({"name": "info_nce", "temperature": "hot"}, "objective.temperature: "),
     ({"name": "no_such_loss"}, "objective: unknown objective 'no_such_loss'")],
)
def test_objective_params_are_checked(tmp_path, objective, message):
    from contralign.core.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": "x.jsonl"}, "objective": objective}))
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, path)


def test_dropout_draws_follow_the_dataloader_convention(tiny_model_dir, pairs_file, tmp_path):
    """Seeded right before training, then one draw per epoch start like torch's DataLoader: the
    first dropout mask is the one a DataLoader-based trainer (sentence-transformers) draws."""
    from contralign.training.loop import draw_loader_seed

    config = _config(tiny_model_dir, pairs_file, tmp_path / "run", epochs=1, max_steps=1)
    seen: list[torch.Tensor] = []
    original = torch.nn.functional.dropout

    def spy(*args, **kwargs):
        training = kwargs.get("training", args[2] if len(args) > 2 else True)
        if training:  # the step-0 evaluation calls dropout in eval mode: no draw
            seen.append(torch.get_rng_state())
        return original(*args, **kwargs)

    import unittest.mock

    with unittest.mock.patch("torch.nn.functional.dropout", spy):
        fit(config, progress=False)
    torch.manual_seed(config.train.seed)
    list(iter(torch.utils.data.DataLoader(range(4))))[:0]  # a DataLoader's draw at epoch start
    expected = torch.get_rng_state()
    torch.manual_seed(config.train.seed)
    draw_loader_seed()
    assert torch.equal(torch.get_rng_state(), expected)
    assert torch.equal(seen[0], expected)
