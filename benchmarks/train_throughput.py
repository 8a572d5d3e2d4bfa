"""Training throughput of the plain path against sentence-transformers' MNRL (pairs/s).

Both sides train the default model (all-MiniLM-L6-v2 as its folder sets it up: mean pooling,
normalised, max length 256) with in-batch negatives (temperature 0.05 = scale 20), AdamW lr 5e-5
(10% warmup then linear, no weight decay, clipping at 1.0, as ``train_parity.py``), on the same
pairs in the same order (seed 0), through their own trainers: contralign's ``fit`` with its
default settings, sentence-transformers' ``SentenceTransformerTrainer`` (or its pre-v3 ``old_fit``
without ``accelerate``/``datasets``). Each run trains a few optimiser steps (``STEPS``) of one
batch size on a freshly loaded model; the first step is warm-up, and pairs/s is measured from the
end of the first step to the end of the last, by the same hooks on both sides
(``probes.TrainingProbe``). Runs alternate sides (the first side alternates too) and the median
over ``--repeats`` is reported, per data set and batch size, with the ratio ours / ST.

Model FLOP/s: during each run ``probes.TrainingProbe`` records the ``(rows, width)`` of every
forward pass of the transformer (at its embedding block), as each trainer shapes it (ours: length
groups trimmed to their longest row; sentence-transformers: anchors and positives padded to the
batch's longest); torch's ``FlopCounterMode`` counts one forward and backward pass at each shape on
a ``meta`` copy of that side's model (``flops.TransformerFlops``), and the FLOPs of the timed steps
over the timed seconds are the side's model FLOP/s (products only: the loss's ``B x B``
similarities, well under 1 % of the products here, element-wise ops and the optimiser are not
counted). The fp32 matmul peak of this machine at the same thread count is measured first in the
same process (``flops.machine_peak``, ``--peak-sizes``): by torch and, where it is installed, by
onnxruntime (another kernel library, which on an AMD CPU reaches twice
what torch's MKL does); each side's FLOP/s is reported as a share of the larger.

Data: the 1,299 SICK-E train pairs labelled ENTAILMENT (short sentences: more than half of a
padded batch is padding), and the first pairs of STS-B train (news, captions and forum sentences
of more varied length).

``--sweep 128,256,512,none`` times only our trainer at those ``train.tokens_per_group`` settings
(how its CPU default was chosen).

Run: ``python benchmarks/train_throughput.py [--batch-sizes 64,256] [--data sick,stsb]
[--repeats 3] [--threads N] [--peak-sizes 1024,2048,4096] [--sweep ...] [--json]``
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from common import (  # noqa: E402
    data_dir,
    machine,
    print_json,
    print_machine,
    ratio,
    read_tsv,
    require,
)
from flops import PEAK_SIZES, TransformerFlops, machine_peak  # noqa: E402
from probes import TrainingProbe  # noqa: E402
from train_parity import (  # noqa: E402
    LR,
    MAX_GRAD_NORM,
    TEMPERATURE,
    WARMUP_RATIO,
    WEIGHT_DECAY,
    _reference_old_fit,
    _reference_trainer,
    default_model_path,
    entailment_pairs,
    reference_trainer,
    write_pairs,
)

Pairs = list[tuple[str, str]]
# Steps per run at each batch size: the first is warm-up, the rest are timed (>= 512 pairs).
STEPS = {64: 9, 128: 5, 256: 3}
SEED = 0
# One FLOP counter per side, built from that side's first loaded model; it keeps its counts.
COUNTERS: dict[str, TransformerFlops] = {}


class Run(NamedTuple):
    """One timed run: pairs/s and model FLOP/s over the same window, FLOPs per timed step."""

    pairs_per_second: float
    flops_per_second: float
    flops_per_step: float


def stsb_pairs(path: Path) -> Pairs:
    return [(row["sentence1"], row["sentence2"]) for row in read_tsv(path, csv.QUOTE_NONE)]


def steps_for(batch_size: int) -> int:
    return STEPS.get(batch_size, max(3, 1 + 512 // batch_size))


def timed_run(side: str, model: Any, probe: TrainingProbe, batch_size: int) -> Run:
    """Pairs/s and model FLOP/s from the end of the warm-up step to the end of the last step.

    Args:
        side: "ours" or "st", the key of the side's FLOP counter.
        model: the side's transformer (built into its counter on the side's first run).
    """
    ends = probe.step_ends
    if side not in COUNTERS:
        COUNTERS[side] = TransformerFlops(model)
    seconds, steps = ends[-1] - ends[0], len(ends) - 1
    flops = COUNTERS[side].total(probe.timed_shapes())
    return Run(steps * batch_size / seconds, flops / seconds, flops / steps)


def run_ours(model_path: Path, data: Path, work: Path, batch_size: int, steps: int,
             tokens_per_group: Any = "auto") -> Run:
    from contralign import TextEncoder
    from contralign.training.loop import fit

    encoder = TextEncoder.from_pretrained(str(model_path))
    config = {
        "model": {"name": str(model_path)},
        "data": {"path": str(data)},
        "objective": {"name": "info_nce", "temperature": TEMPERATURE},
        "optim": {"lr": LR, "weight_decay": WEIGHT_DECAY, "warmup_ratio": WARMUP_RATIO,
                  "schedule": "linear", "max_grad_norm": MAX_GRAD_NORM},
        "train": {"max_steps": steps, "batch_size": batch_size, "seed": SEED,
                  "tokens_per_group": tokens_per_group},
        "eval": {"sts": None, "retrieval": None},
        "output_dir": str(work),
    }
    embeddings = encoder.model.embeddings  # called once per forward pass of the transformer
    with TrainingProbe(embeddings) as probe:
        fit(config, progress=False, overwrite=True, encoder=encoder)
    return timed_run("ours", encoder.model, probe, batch_size)


def run_reference(model_path: Path, pairs: Pairs, work: Path, batch_size: int, steps: int,
                  how: str) -> Run:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(model_path), device="cpu")
    loss = MultipleNegativesRankingLoss(model, scale=1.0 / TEMPERATURE)
    transformer = model[0].auto_model
    embeddings = transformer.embeddings  # ST calls transformer.forward: hooks on it never run
    with TrainingProbe(embeddings) as probe:
        if how == "trainer":
            _reference_trainer(model, loss, pairs, work, SEED, align_rng=False,
                               batch_size=batch_size, max_steps=steps)
        else:  # old_fit trains whole epochs: give it exactly the pairs of `steps` batches
            _reference_old_fit(model, loss, pairs[:steps * batch_size], SEED, align_rng=False)
    return timed_run("st", transformer, probe, batch_size)


def print_peak(peak: dict[str, Any]) -> None:
    """``flops.machine_peak``'s record, a line per library."""
    for library, record in peak["by_library"].items():
        print(f"fp32 matmul peak, {library}: {record['gflops']:.1f} GFLOP/s (square matrices, "
              f"fastest of {record['repeats']} after a warm-up, {record['threads']} threads; "
              + ", ".join(f"{n}: {g:.1f}" for n, g in record["by_size"].items()) + ")", flush=True)
    print(f"% of peak below: of {peak['gflops']:.1f} GFLOP/s, the larger", flush=True)


