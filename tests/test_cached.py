"""The gradient cache equals the plain step: loss and every parameter's gradient, for every
objective family; its two passes agree under dropout; bf16 autocast; chunk_size: auto."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from contralign.data import Record, collate
from contralign.training.cached import (
    accumulate_gradients,
    activation_bytes_per_row,
    auto_chunk_size,
    backpropagate_chunks,
    embed_without_graph,
)
from contralign.training.distributed import loss_and_embedding_grads, shard_of
from contralign.training.task import Role

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega").split()
RTOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


# (case id, objective name, objective parameters, what the batch carries)
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("info_nce-simcse", "info_nce", {}, "same_text"),
    ("info_nce-hard_negatives", "info_nce", {}, "negatives"),
    ("info_nce-symmetric", "info_nce", {"symmetric": True, "learnable_temperature": True},
     "pairs"),
    ("nt_xent", "nt_xent", {}, "views"),
    ("clip", "clip", {}, "pairs"),
    ("siglip", "siglip", {}, "pairs"),
    ("supcon", "supcon", {}, "labels"),
    ("debiased", "debiased", {}, "negatives"),
    ("hard_negative", "hard_negative", {}, "pairs"),
    ("decoupled-dclw", "decoupled", {"weight_sigma": 0.5}, "pairs"),
    ("align_uniform", "align_uniform", {}, "pairs"),
    ("cwcl", "cwcl", {"learnable_temperature": True}, "pairs"),
    ("one_to_k", "one_to_k", {}, "views"),
    ("moco", "moco", {"queue_size": 16, "momentum": 0.9}, "pairs"),
    ("moco-symmetric", "moco", {"queue_size": 32, "momentum": 0.9, "symmetric": True}, "pairs"),
    ("swav", "swav", {"n_prototypes": 8}, "pairs"),
    ("whitened_cse", "whitened_cse", {"groups": 8}, "pairs"),
    ("conr", "conr", {"threshold": 1.0}, "scores"),
]


def records(n: int = 8, offset: int = 0) -> list[Record]:
    """``n`` records; one positive text repeats, so duplicate masking matters."""
    out = []
    for j in range(n):
        i = j + offset
        anchor = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(2 + i % 4))
        positive = f"{WORDS[(3 * i) % len(WORDS)]} text" if j != 5 else "alpha text"
        out.append(Record(anchor=anchor, positive=positive,
                          negatives=(f"other {WORDS[(5 * i) % len(WORDS)]}", f"{i} more words"),
                          label=str(i % 3), score=float(i % 4), line=i + 1))
    return out


def make_batch(encoder: Any, kind: str, n: int = 8, offset: int = 0) -> dict[str, Any]:
    items = records(n, offset)
    if kind == "same_text":  # SimCSE: the positive is the anchor, seen through other dropout
        items = [Record(anchor=r.anchor, line=r.line) for r in items]
    elif kind != "negatives":
        items = [Record(anchor=r.anchor, positive=r.positive, label=r.label, score=r.score,
                        line=r.line) for r in items]
    batch = dict(collate(items, encoder.preprocess))
    if kind != "labels":
        batch["labels"] = None
    if kind != "scores":
        batch["scores"] = None
    if kind == "views":
        batch["views"] = [batch["anchor"], batch["positive"], batch["anchor"]]  # V = 3
    return batch


def without_dropout(module: nn.Module) -> nn.Module:
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = 0.0
    return module


def make_task(model_dir: Path, name: str, params: dict[str, Any], *, dropout: bool = False,
              precision: str = "fp32") -> Any:
    from contralign.encoders.text import TextEncoder
    from contralign.training.build import build_task
    from contralign.training.config import TrainConfig

    torch.manual_seed(0)  # the same projection/prototype initialisation in every process
    encoder = TextEncoder.from_pretrained(str(model_dir), max_length=16)
    if not dropout:
        without_dropout(encoder)
    config = TrainConfig.model_validate({"data": {"path": "unused"},
                                         "objective": {"name": name, **params},
                                         "train": {"precision": precision}})
    task = build_task(config, encoder)
    task.train()
    if name == "moco":  # fill the queue: the first batch has no negatives yet
        with torch.no_grad():  # (no collective: the same in one process and in several)
            positive = make_batch(encoder, "pairs", offset=40)["positive"]
            keys = task.embed_role(Role("positive", positive, tower="positive", trainable=False))
            task.objective.queue.enqueue(torch.nn.functional.normalize(keys, dim=-1))
    return task


def grads(task: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}


def assert_close_relative(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                          rtol: float = RTOL) -> None:
    """Each tensor within ``rtol`` of its norm. A tensor whose true gradient is 0 (the attention
    key bias: a softmax ignores a shift) holds rounding noise only; it is compared with the
    norm of all gradients instead, at 1e-3 of ``rtol``."""
    assert actual.keys() == expected.keys()
    total = float(torch.stack([v.double().norm() for v in expected.values()]).norm())
    for name, value in expected.items():
        error = float((actual[name].double() - value.double()).norm())
        assert error <= rtol * max(float(value.double().norm()), 1e-3 * total), (name, error)


def run_plain(task: nn.Module, batch: dict[str, Any]) -> tuple[float, dict]:
    losses = task(batch)
    losses["loss"].backward()
    return float(losses["loss"].detach()), grads(task)


def run_cached(task: Any, batch: dict[str, Any], chunk_size: int | str) -> tuple[float, dict]:
    loss = accumulate_gradients(task, batch, chunk_size=chunk_size)["loss"]
    return loss, grads(task)


@pytest.mark.parametrize(("case", "name", "params", "kind"), CASES, ids=[c[0] for c in CASES])
def test_cached_equals_plain_without_dropout(case, name, params, kind, tiny_model_dir):
    """Chunks of 3 rows (uneven: 3 + 3 + 2): the same loss and every parameter's gradient
    (objective parameters included) as the plain step; the random state ends where it would.
    In float64, so the comparison sees the algorithm, not float32 rounding (which whitening's
    inverse square roots amplify past 1e-5)."""
    plain = make_task(tiny_model_dir, name, params).double()  # whitening amplifies rounding
    cached = copy.deepcopy(plain)
    batch = make_batch(plain.encoder, kind)
    if batch["scores"] is not None:
        batch["scores"] = batch["scores"].double()
    torch.manual_seed(1)
    loss, expected = run_plain(plain, batch)
    state = torch.get_rng_state()
    torch.manual_seed(1)
    cached_loss, actual = run_cached(cached, batch, chunk_size=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert cached_loss == pytest.approx(loss, rel=RTOL, abs=1e-7)
    assert len(expected) > 10  # the towers' parameters, not only the objective's
    assert_close_relative(actual, expected)
    if name == "moco":  # the queue moved the same way
        assert torch.allclose(cached.objective.queue.keys, plain.objective.queue.keys, atol=1e-6)


DROPOUT_CASES = [c for c in CASES if c[0] in ("info_nce-simcse", "nt_xent", "moco",
                                              "moco-symmetric", "whitened_cse")]


@pytest.mark.parametrize(("case", "name", "params", "kind"), DROPOUT_CASES,
                         ids=[c[0] for c in DROPOUT_CASES])
def test_cached_equals_plain_with_dropout_in_one_chunk(case, name, params, kind, tiny_model_dir):
    """Dropout on, chunk_size >= B: the first pass draws the plain path's masks, in its order."""
    plain = make_task(tiny_model_dir, name, params, dropout=True)
    cached = copy.deepcopy(plain)
    batch = make_batch(plain.encoder, kind)
    torch.manual_seed(2)
    loss, expected = run_plain(plain, batch)
    state = torch.get_rng_state()
    torch.manual_seed(2)
    cached_loss, actual = run_cached(cached, batch, chunk_size=64)
    assert torch.equal(torch.get_rng_state(), state)
    assert cached_loss == pytest.approx(loss, rel=RTOL)
    assert_close_relative(actual, expected)
    # Chunks of 3 draw other masks: a different loss, so the equality above is not vacuous.
    torch.manual_seed(2)
    other = copy.deepcopy(plain)
    other.zero_grad()
    assert run_cached(other, batch, chunk_size=3)[0] != pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize("name", ["info_nce", "nt_xent", "clip"])
