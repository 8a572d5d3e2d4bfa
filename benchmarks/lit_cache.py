"""LiT epoch time with and without the locked-tower feature cache, same model, data and settings.

The ``lit`` recipe as it ships (EfficientNet-Lite0 locked, all-MiniLM-L6-v2 locked, a trained
linear projection of the image features into the text tower's 384-d space, the CLIP loss with a
learned temperature from 0.07, AdamW lr 1e-3, weight decay 1e-4, 5 % warmup then linear decay,
batch 256, seed 0, captions from the recipe's eight templates; the header prints which towers
have a head), trained by ``contralign.training.loop.fit`` for ``--epochs`` epochs on the first
``--per-class`` images of each class of ``../shared/data/images/cifar10-part-a.npz`` (five
classes; written to a temporary ``.npz`` with the ten class names), twice in one process:

* **cache** (our default): a locked tower's roles carry their raw items; ``FeatureCache``
  preprocesses and embeds only the items it has not seen (by item id), so every epoch after the
  first runs only the projections and the loss.
* **recompute**: the same run with the cache disabled: ``FeatureCache.features`` is replaced for
  the run by a wrapper that hands each call to a fresh, empty ``FeatureCache``, so every row of
  every batch is preprocessed and embedded again, through the same code (same preprocessing,
  same eval-mode forward in groups of rows) as a cache miss. This is what open_clip's LiT does
  every epoch: ``CLIP.lock_image_tower`` only turns the tower's gradients off (and optionally its
  BatchNorm statistics), and ``open_clip_train`` runs the locked tower's forward on every batch;
  open_clip is not run here, the "recompute" column stands for it.

Timing: ``loop._step`` (one optimiser step: embed, loss, backward, clipping, AdamW) is wrapped
to note when each step starts and ends and its loss. Epoch 1 = end of its last step − start of
its first step (the first batch's collation and model loading are outside); epoch e > 1 = end of
its last step − end of the previous epoch's last step (collation inside). images/s = the epoch's
images / its time. Before the runs, a few images and captions go through fresh towers,
so neither run pays the one-time kernel set-up.

Agreement: both runs see the same batches and captions (same seed) and locked towers run in eval
mode, so their losses and final trainable weights (the heads and the log logit scale) must agree
up to float rounding (feature rows computed beside other rows may round differently).

Run: ``python benchmarks/lit_cache.py [--per-class 100] [--epochs 3] [--first cache|recompute]
[--threads N] [--json]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    cifar_per_class,
    machine,
    median,
    print_json,
    print_machine,
    ratio,
)

MODES = ("cache", "recompute")
LOSS_TOLERANCE = 1e-4  # largest |loss difference| still called float rounding
WEIGHT_TOLERANCE = 1e-4  # largest relative weight difference still called float rounding
WARM_UP_ROWS = 16


def write_subset(per_class: int, folder: Path) -> tuple[Path, int]:
    """The subset as an ``.npz`` with ``images``, ``labels`` and ``classes``; its path and size."""
    images, labels, classes = cifar_per_class(per_class)
    path = folder / f"cifar-{per_class}-per-class.npz"
    np.savez(path, images=images, labels=labels, classes=classes)
    return path, len(labels)


def lit_config(data: Path, out: Path, epochs: int, threads: int | None) -> dict[str, Any]:
    """The bundled ``lit`` recipe with the data, epochs, output folder (and threads) set."""
    import yaml

    from contralign.training.recipes import find_config

    config = yaml.safe_load(find_config("lit").read_text(encoding="utf-8"))
    config["data"]["path"] = str(data)
    config["train"].update(epochs=epochs, log_every=10**6)
    if threads:
        config["train"]["threads"] = threads
    config["output_dir"] = str(out)
    return config


def describe(config: dict[str, Any]) -> str:
    """The towers, which are locked, which have a head, and the objective."""
    towers = []
    for name, tower in config["model"]["towers"].items():
        head = tower.get("projection_dim")
        towers.append(f"{name} {tower['name']} ({'locked' if tower.get('frozen') else 'trained'}"
                      f"{f', {head}-d head' if head else ', no head'})")
    return " + ".join(towers) + f", objective {config['objective']['name']}"


@contextmanager
def recording() -> Iterator[dict[str, Any]]:
    """Within the block, ``fit``'s steps note their start, end and loss, and the task."""
    from contralign.training import loop

    original = loop._step
    record: dict[str, Any] = {"starts": [], "ends": [], "losses": [], "task": None}

    def step(task: Any, batch: Any, *args: Any) -> dict[str, float]:
        record["task"] = task
        record["starts"].append(time.perf_counter())
        losses = original(task, batch, *args)
        record["ends"].append(time.perf_counter())
        record["losses"].append(float(losses["loss"]))
        return losses

    loop._step = step
    try:
        yield record
    finally:
        loop._step = original


