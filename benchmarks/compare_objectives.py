"""Every registered objective on real data, with the same budget: STS and geometry after training.

Three settings, each with one budget (steps, batch size, learning rate, seed 0) for all of its
objectives; every objective keeps its own registered defaults (temperatures, queue, prototypes):

* **unsup** (two augmented views of one text): the static tower ``wordllama-256`` on the distinct
  sentences of STS-B train, SICK train and MSRP train, minus any sentence that also occurs in the
  evaluation sets (STS-B dev, SICK-R trial), one per line in a temporary ``.txt``. Views:
  ``word_deletion`` (ratio 0.1) for one side, ``span_swap`` (ratio 0.2) for the other (the static
  tower has no dropout, so SimCSE's identity views would be identical). Objectives: info_nce
  (SimCSE-style), nt_xent, clip, siglip, debiased, hard_negative, decoupled, align_uniform, cwcl,
  moco, swav, whitened_cse, and one_to_k with the same two views as its K = 2 views of the text.
* **sup** (SICK-E entailment pairs: anchor = sentence1, positive = sentence2, the 1,299 rows
  labelled ENTAILMENT): the pair objectives (info_nce, clip, siglip, debiased, hard_negative,
  decoupled, align_uniform, cwcl). ``supcon`` gets labels: texts joined by an entailment pair
  share a label (the connected components of the entailment graph; most labels hold the two
  texts of one pair).
* **graded**: ``conr`` on STS-B train (anchor = sentence1, positive = sentence2, score = score, the
  pair's 0-5 similarity as the regression target of both its texts).

The supervised and graded objectives train the static tower and all-MiniLM-L6-v2 (the steps of
one SICK-E epoch, batch 64, max length 64, lr 5e-5; ``--minilm`` chooses which).

Every trained model, and each untrained tower, is scored on STS-B dev and SICK-R trial (Spearman
x 100 of cosine) and on the geometry of the STS-B dev pairs with score >= 4: alignment and
uniformity (Wang & Isola 2020, arXiv:2005.10242; lower is better). Each row also carries the mean
training loss of the first and last five steps and the relative change of the tower's weights, so
an objective whose loss does not move, or that leaves the weights where they were, shows. A run
that fails (an error, a non-finite loss) is a row saying so, not a crash.

Run: ``python benchmarks/compare_objectives.py [--quick] [--json] [--objectives a,b]
[--minilm a,b] [--out docs/objectives.md] [--threads N] [--lr-sweep 1e-3,1e-2]``

``--quick`` trains 5 steps per run and skips MiniLM (a smoke test). A full run over every objective
writes its table into ``--out`` (default ``docs/objectives.md``) between two marker comments,
leaving the hand-written text around them alone; ``--quick`` and subsets write only when ``--out``
is given. ``--lr-sweep`` trains only unsupervised info_nce at each learning rate (how the shared
static learning rate was chosen) and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from common import data_dir, machine, print_json, print_machine, read_tsv  # noqa: E402

STATIC = "wordllama-256"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SEED = 0
VIEWS: list[dict[str, Any]] = [{"name": "word_deletion", "ratio": 0.1},
                               {"name": "span_swap", "ratio": 0.2}]
STATIC_LR = 1e-2  # the best of 1e-3, 3e-3, 1e-2, 3e-2 for unsupervised info_nce (--lr-sweep)
UNSUP_BATCH, UNSUP_STEPS = 128, 80  # 10,240 texts, about half an epoch of the ~20k sentences
SUP_BATCH, SUP_STEPS = 64, 60  # about 3 epochs of the 1,299 SICK-E entailment pairs
MINILM_BATCH, MINILM_EPOCHS, MINILM_LR, MINILM_MAX_LENGTH = 64, 1, 5e-5, 64
QUICK_STEPS = 5
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.0
EVAL_BATCH = 128
POSITIVE_SCORE = 4.0  # STS-B dev pairs at least this similar are the positives of alignment

UNSUP_OBJECTIVES = ("info_nce", "nt_xent", "clip", "siglip", "debiased", "hard_negative",
                    "decoupled", "align_uniform", "cwcl", "moco", "swav", "whitened_cse",
                    "one_to_k")
PAIR_OBJECTIVES = ("info_nce", "clip", "siglip", "debiased", "hard_negative", "decoupled",
                   "align_uniform", "cwcl")
LABEL_OBJECTIVES = ("supcon",)
GRADED_OBJECTIVES = ("conr",)
MINILM_DEFAULT = PAIR_OBJECTIVES + LABEL_OBJECTIVES + GRADED_OBJECTIVES  # ~3 min a run

RESULTS_START = "<!-- compare_objectives:start -->"
RESULTS_END = "<!-- compare_objectives:end -->"


# --- data -----------------------------------------------------------------------------------------


def sentences(rows: Iterable[dict[str, str]]) -> set[str]:
    return {text.strip() for row in rows for text in (row["sentence1"], row["sentence2"])
            if text.strip()}


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def entailment_components(pairs: Sequence[tuple[str, str]]) -> list[int]:
    """A label per pair: the connected component of the graph whose edges are the pairs, so a
    text never carries two labels (a premise in several pairs joins them into one class)."""
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for a, b in pairs:
        parent[root(a)] = root(b)
    ids: dict[str, int] = {}
    return [ids.setdefault(root(a), len(ids)) for a, _ in pairs]


@dataclass
class Data:
    """The training files (written to a temporary folder) and the evaluation rows."""

    unsup: Path
    entailment: Path
    entailment_labelled: Path
    stsb_train: Path
    stsb_dev: list[dict[str, str]]
    sickr_trial: list[dict[str, str]]
    facts: dict[str, Any] = field(default_factory=dict)


def prepare_data(root: Path, folder: Path) -> Data:
    stsb_dev = read_tsv(root / "sts" / "stsb-en-dev.tsv")
    sickr_trial = read_tsv(root / "sts" / "sickr-trial.tsv")
    held_out = sentences(stsb_dev) | sentences(sickr_trial)
    train_texts: set[str] = set()
    for name in ("sts/stsb-en-train.tsv", "sts/sickr-train.tsv", "paraphrase/msrp-train.tsv"):
        train_texts |= sentences(read_tsv(root / name))
    unsup_texts = sorted(train_texts - held_out)
    unsup = folder / "unsup-sentences.txt"
    unsup.write_text("".join(text.replace("\n", " ") + "\n" for text in unsup_texts),
                     encoding="utf-8")
    pairs = [(row["sentence1"], row["sentence2"]) for row in read_tsv(root / "nli" /
             "sicke-train.tsv") if row["label"] == "ENTAILMENT"]
    labels = entailment_components(pairs)
    entailment = write_jsonl(({"anchor": a, "positive": b} for a, b in pairs),
                             folder / "sicke-entailment.jsonl")
    labelled = write_jsonl(({"anchor": a, "positive": b, "label": str(label)}
                            for (a, b), label in zip(pairs, labels, strict=True)),
                           folder / "sicke-entailment-labelled.jsonl")
    stsb_rows = read_tsv(root / "sts" / "stsb-en-train.tsv")
    stsb_train = write_jsonl(({"anchor": r["sentence1"], "positive": r["sentence2"],
                               "score": float(r["score"])} for r in stsb_rows),
                             folder / "stsb-train.jsonl")
    facts = {"unsup_sentences": len(unsup_texts),
             "unsup_dropped_as_eval_sentences": len(train_texts & held_out),
             "entailment_pairs": len(pairs), "entailment_labels": len(set(labels)),
             "stsb_train_pairs": len(stsb_rows), "stsb_dev_pairs": len(stsb_dev),
             "stsb_dev_positive_pairs": sum(float(r["score"]) >= POSITIVE_SCORE
                                            for r in stsb_dev),
             "sickr_trial_pairs": len(sickr_trial)}
    return Data(unsup, entailment, labelled, stsb_train, stsb_dev, sickr_trial, facts)


# --- runs -----------------------------------------------------------------------------------------


def tower_label(tower: str) -> str:
    return "wordllama-256" if tower == STATIC else "MiniLM-L6"


@dataclass(frozen=True)
class Run:
    """One training run: an objective in a setting on a tower, with the setting's budget."""

    objective: str
    tower: str
    setting: str
    data: str
    batch_size: int
    lr: float
    max_steps: int | None = None
    epochs: int = 1
    views: tuple[tuple[tuple[str, Any], ...], ...] = ()
    max_length: int | None = None

    @property
    def tower_label(self) -> str:
        return tower_label(self.tower)

    def config(self, output_dir: Path, threads: int | None) -> dict[str, Any]:
        model: dict[str, Any] = {"name": self.tower}
        if self.max_length is not None:
            model["max_length"] = self.max_length
        return {
            "model": model,
            "data": {"path": self.data},
            "objective": {"name": self.objective},
            "optim": {"lr": self.lr, "weight_decay": WEIGHT_DECAY, "warmup_ratio": WARMUP_RATIO},
            "train": {"epochs": self.epochs, "max_steps": self.max_steps,
                      "batch_size": self.batch_size, "seed": SEED, "log_every": 1,
                      "threads": threads},
            "views": [dict(view) for view in self.views],
            "eval": {"retrieval": None},
            "output_dir": str(output_dir),
        }