def test_two_passes_agree_with_dropout_in_chunks(name, tiny_model_dir):
    """Dropout on, chunks of 3: the second pass reproduces every first-pass embedding exactly
    (so the gradient it backpropagates is that of the loss reported), and the SimCSE anchor and
    positive, the same texts, are still two different dropout views."""
    task = make_task(tiny_model_dir, name, {}, dropout=True)
    kind = {"info_nce": "same_text", "nt_xent": "views"}.get(name, "pairs")
    batch = make_batch(task.encoder, kind)
    roles = task.roles(batch)
    torch.manual_seed(3)
    first = embed_without_graph(task, roles, chunk_size=3)
    loss, embedding_grads = loss_and_embedding_grads(task, roles, first.embeddings, batch,
                                                     shard_of(8, 0, 1), "full")
    second = backpropagate_chunks(task, roles, first, embedding_grads)
    assert second.keys() == first.embeddings.keys()
    for role, embeddings in first.embeddings.items():
        assert torch.equal(second[role], embeddings), role
    recomputed = task.loss(task.assemble(second, batch))
    assert float(recomputed.detach()) == float(loss)
    if name == "info_nce":
        assert not torch.allclose(first.embeddings["anchor"], first.embeddings["positive"])
    # Without the replayed state the re-embedding differs: the replay is what makes them agree.
    again = task.embed_role(roles[0], slice(0, 3)).detach()
    assert not torch.equal(again, first.embeddings["anchor"][:3])