@contextmanager
def cache_disabled(disabled: bool) -> Iterator[None]:
    """Within the block (when ``disabled``), every ``FeatureCache.features`` call computes all
    its rows: it is handed to a fresh, empty cache, so nothing is ever found."""
    if not disabled:
        yield
        return
    from contralign.encoders.model import FeatureCache

    original = FeatureCache.features

    def recompute(self: FeatureCache, tower: Any, inputs: Any, keys: Any) -> Any:
        return original(FeatureCache(), tower, inputs, keys)

    FeatureCache.features = recompute  # type: ignore[method-assign]
    try:
        yield
    finally:
        FeatureCache.features = original  # type: ignore[method-assign]


def warm_up(config: dict[str, Any], data: Path) -> None:
    """A few images and captions through fresh towers: kernels and thread pools set up."""
    import torch

    from contralign.core.items import ImageItem
    from contralign.training.build import build_tower
    from contralign.training.config import TowerConfig

    with np.load(data) as arrays:
        items = [ImageItem.from_array(a, data, row)
                 for row, a in enumerate(arrays["images"][:WARM_UP_ROWS])]
    towers = config["model"]["towers"]
    image = build_tower(TowerConfig.model_validate(towers["image"])).eval()
    text = build_tower(TowerConfig.model_validate(towers["text"])).eval()
    with torch.no_grad():
        image.features(image.preprocess(items))
        text.features(text.preprocess(["a photo of a cat."] * WARM_UP_ROWS))


def run(mode: str, data: Path, folder: Path, args: argparse.Namespace,
        steps_per_epoch: int) -> dict[str, Any]:
    """One training run; its per-epoch times, losses and final trainable weights."""
    from contralign.training.loop import fit

    config = lit_config(data, folder / mode, args.epochs, args.threads)
    with cache_disabled(mode == "recompute"), recording() as record:
        fit(config, progress=False)
    starts, ends = record["starts"], record["ends"]
    epoch_ends = [ends[(e + 1) * steps_per_epoch - 1] for e in range(args.epochs)]
    seconds = [epoch_ends[0] - starts[0]] + [
        b - a for a, b in zip(epoch_ends, epoch_ends[1:], strict=False)]
    task = record["task"]
    weights = {name: p.detach().clone() for name, p in task.named_parameters()
               if p.requires_grad}
    cached = {name: len(cache.rows) for name, cache in task.model.caches.items()}
    return {"seconds": seconds, "losses": record["losses"], "weights": weights,
            "cached_items": cached}


