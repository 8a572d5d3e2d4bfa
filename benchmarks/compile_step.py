"""A training step of a recipe's image tower, eager and under ``torch.compile`` (``train.compile``).

Builds the model ``contralign train RECIPE`` builds (tower and training head), embeds two
batches of Fashion-MNIST images (the second flipped) with NT-Xent (``objectives.multiview``) at
the recipe's temperature, and times
forward, backward and AdamW's step, eagerly and through ``torch.compile(model.embed)`` as the
task compiles it; prints the seconds per step, the ratio, the first (compiling) step's time
and the machine. Views, data loading and evaluation are left out: a whole run's gain is
smaller (docs/self-supervised.md).

    python benchmarks/compile_step.py [--recipe simclr-images] [--width 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_model

from contralign.core.config import load_config
from contralign.data.idx import read_idx_labelled
from contralign.objectives.multiview import nt_xent
from contralign.training.build import build_model
from contralign.training.config import TrainConfig
from contralign.training.recipes import find_config

TRAIN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def timed(embed, model, pixels: torch.Tensor, steps: int, temperature: float
          ) -> tuple[float, float]:
    """(first step's seconds, mean seconds of the next ``steps``)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    half = pixels.shape[0] // 2

    def step() -> None:
        embedded = embed("anchor", {"pixel_values": pixels})  # (2B, D): view 1, then view 2
        loss = nt_xent(torch.stack([embedded[:half], embedded[half:]], dim=1),
                       temperature=temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return first, (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="simclr-images")
    parser.add_argument("--width", type=int, default=None, help="ResNet width (default: the "
                        "recipe's)")
    parser.add_argument("--batch", type=int, default=256, help="images per view")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    overrides = [f"data.path={os.devnull}"]
    if args.width:
        overrides.append(f"model.name=resnet18-cifar-w{args.width}")
    config = load_config(TrainConfig, find_config(Path(args.recipe)), overrides)
    images, _ = read_idx_labelled(TRAIN)  # (60000, 28, 28) uint8
    model = build_model(config).train()
    preprocess = model.anchor_tower.preprocessor
    batch = preprocess(list(np.repeat(images[: args.batch, :, :, None], 3, axis=3)))
    pixels = batch["pixel_values"]  # (B, 3, S, S)
    pixels = torch.cat([pixels, pixels.flip(-1)])  # two "views": (2B, 3, S, S)
    temperature = float(config.objective.params.get("temperature", 0.2))
    results = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build_model(config).train()
        embed = torch.compile(model.embed) if mode == "compiled" else model.embed
        first, seconds = timed(embed, model, pixels, args.steps, temperature)
        results[mode] = {"first_step_s": round(first, 2), "step_s": round(seconds, 4)}
    results["eager_over_compiled"] = round(results["eager"]["step_s"]
                                           / results["compiled"]["step_s"], 2)
    results["setting"] = {"recipe": args.recipe, "model": config.model.name,
                          "views": 2 * args.batch, "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "cpu": cpu_model(),
                          "cores": os.cpu_count()}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
