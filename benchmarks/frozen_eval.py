"""k-NN and linear-probe accuracy of frozen image towers: the pretrained EfficientNet-Lite0 and a
randomly initialised one (same architecture, ``torch.manual_seed(0)``), on a Fashion-MNIST subset
and on a CIFAR-10 split. Each tower embeds each set once; both evaluators score those embeddings
(``contralign eval --knn --linear-probe`` gives the same figures, embedding once per evaluator).

Sets: Fashion-MNIST (Debian's ``dataset-fashion-mnist``, ``/usr/share/datasets/fashion-mnist``):
a fixed random sample (seed 0) of 10,000 of the 60,000 training images and 2,000 of the 10,000
test images (``data.labelled.sample_rows``). CIFAR-10: ``../shared/data/images/cifar10-part-a.npz``
(5 classes), per class the first 800 images for training and the next 200 for testing, the split
of docs/images.md. Also written as ``.npz`` files to ``--out`` for the CLI.

    python benchmarks/frozen_eval.py [--out /tmp/frozen-eval] [--fashion-train 10000]
        [--fashion-test 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import cifar_per_class, machine, print_machine

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_sets(out: Path, fashion_train: int, fashion_test: int) -> dict[str, tuple[Any, Any]]:
    """The labelled sets by name, as (train, test) ``LabelledImages``; CIFAR's as .npz files."""
    import numpy as np

    from contralign.data.labelled import read_labelled_images

    out.mkdir(parents=True, exist_ok=True)
    sets: dict[str, tuple[Any, Any]] = {}
    if (FASHION / "train-images-idx3-ubyte.gz").is_file():
        sets["fashion-mnist"] = (
            read_labelled_images(FASHION / "train-images-idx3-ubyte.gz", key="train",
                                 limit=fashion_train),
            read_labelled_images(FASHION / "t10k-images-idx3-ubyte.gz", key="test",
                                 limit=fashion_test))
    else:
        print(f"skipping Fashion-MNIST: {FASHION} is absent", file=sys.stderr)
    for split, skip, count in (("train", 0, 800), ("test", 800, 200)):
        images, labels, classes = cifar_per_class(count, skip)
        np.savez(out / f"cifar10-{split}.npz", images=images, labels=labels, classes=classes)
    train, test = (read_labelled_images(out / f"cifar10-{split}.npz", key=split)
                   for split in ("train", "test"))
    sets["cifar10-part-a"] = (train, test)
    return sets


def towers(out: Path) -> dict[str, Any]:
    import torch

    from contralign.encoders.image import ImageTower

    torch.manual_seed(0)
    random = ImageTower()
    random.save(out / "efficientnet-lite0-random")
    return {"efficientnet-lite0 (ImageNet)": ImageTower.from_pretrained("efficientnet-lite0"),
            "efficientnet-lite0 (random init)": random}


def measure(tower: Any, train: Any, test: Any) -> dict[str, Any]:
    from contralign.evaluation.knn import KNNEvaluator, accuracy_metrics, true_class_ranks
    from contralign.evaluation.linear_probe import LinearProbeEvaluator

    tower.eval()
    knn = KNNEvaluator(train.items, train.labels, test.items, test.labels)
    probe = LinearProbeEvaluator(train.items, train.labels, test.items, test.labels)
    start = time.perf_counter()
    train_x, test_x = knn.embed(tower)
    embedded = time.perf_counter()
    classes = len(knn.labels.classes)
    knn_hits = accuracy_metrics(true_class_ranks(knn.scores(train_x, test_x), knn.labels.test),
                                classes)
    scored = time.perf_counter()
    probe_hits = accuracy_metrics(
        true_class_ranks(probe.scores(train_x, test_x), probe.labels.test), classes)
    done = time.perf_counter()
    return {"knn_top1": float(knn_hits["top1"].mean()),
            "knn_top5": float(knn_hits["top5"].mean()) if "top5" in knn_hits else None,
            "probe_top1": float(probe_hits["top1"].mean()), "probe_c": probe.settings()["c"],
            "held_out": probe.settings()["held_out_accuracy"],
            "embed_s": embedded - start, "knn_s": scored - embedded, "probe_s": done - scored,
            "train": len(train.items), "test": len(test.items), "dim": int(train_x.shape[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/frozen-eval"))
    parser.add_argument("--fashion-train", type=int, default=10_000)
    parser.add_argument("--fashion-test", type=int, default=2_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = machine()
    if not args.json:
        print_machine(info)
    sets = write_sets(args.out, args.fashion_train, args.fashion_test)
    rows = []
    for tower_name, tower in towers(args.out).items():
        for set_name, (train, test) in sets.items():
            row = {"tower": tower_name, "set": set_name, **measure(tower, train, test)}
            rows.append(row)
            print(json.dumps(row) if args.json else
                  f"{tower_name:34s} {set_name:15s} kNN {row['knn_top1']:.3f} "
                  f"probe {row['probe_top1']:.3f} (C {row['probe_c']}) embed "
                  f"{row['embed_s']:.0f}s kNN {row['knn_s']:.1f}s probe {row['probe_s']:.1f}s",
                  flush=True)


if __name__ == "__main__":
    main()