def agreement(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Largest |loss difference| and largest relative weight difference (per tensor: max
    |a - b| / max |b|) between two runs."""
    loss = max(abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=True))
    weight = max(float((a["weights"][n] - w).abs().max() / w.abs().max())
                 for n, w in b["weights"].items())
    return {"max_loss_diff": loss, "max_relative_weight_diff": weight}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=100,
                        help="images of each of the five classes (default 100: 500 images)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--first", choices=MODES, default="cache",
                        help="the run that goes first (run both orders on a busy machine)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lit-cache-") as tmp:
        folder = Path(tmp)
        data, n_images = write_subset(args.per_class, folder)  # exits without the data
        info = machine(args.threads)
        print_machine(info)
        config = lit_config(data, folder / "unused", args.epochs, args.threads)
        batch = config["train"]["batch_size"]
        steps_per_epoch = -(-n_images // batch)  # drop_last off: a short last batch
        print(f"lit recipe: {describe(config)}; {n_images} CIFAR-10 images ({args.per_class} "
              f"per class), batch {batch} ({steps_per_epoch} steps an epoch), {args.epochs} "
              f"epochs, seed 0; {args.first} run first")
        warm_up(config, data)
        order = sorted(MODES, key=lambda mode: mode != args.first)
        results = {mode: run(mode, data, folder, args, steps_per_epoch) for mode in order}
    load_end = round(os.getloadavg()[0], 2)

    print(f"{'epoch':>5} | {'cache':>8} | {'recompute':>9} | {'cache':>9} | {'recompute':>9} "
          f"| {'speed-up':>8}")
    print(f"{'':>5} | {'s':>8} | {'s':>9} | {'images/s':>9} | {'images/s':>9} | {'':>8}")
    for epoch in range(args.epochs):
        ours, plain = (results[m]["seconds"][epoch] for m in MODES)
        print(f"{epoch + 1:>5} | {ours:8.2f} | {plain:9.2f} | {n_images / ours:9.1f} | "
              f"{n_images / plain:9.1f} | {ratio(plain, ours):7.1f}x")
    later = {m: median(results[m]["seconds"][1:]) for m in MODES} if args.epochs > 1 else {}
    if later:
        speedup = ratio(later["recompute"], later["cache"])
        print(f"later epochs (median of 2..{args.epochs}): cache {later['cache']:.3f} s, "
              f"recompute {later['recompute']:.2f} s: {speedup:.0f}x faster with the cache")
    total = {m: sum(results[m]["seconds"]) for m in MODES}
    print(f"all {args.epochs} epochs: cache {total['cache']:.1f} s, recompute "
          f"{total['recompute']:.1f} s ({ratio(total['recompute'], total['cache']):.1f}x)")
    agree = agreement(results["cache"], results["recompute"])
    ok = agree["max_loss_diff"] < LOSS_TOLERANCE and \
        agree["max_relative_weight_diff"] < WEIGHT_TOLERANCE
    print(f"agreement over {len(results['cache']['losses'])} steps: max |loss diff| "
          f"{agree['max_loss_diff']:.2e}, final trainable weights max relative diff "
          f"{agree['max_relative_weight_diff']:.2e} ({'ok' if ok else 'MISMATCH'}); losses "
          f"cache {results['cache']['losses'][0]:.4f} -> {results['cache']['losses'][-1]:.4f}, "
          f"recompute {results['recompute']['losses'][0]:.4f} -> "
          f"{results['recompute']['losses'][-1]:.4f}")
    print(f"items cached at the end (cache run): {results['cache']['cached_items']}")
    print("open_clip's LiT (lock_image_tower) recomputes the locked tower on every batch: the "
          "recompute column stands for it (not run here)")
    print(f"load average (1 min) at the end: {load_end}; timings on a busy machine are noisy")
    if args.json:
        print_json({"benchmark": "lit_cache", "machine": info, "load_average_end": load_end,
                    "images": n_images, "per_class": args.per_class, "epochs": args.epochs,
                    "batch_size": batch, "first": args.first,
                    **{f"{m}_seconds": results[m]["seconds"] for m in MODES},
                    **{f"{m}_losses": results[m]["losses"] for m in MODES},
                    "later_epoch_speedup": ratio(later["recompute"], later["cache"])
                    if later else None, **agree})


if __name__ == "__main__":
    main()