def test_bf16_autocasts_the_tower_and_keeps_the_loss_in_float32(tiny_model_dir):
    fp32 = make_task(tiny_model_dir, "info_nce", {})
    bf16 = make_task(tiny_model_dir, "info_nce", {}, precision="bf16")
    batch = make_batch(fp32.encoder, "pairs")
    seen: list[torch.dtype] = []
    layer = bf16.encoder.model.encoder.layer[0].output.dense
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    embeddings = bf16.embed(batch)
    handle.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)
    assert all(e.dtype == torch.float32 for e in embeddings.values())
    loss_bf16 = bf16(batch)["loss"].detach()
    assert loss_bf16.dtype == torch.float32
    assert float(loss_bf16) == pytest.approx(float(fp32(batch)["loss"].detach()), rel=5e-2)
    cached_loss, cached_grads = run_cached(bf16, batch, chunk_size=3)
    assert all(torch.isfinite(g).all() for g in cached_grads.values())


def test_auto_chunk_size_follows_free_memory(tiny_model_dir, monkeypatch):
    from contralign.training import cached

    task = make_task(tiny_model_dir, "info_nce", {})
    roles = task.roles(make_batch(task.encoder, "pairs"))
    length = max(r.inputs["input_ids"].shape[1] for r in roles)
    per_row = activation_bytes_per_row(task.encoder, length, "fp32")
    assert per_row > 2 * 34 * 32 * length  # 2 layers × 34·h bytes a token, at least
    monkeypatch.setattr(cached, "free_memory_bytes", lambda device: int(6 * per_row / 0.5))
    assert auto_chunk_size(task, roles) == 6
    monkeypatch.setattr(cached, "free_memory_bytes", lambda device: 10**15)
    assert auto_chunk_size(task, roles) == 8  # never more than the batch
    monkeypatch.setattr(cached, "free_memory_bytes", lambda device: 1)
    assert auto_chunk_size(task, roles) == 1
    monkeypatch.setattr(cached, "free_memory_bytes", lambda device: None)
    assert auto_chunk_size(task, roles) == 8  # fallback 32, capped at the batch