def summary(side: str, runs: list[Run], peak_gflops: float) -> dict[str, Any]:
    """A side's medians over its runs: pairs/s, model GFLOP/s, its share of the matmul peak and
    GFLOP per timed step, with each run's pairs/s (``<side>_runs``) and GFLOP/s."""
    gflops = statistics.median(run.flops_per_second for run in runs) / 1e9
    return {f"{side}_pairs_per_second": statistics.median(run.pairs_per_second for run in runs),
            f"{side}_gflops": gflops, f"{side}_peak_fraction": ratio(gflops, peak_gflops),
            f"{side}_gflop_per_step": statistics.median(run.flops_per_step for run in runs) / 1e9,
            f"{side}_runs": [run.pairs_per_second for run in runs],
            f"{side}_gflops_runs": [run.flops_per_second / 1e9 for run in runs]}


def measure(name: str, pairs: Pairs, data: Path, work: Path, batch_size: int, repeats: int,
            how: str, model_path: Path, peak_gflops: float) -> dict[str, Any]:
    steps = steps_for(batch_size)
    ours: list[Run] = []
    st: list[Run] = []
    for repeat in range(repeats):
        order = ("ours", "st") if repeat % 2 == 0 else ("st", "ours")
        for side in order:
            if side == "ours":
                ours.append(run_ours(model_path, data, work / "ours", batch_size, steps))
            else:
                st.append(run_reference(model_path, pairs, work / "st", batch_size, steps, how))
    result = {"data": name, "batch_size": batch_size, "steps": steps,
              **summary("ours", ours, peak_gflops), **summary("st", st, peak_gflops)}
    result["ratio"] = ratio(result["ours_pairs_per_second"], result["st_pairs_per_second"])
    print(f"{name:>5} batch {batch_size:>4}: ours {result['ours_pairs_per_second']:6.1f} pairs/s, "
          f"ST {result['st_pairs_per_second']:6.1f} pairs/s, ratio {result['ratio']:.3f}  "
          f"(runs ours {', '.join(f'{x.pairs_per_second:.1f}' for x in ours)}; ST "
          f"{', '.join(f'{x.pairs_per_second:.1f}' for x in st)})", flush=True)
    print(f"{'':>16}model: ours {result['ours_gflops']:6.1f} GFLOP/s "
          f"({100 * result['ours_peak_fraction']:.1f} % of peak, "
          f"{result['ours_gflop_per_step']:.1f} GFLOP/step), ST {result['st_gflops']:6.1f} GFLOP/s "
          f"({100 * result['st_peak_fraction']:.1f} % of peak, "
          f"{result['st_gflop_per_step']:.1f} GFLOP/step)", flush=True)
    return result