def plan(data: Data, objectives: set[str], minilm: set[str], quick: bool) -> list[Run]:
    views = tuple(tuple(view.items()) for view in VIEWS)
    unsup = Run("", STATIC, "unsup", str(data.unsup), UNSUP_BATCH, STATIC_LR, UNSUP_STEPS,
                views=views)
    sup = Run("", STATIC, "sup", str(data.entailment), SUP_BATCH, STATIC_LR, SUP_STEPS)
    runs = [replace(unsup, objective=name) for name in UNSUP_OBJECTIVES]
    runs += [replace(sup, objective=name) for name in PAIR_OBJECTIVES]
    runs += [replace(sup, objective=name, data=str(data.entailment_labelled),
                     setting="sup (labels)") for name in LABEL_OBJECTIVES]
    runs += [replace(sup, objective=name, data=str(data.stsb_train), setting="graded")
             for name in GRADED_OBJECTIVES]
    if not quick:  # the supervised objectives on MiniLM, with the steps of one SICK-E epoch
        steps = math.ceil(data.facts["entailment_pairs"] / MINILM_BATCH) * MINILM_EPOCHS
        minilm_sup = Run("", MINILM, "sup", str(data.entailment), MINILM_BATCH, MINILM_LR,
                         max_steps=steps, max_length=MINILM_MAX_LENGTH)
        by_setting = [(PAIR_OBJECTIVES, minilm_sup),
                      (LABEL_OBJECTIVES, replace(minilm_sup, data=str(data.entailment_labelled),
                                                 setting="sup (labels)")),
                      (GRADED_OBJECTIVES, replace(minilm_sup, data=str(data.stsb_train),
                                                  setting="graded"))]
        runs += [replace(run, objective=name) for names, run in by_setting
                 for name in names if name in minilm]
    runs = [run for run in runs if run.objective in objectives]
    if quick:
        runs = [replace(run, max_steps=QUICK_STEPS) for run in runs]
    return runs


