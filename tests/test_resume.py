"""Runs that cannot be corrupted: one writer, resume only what may change, torn logs and
damaged checkpoints recovered from, stale temporary folders removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import contralign.training.loop as loop
from contralign.cli.app import app
from contralign.core.outputs import hold_lock
from contralign.training.config import TrainConfig
from contralign.training.loop import fit

runner = CliRunner()
COLUMNS = {"anchor": "query", "positive": "doc"}


class Crash(Exception):
    """Stands for a kill after some step (the process dies; its files stay)."""


def make_config(model: Path, data: Path, out: Path, **train: object) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": {"name": str(model), "max_length": 32},
        "data": {"path": str(data), "columns": COLUMNS},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 4, "batch_size": 4, "log_every": 1, "checkpoint_every": 4,
                  "keep_checkpoints": 2, **train},
        "output_dir": str(out),
    })


def crash_after(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    real = loop._after_step

    def after_step(task, losses, config, state, *args, **kwargs):
        real(task, losses, config, state, *args, **kwargs)
        if state.step == step:
            raise Crash(f"killed after step {step}")

    monkeypatch.setattr(loop, "_after_step", after_step)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture()
def full_run(tiny_model_dir, pairs_file, tmp_path) -> Path:
    """The uninterrupted run every resumed one must equal (12 steps)."""
    return fit(make_config(tiny_model_dir, pairs_file, tmp_path / "full"), progress=False).run_dir


def crashed_run(tiny_model_dir, pairs_file, out, monkeypatch, step: int = 10) -> TrainConfig:
    config = make_config(tiny_model_dir, pairs_file, out)
    crash_after(monkeypatch, step)
    with pytest.raises(Crash):
        fit(config, progress=False)
    monkeypatch.undo()
    return config


def test_torn_metrics_line_and_stale_tmp_folders(tiny_model_dir, pairs_file, tmp_path,
                                                 monkeypatch, full_run):
    run_dir = tmp_path / "killed"
    config = crashed_run(tiny_model_dir, pairs_file, run_dir, monkeypatch)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "loss": 0.5')  # a kill during the write
    stale = run_dir / "checkpoints" / ".step-12.abcd_123.tmp"
    stale.mkdir()
    (stale / "task.safetensors").write_bytes(b"half")
    stale_model = run_dir / ".model.x1y2z3w4.tmp"
    stale_model.mkdir()
    (run_dir / ".metrics.jsonl.k9k9k9k9.tmp").write_text("{")
    result = fit(config, resume=True, progress=False)
    assert result.steps == 12
    assert_same_weights(full_run, run_dir)
    assert not stale.exists() and not stale_model.exists()
    assert not list(run_dir.glob(".metrics.jsonl.*"))
    steps = [json.loads(line)["step"] for line in
             (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "delete"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
        tiny_model_dir, pairs_file, tmp_path, monkeypatch, full_run, damage):
    run_dir = tmp_path / "killed"
    config = crashed_run(tiny_model_dir, pairs_file, run_dir, monkeypatch)
    newest = run_dir / "checkpoints" / "step-8" / "task.safetensors"
    data = newest.read_bytes()
    match damage:
        case "truncate":
            newest.write_bytes(data[: len(data) // 2])
        case "flip a byte":
            newest.write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
        case "delete":
            newest.unlink()
    with pytest.warns(UserWarning, match=r"step-8/task.safetensors: .*; resuming from step-4 "
                                         "instead"):
        fit(config, resume=True, progress=False)
    assert_same_weights(full_run, run_dir)


def test_every_checkpoint_damaged_is_one_line(tiny_model_dir, pairs_file, tmp_path,
                                              monkeypatch):
    run_dir = tmp_path / "killed"
    config = crashed_run(tiny_model_dir, pairs_file, run_dir, monkeypatch)
    for folder in (run_dir / "checkpoints").iterdir():
        (folder / "rng.safetensors").write_bytes(b"")
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = runner.invoke(app, ["train", str(path), "--resume"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    warning, error = result.output.strip().splitlines()  # one line each
    assert warning.startswith("warning: ") and "step-8/rng.safetensors: checksum mismatch" \
        in warning and warning.endswith("resuming from step-4 instead")
    assert error.startswith("error: ") and "step-4/rng.safetensors: checksum mismatch" in error
    assert error.endswith("no intact checkpoint is left to resume from (start again with "
                          "--overwrite)")


def test_resume_refuses_a_changed_config_naming_the_keys(tiny_model_dir, pairs_file, tmp_path,
                                                        monkeypatch):
    run_dir = tmp_path / "killed"
    config = crashed_run(tiny_model_dir, pairs_file, run_dir, monkeypatch)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    stored = (run_dir / "config.yaml").read_bytes()
    for changes, keys in ((["optim.lr=0.5", "train.seed=7"], "optim.lr, train.seed"),
                          (["train.batch_size=3"], "train.batch_size"),
                          (["data.columns.anchor=doc"], "data.columns.anchor")):
        args = ["train", str(path), "--resume"]
        for change in changes:
            args += ["--set", change]
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"--resume: {keys}: changed since the run started" in result.output
        assert (run_dir / "config.yaml").read_bytes() == stored  # never rewritten


def test_resume_may_extend_a_run_and_change_its_cadence(tiny_model_dir, pairs_file, tmp_path,
                                                        monkeypatch):
    run_dir = tmp_path / "killed"
    config = crashed_run(tiny_model_dir, pairs_file, run_dir, monkeypatch)
    extended = config.model_copy(update={"train": config.train.model_copy(
        update={"epochs": 6, "log_every": 2})})
    assert fit(extended, resume=True, progress=False).steps == 18
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 6
    finished = runner.invoke(app, ["train", str(run_dir / "config.yaml"), "--resume"])
    assert finished.exit_code == 2
    assert "finished already at step 18; raise train.max_steps or train.epochs" in finished.output


def test_resume_with_changed_data_is_refused(tiny_model_dir, pairs_file, tmp_path,
                                             monkeypatch):
    run_dir = tmp_path / "killed"
    config = crashed_run(tiny_model_dir, pairs_file, run_dir, monkeypatch)
    lines = pairs_file.read_text().splitlines()
    pairs_file.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(Exception, match="data.path: .* changed since the run started \\(11 "
                                        "records now, 12 then"):
        fit(config, resume=True, progress=False)


def test_nothing_to_resume_says_so(tiny_model_dir, pairs_file, tmp_path):
    config = make_config(tiny_model_dir, pairs_file, tmp_path / "never")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = runner.invoke(app, ["train", str(path), "--resume"])
    assert result.exit_code == 2
    assert "nothing to resume" in result.output and "drop --resume" in result.output
    assert not (tmp_path / "never").exists()


def test_a_second_writer_is_refused(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    run_dir = tmp_path / "killed"
    config = crashed_run(tiny_model_dir, pairs_file, run_dir, monkeypatch)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    with hold_lock(run_dir, "output_dir"):  # another process writing the run
        for extra in (["--resume"], ["--overwrite"]):
            result = runner.invoke(app, ["train", str(path), *extra])
            assert result.exit_code == 2, result.output
            assert "is in use by another contralign process" in result.output
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics


def test_resume_without_a_checkpoint_starts_the_run_again(tiny_model_dir, pairs_file, tmp_path,
                                                          monkeypatch, full_run):
    """Killed before its first checkpoint: resuming runs it from step 0, equal to a full run."""
    run_dir = tmp_path / "killed"
    config = make_config(tiny_model_dir, pairs_file, run_dir)
    crash_after(monkeypatch, 2)
    with pytest.raises(Crash):
        fit(config, progress=False)
    monkeypatch.undo()
    assert fit(config, resume=True, progress=False).steps == 12
    assert_same_weights(full_run, run_dir)


def test_resume_and_overwrite_together_are_refused(tiny_model_dir, pairs_file, tmp_path):
    config = make_config(tiny_model_dir, pairs_file, tmp_path / "run")
    with pytest.raises(Exception, match="--resume and --overwrite: choose one"):
        fit(config, resume=True, overwrite=True, progress=False)


def test_checkpoints_carry_the_gpu_random_states(tmp_path, monkeypatch):
    """The CUDA generators of every device go into rng.safetensors and come back in order.
    (No GPU here: torch.cuda's state functions are stood in for; the file round trip is real.)"""
    from safetensors.torch import save_file

    from contralign.training import checkpoint

    devices = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored: list[torch.Tensor] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: devices)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    save_file(checkpoint._rng_states(), str(tmp_path / "rng.safetensors"))
    cpu_before = torch.get_rng_state()
    torch.rand(3)  # move the CPU generator on
    checkpoint._restore_rng(load_file(str(tmp_path / "rng.safetensors")))
    assert torch.equal(torch.get_rng_state(), cpu_before)
    assert len(restored) == 2 and all(map(torch.equal, restored, devices))
