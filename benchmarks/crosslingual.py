"""Cross-lingual training on Tatoeba: accuracy of all 29 languages before and after training on
a few of them, for the ``bitext`` and ``distill-multilingual`` recipes.

Split (``contralign.evaluation.bitext.tatoeba_split``): each ``tatoeba.<lang>-eng.tsv`` holds 800
pairs (Thai 548); the last 400 are the test split, the rows before them the training split. A run
trains the recipe's tower on the training rows of the chosen languages (by default the
``--weakest`` N of the untrained tower, by the mean of both directions), all in one file with
columns ``eng`` and ``xx``, then embeds the test split of all 29 languages with the trained tower
and reports Tatoeba accuracy (cosine top-1, xx→en and en→xx) against the untrained tower's.
The issue's target: the trained languages gain, the others lose at most 1 point on average.

Embedding the 29 test splits (23,200 sentences) takes minutes on a CPU, so the work is split:

    python benchmarks/crosslingual.py before                   # the untrained tower, cached
    python benchmarks/crosslingual.py run NAME RECIPE [--langs a,b | --weakest 5]
        [--set key=value ...]                                   # train, evaluate, save as NAME
    python benchmarks/crosslingual.py table [--runs a,b]       # saved runs as markdown tables

Embeddings are cached per tower fingerprint (``benchmarks/bitext.py``'s cache, shared with it);
run results go to ``--results`` (JSON, one entry per NAME). Common options: ``--threads N``
(torch threads), ``--cache DIR``, ``--batch-size`` (encoding).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bitext import DEFAULT_CACHE, EmbeddingCache, languages, tatoeba_pairs
from common import machine, print_machine

MODEL = "multilingual-e5-small"
DEFAULT_RESULTS = DEFAULT_CACHE.parent / "bench-crosslingual" / "results.json"


def accuracy(cache: EmbeddingCache, lang: str) -> list[float]:
    """``[xx→en, en→xx]`` cosine top-1 on ``lang``'s test split."""
    from contralign.evaluation.bitext import tatoeba_accuracy

    src, tgt = cache.split(lang, "test")
    result = tatoeba_accuracy(src, tgt, scoring="cosine")
    return [result["forward_accuracy"], result["backward_accuracy"]]


def all_languages(cache: EmbeddingCache) -> dict[str, list[float]]:
    """Every language's ``[xx→en, en→xx]``, embedding (and caching) what is missing."""
    out = {}
    for lang in languages():
        out[lang] = accuracy(cache, lang)
        print(f"  {lang}: {out[lang][0]:.3f} / {out[lang][1]:.3f}", flush=True)
    return out


def weakest(before: dict[str, list[float]], n: int) -> list[str]:
    """The ``n`` languages with the lowest mean of both directions."""
    return sorted(before, key=lambda lang: (float(np.mean(before[lang])), lang))[:n]


def write_training_file(langs: list[str], path: Path) -> int:
    """The training rows of ``langs`` as one TSV (``eng``, ``xx``); returns the pair count."""
    rows = [(en, xx) for lang in langs for xx, en in tatoeba_pairs(lang)[0]]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["eng", "xx"])
        writer.writerows(rows)
    return len(rows)


def train(recipe: str, data: Path, folder: Path, overrides: list[str]) -> tuple[Any, Any]:
    """Train ``recipe`` on ``data``; returns ``(fit result, config)``."""
    from contralign.core.config import load_config
    from contralign.training.config import TrainConfig
    from contralign.training.loop import fit
    from contralign.training.recipes import find_config

    config = load_config(TrainConfig, find_config(recipe), [
        f"data.path={data}", f"output_dir={folder}", *overrides])
    return fit(config, progress=False, overwrite=True), config


def trained_tower(result: Any, config: Any) -> Any:
    """The tower that embeds the anchors of the trained model (a distillation's student)."""
    from contralign.encoders.loading import load_tower

    name = config.model.roles.get("anchor") if config.model.towers else None
    return load_tower(str(result.model_dir), tower=name)


def summary(before: dict[str, list[float]], after: dict[str, list[float]],
            trained: list[str]) -> dict[str, Any]:
    """Mean accuracy (both directions averaged) of the trained and the other languages."""
    def mean(table: dict[str, list[float]], langs: list[str]) -> float:
        return float(np.mean([np.mean(table[lang]) for lang in langs]))

    others = [lang for lang in before if lang not in trained]
    out = {}
    for group, langs in (("trained", trained), ("others", others)):
        out[group] = {"before": mean(before, langs), "after": mean(after, langs)}
        out[group]["delta"] = out[group]["after"] - out[group]["before"]
    return out


