"""What a run records as it trains (training.monitor): environment.json, the step-0 evaluation,
the temperature, geometry diagnostics, snapshots and their pruning, bootstrap intervals on the
final evaluation, and TensorBoard event files read back with tensorboard's own reader; a
resumed run records exactly what an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import PAIRS
from tests.test_resume import Crash, crash_after

from contralign.core.errors import ConfigError
from contralign.objectives.registry import build_objective
from contralign.training.config import TrainConfig
from contralign.training.loop import fit
from contralign.training.monitor import objective_temperature

COLUMNS = {"anchor": "query", "positive": "doc"}




def make_config(model: Path, data: Path, out: Path, *, loggers: list[str] | None = None,
                ci: float | None = None, **train: object) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": {"name": str(model), "max_length": 32},
        "data": {"path": str(data), "columns": COLUMNS},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 3, "batch_size": 4, "log_every": 1, "checkpoint_every": 4,
                  "loggers": loggers or ["jsonl"], **train},
        "eval": {"retrieval": {"path": str(data), "columns": COLUMNS}, "every_steps": 2,
                 "ci": ci},
        "output_dir": str(out),
    })


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0,
                                                                            "histograms": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def histograms(run_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    return {tag: events.Histograms(tag) for tag in events.Tags()["histograms"]}


def test_a_last_step_on_the_evaluation_interval_is_evaluated_once(tiny_model_dir, pairs_file,
                                                                   tmp_path):
    config = make_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=4)
    fit(config, progress=False)
    evals = [x["step"] for x in lines(tmp_path / "run") if "eval" in x]
    assert evals == [0, 2, 4]  # step 4 by fit's final evaluation only


def test_a_run_records_environment_diagnostics_snapshots_and_tensorboard(
        tiny_model_dir, pairs_file, tmp_path):
    config = make_config(tiny_model_dir, pairs_file, tmp_path / "run",
                         loggers=["jsonl", "tensorboard"], ci=0.9)
    result = fit(config, progress=False)
    run = result.run_dir
    assert result.steps == 9
    environment = json.loads((run / "environment.json").read_text())
    assert {"format", "contralign", "python", "torch", "transformers", "numpy", "platform",
            "processor", "cpu_count", "device", "gpu", "world_size", "started"} <= set(environment)
    assert environment["device"] == "cpu" and environment["gpu"] is None
    assert environment["world_size"] == 1 and environment["torch"] == torch.__version__

    logged = lines(run)
    evals = [x for x in logged if "eval" in x]
    assert [x["step"] for x in evals] == [0, 2, 4, 6, 8, 9]  # step 0, every 2, the end
    assert logged[0] == evals[0]  # the untrained model comes first
    for entry in evals:
        assert {"geometry/alignment", "geometry/uniformity", "geometry/effective_rank",
                "geometry/hubness", "geometry/modality_gap", "retrieval/ndcg@10"} <= set(
            entry["eval"])
    final = evals[-1]
    assert final["confidence"] == 0.9 and "ci" not in evals[-2]
    assert final["eval"] == result.metrics
    assert {k: list(v) for k, v in result.intervals.items()} == final["ci"]
    assert set(final["ci"]) >= {"retrieval/ndcg@10", "geometry/alignment"}
    for key, (lo, hi) in final["ci"].items():
        assert lo <= final["eval"][key] <= hi, key
    trains = [x for x in logged if "loss" in x]
    # info_nce's fixed temperature (0.05 by default), logged as the objective holds it
    assert [x["step"] for x in trains] == list(range(1, 10))
    assert all(x["temperature"] == pytest.approx(0.05) for x in trains)

    # Snapshots: the sample is all 12 dev pairs, in order; steps 0 and 9 kept, 2-8 pruned.
    sample = json.loads((run / "diagnostics" / "sample.json").read_text())
    assert sample["source"] == "eval.retrieval" and sample["format"] == 1
    assert sample["anchors"] == [q for q, _ in PAIRS]
    assert sample["positives"] == [d for _, d in PAIRS]
    assert sample["modalities"] == {"anchor": "text", "positive": "text"}
    assert sorted(p.name for p in (run / "diagnostics").glob("*.npz")) == ["step-0.npz",
                                                                          "step-9.npz"]
    with np.load(run / "diagnostics" / "step-9.npz", allow_pickle=False) as snapshot:
        anchors, positives = snapshot["anchors"], snapshot["positives"]
    assert anchors.dtype == np.float32 and anchors.shape == (12, 32)
    from contralign import load_tower

    trained = load_tower(str(result.model_dir))
    expected = trained.encode([q for q, _ in PAIRS])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(anchors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(positives, axis=1), 1.0, atol=1e-5)

    # TensorBoard: every train and eval value as a scalar, the histograms at each evaluation.
    tb = scalars(run)
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 10))
    assert [v for _, v in tb["train/loss"]] == pytest.approx([x["loss"] for x in trains],
                                                             rel=1e-6)
    assert [s for s, _ in tb["eval/geometry/hubness"]] == [0, 2, 4, 6, 8, 9]
    assert tb["eval/retrieval/ndcg@10"][-1][1] == pytest.approx(result.metrics[
        "retrieval/ndcg@10"], rel=1e-6)
    assert "train/temperature" in tb and "train/lr" in tb
    hist = histograms(run)
    positive = hist["similarity/positive_pairs"]
    assert [h.step for h in positive] == [0, 2, 4, 6, 8, 9]
    assert positive[-1].histogram_value.num == 12
    assert hist["similarity/negative_pairs"][-1].histogram_value.num == 12 * 11
    assert positive[-1].histogram_value.sum == pytest.approx(
        float(np.sum(anchors * positives)), rel=1e-4)




def test_a_resumed_run_records_what_an_uninterrupted_one_does(
        tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    tensorboard = ["jsonl", "tensorboard"]
    full = fit(make_config(tiny_model_dir, pairs_file, tmp_path / "full", loggers=tensorboard),
               progress=False).run_dir
    killed = tmp_path / "killed"
    config = make_config(tiny_model_dir, pairs_file, killed, loggers=tensorboard)
    crash_after(monkeypatch, 7)  # checkpoint at 4; evaluations at 0, 2, 4, 6 logged
    with pytest.raises(Crash):
        fit(config, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in (killed / "diagnostics").glob("*.npz")) == ["step-0.npz",
                                                                             "step-6.npz"]
    fit(config, resume=True, progress=False)
    assert lines(killed) == lines(full)  # the same losses, evaluations and steps, once each
    for name in ("step-0.npz", "step-9.npz"):
        with np.load(full / "diagnostics" / name) as a, np.load(killed / "diagnostics" /
                                                                name) as b:
            assert np.array_equal(a["anchors"], b["anchors"])
    assert sorted(p.name for p in (killed / "diagnostics").glob("*.npz")) == ["step-0.npz",
                                                                             "step-9.npz"]
    # TensorBoard: the killed run's events after the checkpoint (steps 5-7) are purged.
    got, want = scalars(killed), scalars(full)
    assert got.keys() == want.keys()
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]]), tag


def test_missing_tensorboard_is_one_config_error_before_anything_is_written(
        tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    config = make_config(tiny_model_dir, pairs_file, tmp_path / "run",
                         loggers=["jsonl", "tensorboard"])
    with pytest.raises(ConfigError, match=r'train\.loggers: .*pip install '
                                          r'"contralign\[tensorboard\]"') as err:
        fit(config, progress=False)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*run*"))


def test_config_keys_are_checked() -> None:
    with pytest.raises(ValueError, match="loggers"):
        TrainConfig.model_validate({"data": {"path": "x"}, "train": {"loggers": ["wandb"]}})
    with pytest.raises(ValueError, match="ci"):
        TrainConfig.model_validate({"data": {"path": "x"}, "eval": {"ci": 1.0}})
    assert TrainConfig.model_validate({"data": {"path": "x"}}).train.loggers == ["jsonl"]


def test_objective_temperature_reads_each_way_objectives_hold_it() -> None:
    assert objective_temperature(build_objective("info_nce", {"temperature": 0.07})) == \
        pytest.approx(0.07)
    learned = build_objective("info_nce", {"temperature": 0.1, "learnable_temperature": True})
    assert objective_temperature(learned) == pytest.approx(0.1)
    # CLIP holds a logit scale 1/τ, clamped at 100: τ = 0.01 at the clamp.
    assert objective_temperature(build_objective("clip", {"temperature": 0.05})) == \
        pytest.approx(0.05)
    assert objective_temperature(build_objective("clip", {"temperature": 0.001})) == \
        pytest.approx(0.01)
    siglip = build_objective("siglip", {"logit_scale": 10.0})  # t = 10: τ = 1/t
    assert objective_temperature(siglip) == pytest.approx(0.1)
    assert objective_temperature(build_objective("moco", {"temperature": 0.2}, dim=8)) == \
        pytest.approx(0.2)
    assert objective_temperature(torch.nn.Identity()) is None