def sweep(name: str, data: Path, work: Path, batch_size: int, repeats: int, settings: list[Any],
          model_path: Path, peak_gflops: float) -> list[dict[str, Any]]:
    steps = steps_for(batch_size)
    runs: dict[str, list[Run]] = {str(s): [] for s in settings}
    for repeat in range(repeats):
        for setting in settings if repeat % 2 == 0 else settings[::-1]:
            runs[str(setting)].append(run_ours(model_path, data, work / "ours", batch_size, steps,
                                               setting))
    results = [{"data": name, "batch_size": batch_size, "tokens_per_group": setting,
                **{key.removeprefix("ours_"): value
                   for key, value in summary("ours", values, peak_gflops).items()}}
               for setting, values in runs.items()]
    for r in results:
        print(f"{name:>5} batch {batch_size:>4} tokens_per_group {r['tokens_per_group']:>5}: "
              f"{r['pairs_per_second']:6.1f} pairs/s, {r['gflops']:6.1f} GFLOP/s "
              f"({100 * r['peak_fraction']:.1f} % of peak)", flush=True)
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--data", default="sick,stsb", help="comma-separated: sick, stsb")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--reference", choices=("auto", "trainer", "old_fit"), default="auto")
    parser.add_argument("--sweep", default=None,
                        help="comma-separated tokens_per_group values (or none) for ours only")
    parser.add_argument("--peak-sizes", default=",".join(map(str, PEAK_SIZES)),
                        help="comma-separated sizes of the square fp32 matmuls timed for the peak")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    args.sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.sets = args.data.split(",")
    try:
        args.peak = [int(n) for n in args.peak_sizes.split(",")]
    except ValueError:
        parser.error(f"--peak-sizes: {args.peak_sizes!r} is not a comma-separated list of sizes")
    if min(args.peak) < 1:
        parser.error(f"--peak-sizes: {args.peak_sizes!r}: sizes must be positive")
    unknown = set(args.sets) - {"sick", "stsb"}
    if unknown:
        parser.error(f"--data: unknown set(s) {sorted(unknown)}; choose from sick, stsb")
    args.settings = None if args.sweep is None else [
        None if s == "none" else ("auto" if s == "auto" else int(s)) for s in args.sweep.split(",")]
    return args


def main() -> None:
    args = parse_args()
    root = data_dir()
    info = machine(args.threads)
    print_machine(info)
    how = reference_trainer(args.reference)
    model_path = default_model_path()
    largest = max(steps_for(b) * b for b in args.sizes)
    pairs_of = {"sick": entailment_pairs(require(root / "nli" / "sicke-train.tsv")),
                "stsb": stsb_pairs(require(root / "sts" / "stsb-en-train.tsv"))[:largest]}
    print(f"model: {model_path} (its own mean pooling, normalisation, max length); temperature "
          f"{TEMPERATURE} (scale {1 / TEMPERATURE:g}), lr {LR:g}, seed {SEED}; reference trainer: "
          f"{'SentenceTransformerTrainer' if how == 'trainer' else 'old_fit'}; median of "
          f"{args.repeats} runs; steps per run {[steps_for(b) for b in args.sizes]} (first is "
          "warm-up)")
    peak = machine_peak(args.peak)
    print_peak(peak)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="contralign-throughput-") as tmp:
        work = Path(tmp)
        for name in args.sets:
            pairs = pairs_of[name]
            data = write_pairs(pairs, work / f"{name}.jsonl")
            for size in args.sizes:
                if steps_for(size) * size > len(pairs):
                    raise SystemExit(f"benchmark: {name} has {len(pairs)} pairs, fewer than "
                                     f"{steps_for(size)} batches of {size}")
                if args.settings is not None:
                    results += sweep(name, data, work, size, args.repeats, args.settings,
                                     model_path, peak["gflops"])
                else:
                    results.append(measure(name, pairs, data, work, size, args.repeats, how,
                                           model_path, peak["gflops"]))
    if args.json:
        print_json({"benchmark": "train_throughput", "machine": info, "reference_trainer": how,
                    "threads": torch.get_num_threads(), "matmul_peak": peak,
                    "flop_count_seconds": {side: c.seconds for side, c in COUNTERS.items()},
                    "results": results})


if __name__ == "__main__":
    main()