def command_before(args: argparse.Namespace) -> dict[str, Any]:
    import contralign

    tower = contralign.load_tower(args.model)
    cache = EmbeddingCache(tower, args.cache, args.batch_size)
    print(f"untrained {args.model}: test split of every language (cache {cache.folder})")
    started = time.perf_counter()
    before = all_languages(cache)
    print(f"{cache.encoded} sentences embedded ({(time.perf_counter() - started) / 60:.1f} min)")
    return before


def command_run(args: argparse.Namespace) -> None:
    before = command_before(args)
    langs = [x for x in args.langs.split(",") if x] or weakest(before, args.weakest)
    work = args.results.parent / "runs"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        data = Path(tmp) / "train.tsv"
        pairs = write_training_file(langs, data)
        print(f"\n{args.name}: {args.recipe} on {pairs} pairs of {', '.join(langs)}; "
              f"overrides {args.overrides}", flush=True)
        info = machine(args.threads)
        result, config = train(args.recipe, data, Path(tmp) / "run", args.overrides)
        load_after = round(os.getloadavg()[0], 2)  # the machine is shared: how busy it was
        print(f"trained: {result.steps} steps in {result.seconds / 60:.1f} min (load average "
              f"{info['load_average_1m']} before, {load_after} after)", flush=True)
        tower = trained_tower(result, config)
        started = time.perf_counter()
        after = all_languages(EmbeddingCache(tower, args.cache, args.batch_size))
        evaluate_minutes = (time.perf_counter() - started) / 60
        losses = [json.loads(line)["loss"] for line in
                  (result.run_dir / "metrics.jsonl").read_text().splitlines()
                  if "loss" in json.loads(line)]
        shutil.rmtree(result.run_dir, ignore_errors=True)
    entry = {"recipe": args.recipe, "overrides": args.overrides, "trained": langs,
             "pairs": pairs, "steps": result.steps, "train_minutes": result.seconds / 60,
             "evaluate_minutes": evaluate_minutes, "loss_first_last": [losses[0], losses[-1]],
             "machine": info, "load_average_after_training": load_after, "before": before,
             "after": after, "summary": summary(before, after, langs)}
    results = load_results(args.results)
    results[args.name] = entry
    save_results(args.results, results)
    print(json.dumps({k: entry[k] for k in ("trained", "steps", "train_minutes", "summary")},
                     indent=1))


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def save_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    os.replace(tmp, path)


def pair(values: list[float]) -> str:
    return f"{values[0]:.3f} / {values[1]:.3f}"


def command_table(args: argparse.Namespace) -> None:
    results = load_results(args.results)
    names = [x for x in args.runs.split(",") if x] or list(results)
    runs = {name: results[name] for name in names}
    print("| run | recipe and settings | trained languages | pairs, steps | train min | "
          "trained: before → after (Δ) | others: before → after (Δ) |")
    print("|---|---|---|---|---:|---|---|")
    for name, run in runs.items():
        cells = [f"{run['summary'][g]['before']:.3f} → {run['summary'][g]['after']:.3f} "
                 f"({100 * run['summary'][g]['delta']:+.1f})" for g in ("trained", "others")]
        settings = " ".join([run["recipe"], *run["overrides"]])
        print(f"| {name} | `{settings}` | {', '.join(run['trained'])} | {run['pairs']}, "
              f"{run['steps']} | {run['train_minutes']:.1f} | {cells[0]} | {cells[1]} |")
    first = next(iter(runs.values()))
    print("\n| language | untrained xx→en / en→xx | " + " | ".join(runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for lang, values in first["before"].items():
        mark = "".join("†" if lang in run["trained"] else "" for run in runs.values())
        cells = [pair(run["after"][lang]) for run in runs.values()]
        print(f"| {lang}{mark[:1]} | {pair(values)} | " + " | ".join(cells) + " |")
    print()
    for name, run in runs.items():
        fell = [f"{lang} {100 * (np.mean(run['after'][lang]) - np.mean(values)):+.1f}"
                for lang, values in run["before"].items()
                if np.mean(run["after"][lang]) < np.mean(values)]
        print(f"{name}: mean of both directions fell for {', '.join(fell) or 'no language'}; "
              f"load average {run['machine']['load_average_1m']} before training, "
              f"{run.get('load_average_after_training', '?')} after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("before", "run", "table"))
    parser.add_argument("name", nargs="?", help="run: the name its results are saved under")
    parser.add_argument("recipe", nargs="?", help="run: bitext or distill-multilingual")
    parser.add_argument("--langs", default="", help="run: languages to train on")
    parser.add_argument("--weakest", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--runs", default="", help="table: the runs to show (default: all)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.command == "run" and not (args.name and args.recipe):
        parser.error("run needs NAME and RECIPE")
    print_machine(machine(args.threads))
    if args.command == "before":
        command_before(args)
    elif args.command == "run":
        command_run(args)
    else:
        command_table(args)


if __name__ == "__main__":
    main()