def test_free_memory_is_read_on_this_host():
    """On a host with /proc/meminfo, a byte count above 0 and at most the physical memory
    (``os.sysconf``, read independently of /proc/meminfo); without it, None."""
    import os

    from contralign.training.cached import free_memory_bytes

    free = free_memory_bytes(torch.device("cpu"))
    if not Path("/proc/meminfo").is_file():
        assert free is None
        return
    assert isinstance(free, int)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < free <= physical  # the unit (kB times 1024) is checked on a known file below


def test_free_memory_parses_mem_available_in_bytes(tmp_path, monkeypatch):
    """MemAvailable (kB) times 1024; None when the line is missing or the file unreadable."""
    from contralign.training import cached

    meminfo = tmp_path / "meminfo"
    monkeypatch.setattr(cached, "Path", lambda name: meminfo if name == "/proc/meminfo" else
                        Path(name))
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:         1000000 kB\n"
                       "MemAvailable:    8000123 kB\nBuffers:          200000 kB\n")
    assert cached.free_memory_bytes(torch.device("cpu")) == 8000123 * 1024
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:         1000000 kB\n")
    assert cached.free_memory_bytes(torch.device("cpu")) is None
    meminfo.unlink()
    assert cached.free_memory_bytes(torch.device("cpu")) is None


def _fit_config(model_dir: Path, data: Path, out: Path, **train: Any) -> dict[str, Any]:
    return {"model": {"name": str(model_dir), "max_length": 16},
            "data": {"path": str(data), "columns": {"anchor": "query", "positive": "doc"}},
            "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
            "train": {"epochs": 1, "batch_size": 6, "seed": 0, "log_every": 1, **train},
            "output_dir": str(out)}


def test_fit_with_the_cache_trains_like_fit_without(tiny_model_dir, pairs_file, tmp_path):
    """Through the loop, dropout on: one chunk per role is the plain run (same masks), and
    `auto` on this host trains too; the config keys are checked."""
    from contralign.core.errors import ConfigError
    from contralign.training.loop import fit

    plain = fit(_fit_config(tiny_model_dir, pairs_file, tmp_path / "plain"), progress=False)
    cached = fit(_fit_config(tiny_model_dir, pairs_file, tmp_path / "cached",
                             grad_cache={"enabled": True, "chunk_size": 64}), progress=False)
    expected = load_file(str(plain.model_dir / "model.safetensors"))
    actual = load_file(str(cached.model_dir / "model.safetensors"))
    assert_close_relative(actual, expected)
    losses = [[json.loads(x)["loss"] for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()
               if "loss" in x] for r in (plain, cached)]
    assert losses[0] == pytest.approx(losses[1], rel=RTOL)
    auto = fit(_fit_config(tiny_model_dir, pairs_file, tmp_path / "auto", max_steps=1,
                           grad_cache={"enabled": True, "chunk_size": "auto"},
                           precision="bf16"), progress=False)
    assert auto.steps == 1
    with pytest.raises(ConfigError, match=r"train.grad_cache.chunk_size"):
        fit(_fit_config(tiny_model_dir, pairs_file, tmp_path / "bad",
                        grad_cache={"enabled": True, "chunk_size": 0}), progress=False)


def test_chunks_take_rows_longest_first_and_one_chunk_keeps_the_batch_order():
    from contralign.training.cached import chunk_rows

    lengths = torch.tensor([3, 7, 1, 7, 5])
    mask = (torch.arange(8)[None, :] < lengths[:, None]).long()  # (5, 8) right-padded
    role = Role("anchor", {"input_ids": torch.arange(40).view(5, 8), "attention_mask": mask})
    chunks = chunk_rows(role, 2)
    assert [c.tolist() for c in chunks] == [[1, 3], [4, 0], [2]]
    assert [c.tolist() for c in chunk_rows(role, 5)] == [[0, 1, 2, 3, 4]]
    taken = role.take(chunks[1])
    assert torch.equal(taken["input_ids"], role.inputs["input_ids"][[4, 0]])