# --- evaluation -----------------------------------------------------------------------------------


def build_evaluators(data: Data) -> list[Any]:
    from contralign.evaluation import GeometryEvaluator, STSEvaluator

    def sts(rows: list[dict[str, str]], name: str) -> Any:
        return STSEvaluator([r["sentence1"] for r in rows], [r["sentence2"] for r in rows],
                            [float(r["score"]) for r in rows], name=name, batch_size=EVAL_BATCH)

    positives = [r for r in data.stsb_dev if float(r["score"]) >= POSITIVE_SCORE]
    return [sts(data.stsb_dev, "stsb"), sts(data.sickr_trial, "sickr"),
            GeometryEvaluator([r["sentence1"] for r in positives],
                              [r["sentence2"] for r in positives], name="geometry",
                              batch_size=EVAL_BATCH)]


def load(tower: str, max_length: int | None = None) -> Any:
    from contralign.encoders.loading import load_tower

    return load_tower(tower, max_length=max_length) if max_length else load_tower(tower)


def scores(encoder: Any, evaluators: list[Any]) -> dict[str, float]:
    from contralign.evaluation import evaluate_all

    metrics = evaluate_all(encoder, evaluators)
    return {"stsb": metrics["stsb/spearman"], "sickr": metrics["sickr/spearman"],
            "alignment": metrics["geometry/alignment"],
            "uniformity": metrics["geometry/uniformity"]}


