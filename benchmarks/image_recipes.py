"""The self-supervised image recipes on Fashion-MNIST against a randomly initialised tower of the
same architecture: weighted kNN (k 200, T 0.1) of held-out test images against training images.

``prepare`` writes what the recipes' runs need from Debian's ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``): the 60,000 training images and labels as an ``.npz``
(``contralign train`` reads ``.npz``, not IDX), and a randomly initialised tower
(``torch.manual_seed(0)``) saved as a model folder, for ``contralign eval --knn``: the recipes'
training head is not saved, so the trained tower and the random one both give the ResNet's own
features (``--projection-dim N`` adds a saved linear head, for runs that set
``model.projection_dim``). Then, for
each recipe (the commands it prints)::

    contralign train simclr-images --data OUT/fashion-mnist-train.npz -o runs/simclr-images
    contralign eval runs/simclr-images --knn --json \\
        --train /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz --train-limit 5000 \\
        --test /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz --test-limit 1000

    python benchmarks/image_recipes.py prepare [--out /tmp/image-recipes]
        [--architecture resnet18-cifar-w8] [--image-size 28] [--projection-dim N]

``table`` does all of it for every recipe (or ``--recipes a,b``): trains each with its own
settings (``--set KEY=VALUE`` is passed to every run), times the training command, evaluates the
trained tower and the random one of the same architecture and input size by weighted kNN and a
linear probe (``contralign eval --knn --linear-probe``, training images against held-out test
images; ``--train-limit``/``--test-limit``), and prints the recipe x kNN x probe x minutes table
(Markdown) and writes it as JSON (``--json FILE``). ``full-bank`` then adds kNN with the
standard bank (all 60,000 training images against all 10,000 test images) of every trained and
random tower to that JSON and prints the table with it::

    python benchmarks/image_recipes.py table [--out /tmp/image-recipes] [--recipes ...]
        [--train-limit 10000] [--test-limit 10000] [--set train.epochs=2] --json FILE
    python benchmarks/image_recipes.py full-bank [--out /tmp/image-recipes] --json FILE
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import machine, print_machine

FASHION = Path("/usr/share/datasets/fashion-mnist")
TRAIN, TEST = FASHION / "train-images-idx3-ubyte.gz", FASHION / "t10k-images-idx3-ubyte.gz"


RECIPES = ("simclr-images", "moco-v2-images", "swav-images", "supcon-images", "dcl-images")


def prepare(out: Path, architecture: str, projection_dim: int | None,
            image_size: int | None = None) -> tuple[Path, Path]:
    """Write the training ``.npz`` and the random tower under ``out``; return their paths."""
    import numpy as np
    import torch

    from contralign.data.idx import read_idx_labelled
    from contralign.encoders.image import ImageTower, ImageTowerConfig

    out.mkdir(parents=True, exist_ok=True)
    data = out / "fashion-mnist-train.npz"
    if not data.is_file():
        images, labels = read_idx_labelled(TRAIN)  # (60000, 28, 28) uint8, (60000,) int64
        np.savez(data, images=images, labels=labels)
    torch.manual_seed(0)
    suffix = (f"-{image_size}px" if image_size else "") + (f"-p{projection_dim}"
                                                            if projection_dim else "")
    random = out / f"random-{architecture}{suffix}"
    if not random.exists():  # drawn with the same seed every time: the same tower
        ImageTower(architecture, ImageTowerConfig(projection_dim=projection_dim,
                                                  image_size=image_size)).save(random)
    return data, random


def contralign(*args: str) -> dict[str, Any]:
    """Run ``contralign ARGS --json`` (the CLI beside this Python) and return its JSON."""
    command = [str(Path(sys.executable).with_name("contralign")), *args, "--json"]
    print("+", " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def frozen_accuracy(model: Path, limits: tuple[int, int]) -> dict[str, float]:
    """kNN and linear-probe top-1 of ``model`` on Fashion-MNIST (train sample vs test sample)."""
    result = contralign("eval", str(model), "--knn", "--linear-probe",
                        "--train", str(TRAIN), "--train-limit", str(limits[0]),
                        "--test", str(TEST), "--test-limit", str(limits[1]))
    return {"knn": _top1(result["metrics"], "knn"),
            "probe": _top1(result["metrics"], "linear_probe")}


def _top1(metrics: dict[str, Any], evaluator: str) -> float:
    for key, value in metrics.items():
        if key.startswith(evaluator) and key.endswith("top1"):
            return float(value)
    raise KeyError(f"no {evaluator} top-1 in {sorted(metrics)}")


def table(out: Path, recipes: list[str], overrides: list[str],
          limits: tuple[int, int]) -> list[dict[str, Any]]:
    """Train and evaluate each recipe against its random tower; one row per recipe."""
    rows = []
    for recipe in recipes:
        run = out / "runs" / recipe
        sets = [arg for item in overrides for arg in ("--set", item)]
        start = time.perf_counter()
        trained = contralign("train", recipe, "--data", str(out / "fashion-mnist-train.npz"),
                             "-o", str(run), *sets)
        minutes = (time.perf_counter() - start) / 60
        saved = json.loads((run / "model" / "contralign.json").read_text(encoding="utf-8"))
        architecture = saved["architecture"]
        size = saved.get("config", saved).get("image_size")
        _, random = prepare(out, architecture, None, size)
        row = {"recipe": recipe, "architecture": architecture, "image_size": size,
               "steps": trained.get("steps"), "minutes": round(minutes, 2),
               "trained": frozen_accuracy(run, limits),
               "random": frozen_accuracy(random, limits)}
        row["knn_gain"] = round(100 * (row["trained"]["knn"] - row["random"]["knn"]), 1)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def full_bank(out: Path, json_path: Path) -> list[dict[str, Any]]:
    """kNN of every run of ``table`` (and its random tower) with the standard bank: all 60,000
    training images against all 10,000 test images; added to each row of ``json_path``."""
    payload = json.loads(json_path.read_text(encoding="utf-8"))
    random_knn: dict[str, float] = {}
    for row in payload["rows"]:
        _, random = prepare(out, row["architecture"], None, row["image_size"])
        if str(random) not in random_knn:
            random_knn[str(random)] = _full_knn(random)
        row["full"] = {"knn": _full_knn(out / "runs" / row["recipe"]),
                       "random_knn": random_knn[str(random)]}
        row["full"]["knn_gain"] = round(100 * (row["full"]["knn"] - row["full"]["random_knn"]), 1)
        print(json.dumps({"recipe": row["recipe"], **row["full"]}), file=sys.stderr, flush=True)
    partial = json_path.with_suffix(".partial")
    partial.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    partial.replace(json_path)
    return list(payload["rows"])


def _full_knn(model: Path) -> float:
    result = contralign("eval", str(model), "--knn", "--train", str(TRAIN), "--test", str(TEST))
    return _top1(result["metrics"], "knn")


def print_table(rows: list[dict[str, Any]], limits: tuple[int, int]) -> None:
    print(f"\nFashion-MNIST: kNN (k 200, T 0.1) and linear probe, {limits[0]:,} training images "
          f"vs {limits[1]:,} test images; random = the same architecture, untrained\n")
    full = all("full" in r for r in rows)
    extra = (" kNN 60k / 10k | random | gain |", "---:|---:|---:|") if full else ("", "")
    print("| recipe | tower | steps | train min | kNN | kNN random | gain (points) | probe | "
          f"probe random |{extra[0]}")
    print(f"|---|---|---:|---:|---:|---:|---:|---:|---:|{extra[1]}")
    for r in rows:
        t, z = r["trained"], r["random"]
        line = (f"| `{r['recipe']}` | {r['architecture']} @ {r['image_size']} px | {r['steps']} | "
                f"{r['minutes']:.1f} | {t['knn']:.3f} | {z['knn']:.3f} | {r['knn_gain']:+.1f} | "
                f"{t['probe']:.3f} | {z['probe']:.3f} |")
        if full:
            f = r["full"]
            line += f" {f['knn']:.3f} | {f['random_knn']:.3f} | {f['knn_gain']:+.1f} |"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["prepare", "table", "full-bank"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/image-recipes"))
    parser.add_argument("--architecture", default="resnet18-cifar-w8")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--projection-dim", type=int, default=None)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--train-limit", type=int, default=10_000)
    parser.add_argument("--test-limit", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=None, dest="json_path")
    args = parser.parse_args()
    if not TRAIN.is_file():
        sys.exit(f"{TRAIN} is absent: apt-get install dataset-fashion-mnist")
    limits = (args.train_limit, args.test_limit)
    if args.command == "full-bank":
        if args.json_path is None:
            sys.exit("full-bank: --json FILE (the table's) is needed")
        print_table(full_bank(args.out, args.json_path), limits)
        return
    if args.command == "table":
        info = machine()
        print_machine(info)
        prepare(args.out, args.architecture, None, args.image_size)
        rows = table(args.out, args.recipes.split(","), args.overrides, limits)
        print_table(rows, limits)
        if args.json_path:
            payload = {"machine": info, "limits": limits, "overrides": args.overrides,
                       "rows": rows}
            partial = args.json_path.with_suffix(".partial")
            partial.write_text(json.dumps(payload, indent=1), encoding="utf-8")
            partial.replace(args.json_path)
        return
    data, random = prepare(args.out, args.architecture, args.projection_dim, args.image_size)
    knn = (f"--knn --train {TRAIN} --train-limit 5000 --test {TEST} --test-limit 1000 --json")
    print(f"contralign eval {random} {knn}")
    print(f"contralign train simclr-images --data {data} -o runs/simclr-images")
    print(f"contralign eval runs/simclr-images {knn}")


if __name__ == "__main__":
    main()
