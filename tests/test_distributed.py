"""Two gloo processes with half a batch each train exactly like one process with the whole batch:
loss, every gradient and every parameter, for every objective; under torchrun through the CLI;
and a killed 2-process run resumes exactly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file, save_file
from test_cached import (
    CASES,
    assert_close_relative,
    make_batch,
    make_task,
)

from contralign.training.cached import accumulate_gradients
from contralign.training.config import OptimConfig
from contralign.training.distributed import Shard, shard_of, slice_batch
from contralign.training.optim import build_optimizer

RTOL = 1e-5
# Batches of the three steps: (rows, first record); 7 rows split 4 + 3 over two processes.
STEPS = [(8, 0), (7, 8), (8, 15)]
# The default suite's cases, with the gradient cache's chunk size each process uses (None: none).
FAST = {"info_nce-hard_negatives": None, "whitened_cse": 2, "moco": 3, "moco-symmetric": 3}

pytestmark = pytest.mark.usefixtures("one_thread")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train_three_steps(model_dir: Path, name: str, params: dict[str, Any], kind: str,
                      chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Three AdamW steps on the STEPS batches (float64, dropout off); the losses, the first
    step's gradients, and every parameter and buffer at the end."""
    task = make_task(model_dir, name, params).double()
    optimizer = build_optimizer(task, OptimConfig(lr=1e-3))
    initial = {f"initial.{n}": p.detach().clone() for n, p in task.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    losses = []
    for step, (rows, offset) in enumerate(STEPS):
        batch = make_batch(task.encoder, kind, n=rows, offset=offset)
        if batch["scores"] is not None:
            batch["scores"] = batch["scores"].double()
        torch.manual_seed(100 + step)  # what the objective draws (WhitenedCSE's shuffles)
        losses.append(accumulate_gradients(task, batch, chunk_size=chunk_size)["loss"])
        if step == 0:
            out.update({f"grad.{n}": p.grad.clone() for n, p in task.named_parameters()
                        if p.grad is not None})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        task.after_step()
    out.update(initial)
    out.update({f"final.{n}": t.detach().clone() for n, t in task.state_dict().items()
                if t.is_floating_point()})
    out["losses"] = torch.tensor(losses, dtype=torch.float64)
    return out


def _worker(rank: int, world: int, port: int, model_dir: str, out_dir: str,
            cases: list[tuple[str, str, dict[str, Any], str]]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case, name, params, kind in cases:
            result = train_three_steps(Path(model_dir), name, params, kind, FAST.get(case))
            save_file({k: v.contiguous() for k, v in result.items()},
                      str(Path(out_dir) / f"{case}-rank{rank}.safetensors"))
    finally:
        torch_dist.destroy_process_group()


def _compare(cases: list[tuple[str, str, dict[str, Any], str]], model_dir: Path,
             tmp_path: Path, world: int = 2) -> None:
    mp.spawn(_worker, args=(world, free_port(), str(model_dir), str(tmp_path), cases),
             nprocs=world, join=True)
    for case, name, params, kind in cases:
        expected = train_three_steps(model_dir, name, params, kind)  # one process, plain path
        ranks = [load_file(str(tmp_path / f"{case}-rank{r}.safetensors")) for r in range(world)]
        for got in ranks:
            assert got["losses"].tolist() == pytest.approx(expected["losses"].tolist(), rel=RTOL)
            for prefix in ("grad.", "final."):
                part = {k: v for k, v in expected.items() if k.startswith(prefix)}
                assert_close_relative({k: got[k] for k in part}, part)
            # The updates, not just the weights (which hardly move in three steps).
            updates = {k: expected[f"final.{k[8:]}"] - v for k, v in expected.items()
                       if k.startswith("initial.") and f"final.{k[8:]}" in expected}
            assert_close_relative({k: got[f"final.{k[8:]}"] - got[k] for k in updates}, updates)
        for key in ranks[0]:  # every rank holds the same model
            assert all(torch.equal(ranks[0][key], other[key]) for other in ranks[1:]), (case, key)


def test_two_processes_equal_one_for_each_strategy(tiny_model_dir: Path, tmp_path: Path):
    """info_nce with hard negatives (own rows against all candidates), whitened_cse (the whole
    loss on gathered embeddings, the same shuffles on every rank), moco (local rows, keys of
    all ranks queued); the last two with the gradient cache in each process (chunks of 2 and
    3 rows), against one plain process. The slow test below covers every other objective."""
    cases = [c for c in CASES if c[0] in FAST]
    assert {make_task(tiny_model_dir, c[1], c[2]).split for c in cases} == {
        "rows", "full", "local"}
    _compare(cases, tiny_model_dir, tmp_path)


# Objectives that compute only their own rows of the logits (split "rows", issue 13).
LOCAL_ROWS = ("clip", "siglip", "nt_xent", "one_to_k", "decoupled-dclw", "supcon", "conr")


def test_three_processes_equal_one_for_local_rows(tiny_model_dir: Path, tmp_path: Path):
    """Three processes (batches of 8, 7, 8 rows cut 3 + 3 + 2, 3 + 2 + 2), each scoring only
    its own rows against the gathered batch: clip (both directions), siglip (its block of
    pairs), nt_xent (three views), one_to_k, DCLW (weights of the whole batch), SupCon (the
    mean over the whole batch's anchors with a positive) and ConR train like one process. The
    slow test below covers the other rows objectives with two."""
    cases = [c for c in CASES if c[0] in LOCAL_ROWS]
    assert len(cases) == len(LOCAL_ROWS)
    assert {make_task(tiny_model_dir, c[1], c[2]).split for c in cases} == {"rows"}
    _compare(cases, tiny_model_dir, tmp_path, world=3)


@pytest.mark.slow
def test_two_processes_equal_one_for_every_objective(tiny_model_dir: Path, tmp_path: Path):
    _compare([c for c in CASES if c[0] not in FAST], tiny_model_dir, tmp_path)


def test_shards_cover_the_batch_in_order():
    assert [shard_of(7, r, 2).rows for r in (0, 1)] == [slice(0, 4), slice(4, 7)]
    assert [shard_of(8, r, 3).counts for r in (0, 1, 2)] == [(3, 3, 2)] * 3
    assert shard_of(8, 2, 3).weight == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="cannot be split over 3"):
        shard_of(2, 0, 3)
    batch = {"anchor": {"input_ids": torch.arange(14).view(7, 2)}, "negatives": [],
             "negative_ids": None, "anchor_ids": torch.arange(7)}
    parts = [slice_batch(batch, Shard(r, (4, 3))) for r in (0, 1)]
    assert torch.equal(torch.cat([p["anchor"]["input_ids"] for p in parts]),
                       batch["anchor"]["input_ids"])
    assert parts[1]["anchor_ids"].tolist() == [4, 5, 6] and parts[1]["negative_ids"] is None


def test_a_batch_smaller_than_the_world_is_refused():
    from test_cached import records

    from contralign.core.errors import ConfigError
    from contralign.data import PairBatcher
    from contralign.training.loop import _check_shards

    with pytest.raises(ConfigError, match="train.batch_size: a batch of 1 records"):
        _check_shards(PairBatcher(records(13), 4), 2)  # the last batch holds 1 record
    _check_shards(PairBatcher(records(13), 4, drop_last=True), 2)
    _check_shards(PairBatcher(records(13), 4), 1)


# --- torchrun, through the CLI --------------------------------------------------------------


@pytest.fixture()
def no_dropout_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with dropout off: one process and two then see the same network."""
    import shutil

    folder = tmp_path / "tiny-no-dropout"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _write_config(model: Path, data: Path, out: Path, **train: Any) -> Path:
    config = {"model": {"name": str(model), "max_length": 16},
              "data": {"path": str(data), "columns": {"anchor": "query", "positive": "doc"}},
              "objective": {"name": "info_nce", "learnable_temperature": True},
              "optim": {"lr": 1e-3, "warmup_ratio": 0.2},
              "train": {"batch_size": 4, "seed": 0, "log_every": 1, **train},
              "output_dir": str(out)}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: children of children too)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])  # fields: state, ppid, ...
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _torchrun(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "--local-ranks-filter", "0", "-m", "contralign", "train", str(config), "--json",
            *extra]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in
            (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one(no_dropout_model, pairs_file, tmp_path):
    """`torchrun --nproc_per_node 2 -m contralign train` (batch 4 = 2 + 2) ends with the weights
    and losses of `contralign train` in one process (batch 4), within 1e-5 of the updates."""
    from contralign.training.loop import fit

    one = fit(_write_config(no_dropout_model, pairs_file, tmp_path / "one", epochs=2),
              progress=False)
    config = _write_config(no_dropout_model, pairs_file, tmp_path / "two", epochs=2)
    done = subprocess.run(_torchrun(config), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["steps"] == one.steps == 6
    assert _losses(tmp_path / "two") == pytest.approx(_losses(one.run_dir), rel=RTOL)
    base = load_file(str(no_dropout_model / "model.safetensors"))
    expected = load_file(str(one.model_dir / "model.safetensors"))
    actual = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    # The attention key bias has a true gradient of 0 (a softmax ignores a shift of its
    # logits): it holds float32 rounding noise, which Adam's normalisation turns into steps of
    # up to lr, different in every run. Every other tensor is compared.
    updates = {k: expected[k] - base[k] for k in expected
               if k in base and not k.endswith("attention.self.key.bias")}
    assert_close_relative({k: actual[k] - base[k] for k in updates}, updates)
    assert not list((tmp_path / "two").glob("*.rejects.jsonl"))


@pytest.mark.slow
def test_torchrun_killed_run_resumes_exactly(tiny_model_dir, pairs_file, tmp_path):
    """Dropout on: SIGKILL a 2-process run after its first checkpoint; `--resume` under torchrun
    ends with exactly the weights of an uninterrupted 2-process run."""
    full = _write_config(tiny_model_dir, pairs_file, tmp_path / "full", epochs=20,
                         checkpoint_every=3, keep_checkpoints=1)
    done = subprocess.run(_torchrun(full), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = _write_config(tiny_model_dir, pairs_file, tmp_path / "killed", epochs=20,
                           checkpoint_every=3, keep_checkpoints=1)
    proc = subprocess.Popen(_torchrun(killed), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not any(checkpoints.glob("step-*/state.json")):
        time.sleep(0.01)
    # torchrun starts each worker in a session of its own (start_new_session), so killing
    # torchrun's group would leave the workers training on: kill every process of the tree.
    for pid in [proc.pid, *_descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists(), "the run finished before the kill"
    resumed = subprocess.run(_torchrun(killed, "--resume"), env=ENV, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["steps"] == 60
    expected = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    actual = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")