def weights(encoder: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in encoder.state_dict().items()}


def relative_change(before: dict[str, torch.Tensor], encoder: Any) -> float:
    """``||W - W0|| / ||W0||`` over the parameters both have, all tensors together."""
    after = encoder.state_dict()
    common = [k for k in before if k in after and after[k].shape == before[k].shape]
    diff = sum(float((after[k].float() - before[k]).pow(2).sum()) for k in common)
    base = sum(float(before[k].pow(2).sum()) for k in common)
    return math.sqrt(diff / base) if base else float("nan")


def losses_of(run_dir: Path) -> list[float]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    return [float(e["loss"]) for e in entries if "loss" in e]


def train_and_score(run: Run, evaluators: list[Any], base: dict[str, torch.Tensor],
                    folder: Path, threads: int | None) -> dict[str, Any]:
    """Train one run and score it; an error or a non-finite loss becomes the row's note."""
    from contralign.training.loop import fit

    row: dict[str, Any] = {"objective": run.objective, "tower": run.tower_label,
                           "setting": run.setting}
    run_dir = folder / f"{run.setting.split()[0]}-{run.tower_label}-{run.objective}"
    try:
        result = fit(run.config(run_dir, threads), overwrite=True,
                     progress=False)
    except Exception as err:  # noqa: BLE001 -- a failing objective is a result to report
        losses = losses_of(run_dir)
        row.update(steps=len(losses), note=f"failed: {type(err).__name__}: {err}"[:200])
        return row
    losses = losses_of(run_dir)
    row.update(steps=result.steps, seconds=result.seconds,
               loss_first=_mean(losses[:5]), loss_last=_mean(losses[-5:]))
    bad = [i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss)]
    if bad:
        row["note"] = f"non-finite loss from step {bad[0]} ({len(bad)} of {len(losses)} steps)"
    elif len(losses) > 10 and row["loss_last"] >= row["loss_first"]:
        row["note"] = "loss did not decrease"
    trained = load(str(result.model_dir))
    row["weight_change"] = relative_change(base, trained)
    try:
        row.update(scores(trained, evaluators))
    except (ValueError, FloatingPointError) as err:
        row["note"] = (row.get("note", "") + f"; evaluation failed: {err}").lstrip("; ")
    if any(isinstance(row.get(k), float) and not math.isfinite(row[k])
           for k in ("stsb", "sickr", "alignment", "uniformity")) and "note" not in row:
        row["note"] = "non-finite evaluation metric (collapsed or NaN embeddings)"
    return row


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# --- report ---------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2, signed: bool = False) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    if not math.isfinite(value):
        return "nan"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    baselines = {r["tower"]: r for r in rows if r["setting"] == "untrained"}
    head = ("| objective | tower | setting | STS-B dev ρ (Δ) | SICK-R trial ρ (Δ) | alignment ↓ "
            "| uniformity ↓ | loss first→last 5 steps | weight change | train s | note |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        base = baselines.get(r["tower"], {})

        def with_delta(key: str, row: dict[str, Any] = r, base: dict[str, Any] = base) -> str:
            value = row.get(key)
            if row["setting"] == "untrained" or not isinstance(base.get(key), float) \
                    or not isinstance(value, float):
                return fmt(value)
            return f"{fmt(value)} ({fmt(value - base[key], signed=True)})"

        loss = (f"{r['loss_first']:.4g} → {r['loss_last']:.4g}"
                if "loss_first" in r else "–")
        change = f"{r['weight_change']:.2%}" if isinstance(r.get("weight_change"), float) else "–"
        lines.append(f"| {r['objective']} | {r['tower']} | {r['setting']} | {with_delta('stsb')} "
                     f"| {with_delta('sickr')} | {fmt(r.get('alignment'), 3)} "
                     f"| {fmt(r.get('uniformity'), 3)} | {loss} | {change} "
                     f"| {fmt(r.get('seconds'), 1)} | {r.get('note', '')} |")
    return head + "\n".join(lines) + "\n"


def budget_text(minilm: Sequence[str]) -> str:
    views = ", ".join(f"{v['name']} (ratio {v['ratio']})" for v in VIEWS)
    return (
        f"- unsup: wordllama-256, {UNSUP_STEPS} steps × batch {UNSUP_BATCH}, lr {STATIC_LR:g}; "
        f"views: {views}\n"
        f"- sup / sup (labels) / graded: wordllama-256, {SUP_STEPS} steps × batch {SUP_BATCH}, "
        f"lr {STATIC_LR:g}\n"
        f"- MiniLM-L6 (all-MiniLM-L6-v2, its own mean pooling, max length "
        f"{MINILM_MAX_LENGTH}): the steps of {MINILM_EPOCHS} epoch of SICK-E × batch "
        f"{MINILM_BATCH}, lr {MINILM_LR:g}, in each objective's setting (sup, sup (labels), "
        f"graded); objectives: {', '.join(minilm) or 'none'}\n"
        f"- all: AdamW, weight decay {WEIGHT_DECAY:g}, {WARMUP_RATIO:.0%} linear warmup then "
        f"linear decay, gradient clipping 1.0, seed {SEED}; each objective with its registered "
        "default parameters\n")


def code_version() -> str:
    """The repository's commit, and whether tracked files differ from it."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"commit {commit}" + (" with uncommitted changes to tracked files" if dirty else "")


def write_doc(path: Path, command: str, info: dict[str, Any], data: Data, minilm: Sequence[str],
              rows: list[dict[str, Any]], wall: float) -> None:
    facts = data.facts
    section = (
        f"{RESULTS_START}\n"
        "Written by `benchmarks/compare_objectives.py`; rerunning it replaces this section "
        "only.\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: {info['cpu']}; {info['cores']} cores ({info['cores_usable']} usable); torch "
        f"threads {info['torch_threads']}; load average (1 min) at start "
        f"{info['load_average_1m']}; torch {info['torch']}, contralign {info['contralign']}. "
        f"Code: {info['code']}. Whole run: {wall / 60:.1f} min.\n\n"
        f"Data: {facts['unsup_sentences']:,} unsupervised sentences "
        f"({facts['unsup_dropped_as_eval_sentences']:,} dropped because they also occur in STS-B "
        f"dev or SICK-R trial); {facts['entailment_pairs']:,} SICK-E entailment pairs "
        f"({facts['entailment_labels']:,} supcon labels); {facts['stsb_train_pairs']:,} STS-B "
        f"train pairs. Evaluation: STS-B dev ({facts['stsb_dev_pairs']:,} pairs), SICK-R trial "
        f"({facts['sickr_trial_pairs']} pairs), alignment/uniformity on the "
        f"{facts['stsb_dev_positive_pairs']} STS-B dev pairs with score ≥ {POSITIVE_SCORE:g}.\n\n"
        f"Budget:\n\n{budget_text(minilm)}\n"
        f"{markdown_table(rows)}"
        f"{RESULTS_END}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if RESULTS_START in text and RESULTS_END in text:
            before, rest = text.split(RESULTS_START, 1)
            after = rest.split(RESULTS_END, 1)[1].lstrip("\n")
            path.write_text(before + section + ("\n" + after if after else ""), encoding="utf-8")
            return
        path.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")
        return
    path.write_text("# Objectives compared\n\n" + section, encoding="utf-8")


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from contralign.objectives import OBJECTIVES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_STEPS} steps per run, no MiniLM (a smoke test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--objectives", default=None,
                        help="comma-separated objectives to run (default: every registered one)")
    parser.add_argument("--minilm", default=",".join(MINILM_DEFAULT),
                        help="comma-separated supervised objectives to also train on MiniLM "
                             f"(default {','.join(MINILM_DEFAULT)}; 'all' or 'none')")
    parser.add_argument("--out", type=Path, default=None,
                        help="Markdown file for the table (default docs/objectives.md on a full "
                             "run over every objective; otherwise only when given)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's default)")
    parser.add_argument("--lr-sweep", default=None,
                        help="comma-separated learning rates: train only unsupervised info_nce "
                             "at each (how the static learning rate was chosen)")
    args = parser.parse_args(argv)
    known = set(OBJECTIVES)
    args.objective_set = set(args.objectives.split(",")) if args.objectives else known
    supervised = set(PAIR_OBJECTIVES + LABEL_OBJECTIVES + GRADED_OBJECTIVES)
    named = {"all": supervised, "none": set()}
    args.minilm_set = named[args.minilm] if args.minilm in named else set(args.minilm.split(","))
    for flag, chosen, allowed in (("--objectives", args.objective_set, known),
                                  ("--minilm", args.minilm_set, supervised)):
        unknown = sorted(chosen - allowed)
        if unknown:
            parser.error(f"{flag}: not one of these objectives: {', '.join(unknown)}; choose "
                         f"from {', '.join(sorted(allowed))}")
    try:
        args.lrs = [float(x) for x in args.lr_sweep.split(",")] if args.lr_sweep else []
    except ValueError:
        parser.error(f"--lr-sweep: not a comma-separated list of numbers: {args.lr_sweep!r}")
    full = not args.quick and not args.objectives and not args.lrs
    if args.out is None and full:
        args.out = Path(__file__).resolve().parents[1] / "docs" / "objectives.md"
    uncovered = set(OBJECTIVES) - set(UNSUP_OBJECTIVES) - set(PAIR_OBJECTIVES) \
        - set(LABEL_OBJECTIVES) - set(GRADED_OBJECTIVES)
    if uncovered:  # a newly registered objective must get a setting here
        parser.error(f"objectives without a setting in this benchmark: {sorted(uncovered)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    root = data_dir()
    started = time.perf_counter()
    info = machine(args.threads)
    info["code"] = code_version()
    print_machine(info)
    command = "python benchmarks/compare_objectives.py" + "".join(
        f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    with tempfile.TemporaryDirectory(prefix="compare-objectives-") as tmp:
        folder = Path(tmp)
        data = prepare_data(root, folder)
        evaluators = build_evaluators(data)
        runs = plan(data, args.objective_set, args.minilm_set, args.quick)
        if args.lrs:
            info_nce = [r for r in plan(data, {"info_nce"}, set(), args.quick)
                        if r.setting == "unsup"]
            runs = [replace(info_nce[0], lr=lr) for lr in args.lrs]
        towers = sorted({(r.tower, r.max_length) for r in runs}, key=lambda t: t[0] != STATIC)
        rows: list[dict[str, Any]] = []
        base_weights: dict[str, dict[str, torch.Tensor]] = {}
        for tower, max_length in towers:
            encoder = load(tower, max_length)
            base_weights[tower] = weights(encoder)
            baseline: dict[str, Any] = {"objective": "(untrained)", "tower": tower_label(tower),
                                        "setting": "untrained", **scores(encoder, evaluators)}
            rows.append(baseline)
            print(f"{baseline['tower']:>14} untrained: STS-B {baseline['stsb']:.2f}  SICK-R "
                  f"{baseline['sickr']:.2f}", flush=True)
        for i, run in enumerate(runs, start=1):
            row = train_and_score(run, evaluators, base_weights[run.tower], folder, args.threads)
            if args.lrs:
                row["note"] = (f"lr {run.lr:g}; " + row.get("note", "")).rstrip("; ")
            rows.append(row)
            print(f"[{i}/{len(runs)}] {row['objective']:>13} {row['tower']:>14} "
                  f"{row['setting']:<12} STS-B {fmt(row.get('stsb'))}  SICK-R "
                  f"{fmt(row.get('sickr'))}  {fmt(row.get('seconds'), 1)} s  "
                  f"{row.get('note', '')}", flush=True)
    wall = time.perf_counter() - started
    minilm = [name for name in PAIR_OBJECTIVES + LABEL_OBJECTIVES + GRADED_OBJECTIVES
              if name in args.minilm_set and not args.quick]
    print()
    print(f"budget ({wall / 60:.1f} min in all):\n{budget_text(minilm)}")
    print(markdown_table(rows))
    if args.out is not None and not args.lrs:
        write_doc(args.out, command, info, data, minilm, rows, wall)
        print(f"wrote {args.out}")
    failed = [f"{r['objective']} ({r['tower']}, {r['setting']}): {r['note']}" for r in rows
              if r.get("note", "").startswith(("failed", "non-finite"))]
    for line in failed:
        print(f"problem: {line}")
    if args.json:
        print_json({"machine": info, "command": command, "data": data.facts,
                    "budget": budget_text(minilm), "seconds": wall, "rows": rows})


if __name__ == "__main__":
    main()
