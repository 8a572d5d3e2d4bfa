"""The image–text recipes on one CIFAR-10 split: zero-shot accuracy and the modality gap before
and after training, and the minutes each took, for ``lit``, ``siglip`` and ``clip``.

Split: ``../shared/data/images/cifar10-part-a.npz`` (5 classes), per class the first 800 images
for training and the next 200 for testing (4,000 / 1,000). Zero-shot: the test images against the
prompts of all 10 CIFAR-10 class names (five are distractors), contralign's default prompt
ensemble. Modality gap (Liang et al. 2022): the distance between the centroids of the test
images' and their captions' ("a photo of a {class}.") normalised embeddings. "Before" is the
model each recipe starts from (its heads drawn with the run's seed).

    python benchmarks/image_text.py [--recipes lit,siglip,clip] [--set key=value ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from common import cifar_per_class, machine, print_machine


def evaluate(model: Any, records: list[Any], classes: list[str]) -> dict[str, float]:
    from contralign.evaluation import GeometryEvaluator, Sides, evaluate_all, zero_shot_from_records

    model.eval()
    sides = Sides(model.side("anchor"), model.side("positive"))
    captions = [f"a photo of a {classes[int(r.label)]}." for r in records]
    return evaluate_all(sides, [zero_shot_from_records(records, classes),
                                GeometryEvaluator([r.anchor for r in records], captions)])


def run_recipe(name: str, train: Path, test_records: list[Any], classes: list[str],
               folder: Path, overrides: list[str]) -> dict[str, Any]:
    from contralign.core.config import load_config
    from contralign.encoders.loading import load_model
    from contralign.training.build import build_model
    from contralign.training.config import TrainConfig
    from contralign.training.loop import fit, seed_everything
    from contralign.training.recipes import find_config

    config = load_config(TrainConfig, find_config(name), [
        f"data.path={train}", f"output_dir={folder / name}", *overrides])
    seed_everything(config.train.seed)
    before = evaluate(build_model(config), test_records, classes)
    started = time.perf_counter()
    result = fit(config, progress=False)
    minutes = (time.perf_counter() - started) / 60
    after = evaluate(load_model(result.model_dir), test_records, classes)
    return {"before": before, "after": after, "minutes": minutes, "steps": result.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="lit,siglip,clip")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import numpy as np

    from contralign.data import DataConfig, load_records

    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="contralign-images-") as tmp:
        folder = Path(tmp)
        for part, (per_class, skip) in {"train": (800, 0), "test": (200, 800)}.items():
            images, labels, classes = cifar_per_class(per_class, skip)
            np.savez(folder / f"{part}.npz", images=images, labels=labels, classes=classes)
        names = [str(c) for c in classes]
        test = load_records(DataConfig(path=str(folder / "test.npz"))).records
        for name in args.recipes.split(","):
            results[name] = run_recipe(name, folder / "train.npz", test, names, folder,
                                       args.overrides)
            if not args.json:
                print(name, json.dumps(results[name]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print_machine(results["machine"])
    print(f"{'recipe':8} {'top-1 before':>13} {'top-1 after':>12} {'top-5 after':>12} "
          f"{'gap before':>11} {'gap after':>10} {'minutes':>8}")
    for name in args.recipes.split(","):
        r = results[name]
        print(f"{name:8} {r['before']['zero_shot/top1']:13.3f} {r['after']['zero_shot/top1']:12.3f}"
              f" {r['after']['zero_shot/top5']:12.3f} {r['before']['geometry/modality_gap']:11.3f}"
              f" {r['after']['geometry/modality_gap']:10.3f} {r['minutes']:8.1f}")


if __name__ == "__main__":
    main()
