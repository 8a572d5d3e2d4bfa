"""kill -9 at any moment, then ``--resume``: the weights are bit-identical to an uninterrupted
run's — at random moments, during a checkpoint write, during the final model write, and with a
torn ``metrics.jsonl`` or a damaged newest checkpoint left behind."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
STEPS = 60  # 12 pairs, batch 4: 3 steps an epoch, 20 epochs


def write_config(model: Path, data: Path, out: Path) -> Path:
    config = {"model": {"name": str(model), "max_length": 32},
              "data": {"path": str(data), "columns": {"anchor": "query", "positive": "doc"}},
              "optim": {"lr": 1e-3},
              "train": {"epochs": 20, "batch_size": 4, "log_every": 1, "checkpoint_every": 5,
                        "keep_checkpoints": 2},
              "output_dir": str(out)}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "contralign", "train", str(config), "--json",
                           *extra], env=ENV, capture_output=True, text=True, timeout=600)


def kill_when(config: Path, ready: Callable[[], bool], *extra: str,
              timeout: float = 300) -> bool:
    """Start a run, SIGKILL it as soon as ``ready()``; whether it was killed before it ended."""
    proc = subprocess.Popen([sys.executable, "-m", "contralign", "train", str(config), "--json",
                             *extra], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.0005)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


def resume_and_compare(config: Path, run_dir: Path, reference: Path) -> None:
    done = train(config, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["steps"] == STEPS
    expected = load_file(str(reference / "model" / "model.safetensors"))
    resumed = load_file(str(run_dir / "model" / "model.safetensors"))
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    steps = [json.loads(line)["step"] for line in
             (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # no step twice, none missing, no torn line
    assert not list(run_dir.glob("checkpoints/.step-*")) and not list(run_dir.glob(".model.*"))


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path, float]:
    """(data, the uninterrupted run, the seconds it trained: first log line to exit)."""
    from tests.conftest import PAIRS

    folder = tmp_path_factory.mktemp("kill")
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": q, "doc": d}) + "\n" for q, d in PAIRS))
    config = write_config(tiny_model_dir, data, folder / "full")
    proc = subprocess.Popen([sys.executable, "-m", "contralign", "train", str(config)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and not (folder / "full" / "metrics.jsonl").is_file():
        time.sleep(0.001)
    began = time.monotonic()
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    return data, folder / "full", time.monotonic() - began


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_kill_at_random_moments(tiny_model_dir, reference, tmp_path, seed):
    """Killed at a random moment once it has started, then killed again at a random moment of
    its resumed run, then resumed to the end."""
    data, full, seconds = reference
    run_dir = tmp_path / "run"
    config = write_config(tiny_model_dir, data, run_dir)
    draw = random.Random(seed)
    for extra in ((), ("--resume",)):
        delay = draw.uniform(0.0, 0.4 * seconds)  # the resumed run has at least 0.6 left
        began: list[float] = []

        def ready(began: list[float] = began, delay: float = delay) -> bool:
            if not began and (run_dir / "metrics.jsonl").is_file():
                began.append(time.monotonic())
            return bool(began) and time.monotonic() - began[0] > delay

        assert kill_when(config, ready, *extra), "the run ended before the kill"
    resume_and_compare(config, run_dir, full)


@pytest.mark.parametrize("writing", ["checkpoints/.step-*.tmp", ".model.*.tmp"],
                         ids=["during-a-checkpoint-write", "during-the-final-model-write"])
def test_kill_during_a_write(tiny_model_dir, reference, tmp_path, writing):
    """Killed while a checkpoint, or the final model, is half-written (its temporary folder is
    there): tried up to 5 times, since the write takes milliseconds."""
    data, full, _ = reference
    run_dir = tmp_path / "run"
    config = write_config(tiny_model_dir, data, run_dir)
    for _ in range(5):
        if kill_when(config, lambda: any(run_dir.glob(writing))) and any(run_dir.glob(writing)):
            break
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        pytest.fail(f"never caught {writing} in 5 runs")
    resume_and_compare(config, run_dir, full)


@pytest.mark.parametrize("damage", ["torn metrics line", "newest checkpoint damaged"])
def test_kill_then_torn_log_or_damaged_checkpoint(tiny_model_dir, reference, tmp_path, damage):
    data, full, _ = reference
    run_dir = tmp_path / "run"
    config = write_config(tiny_model_dir, data, run_dir)
    assert kill_when(config, lambda: len(list(run_dir.glob("checkpoints/step-*"))) == 2)
    if damage == "torn metrics line":
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write('{"step": 99, "loss": 0.12')
    else:
        newest = max(run_dir.glob("checkpoints/step-*"), key=lambda p: int(p.name[5:]))
        weights = newest / "optimizer.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    resume_and_compare(config, run_dir, full)
