"""SimCLR training throughput (images/s) of contralign's trainer against lightly's example loop.

Both sides train the same network on the same images with the same batch size and thread count,
in one process:

* **ours**: ``contralign train simclr-images`` through the Python API (``training.loop.fit``):
  the bundled recipe as it ships (NT-Xent, its ``simclr`` views and input size, its training
  head, AdamW with its schedule, ``drop_last``), with ``model.name``, ``data.path``,
  ``train.batch_size``, ``train.threads``, ``train.num_workers`` and ``train.max_steps`` set
  from the flags and the dev evaluation left out (it is not training).
* **lightly**: the loop of lightly's SimCLR example (``examples/pytorch/simclr.py``): a torch
  ``DataLoader`` (shuffled, ``drop_last``) over a dataset whose transform is lightly's
  ``SimCLRTransform`` with the recipe's view settings (input size, crop scale, jitter, grayscale,
  flip, blur; our tower's normalisation), ``model(x0)``, ``model(x1)``, ``NTXentLoss`` at the
  recipe's temperature, ``backward``, AdamW at the recipe's lr and weight decay (no schedule,
  whose cost is nil). The model is contralign's ``CifarResNet`` of the same width with lightly's
  ``ProjectionHead`` built as the recipe's head (lightly's ``SimCLRProjectionHead`` adds a
  BatchNorm after its last layer; ours has none). Everything the two sides share is read from
  the recipe, so the comparison follows it when it changes.

Data: Fashion-MNIST's 60,000 training images, ``(60000, 28, 28)`` uint8 in an ``.npz``
(``--data``; ``python benchmarks/image_recipes.py prepare --out /tmp/ir`` writes it). Our
preprocessor decodes each image to the tower's input size (grey to RGB) and crops from that;
lightly's transform crops the image (as RGB) to the same size. One image gives two views;
images/s counts images. Each side runs ``--warmup`` steps, then ``--steps`` timed ones, timed
from the end of the last warm-up step to the end of the last step by the same optimiser hook on
both sides (so loading data and building the model are outside, and view making, forward,
backward and the optimiser inside). Sides alternate over ``--repeats`` (the first side
alternates too); the median is reported, with the ratio ours / lightly (above 1: ours is
faster).

Run (the reference environment has both contralign and lightly)::

    .venv-ref/bin/python benchmarks/ssl_throughput.py [--steps 30] [--warmup 3] [--repeats 1]
        [--batch-size 256] [--threads 1] [--workers 0] [--architecture resnet18-cifar-w8]
        [--data /tmp/ir/fashion-mnist-train.npz] [--json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import machine, print_json, print_machine, ratio, require

RECIPE = "simclr-images"
SEED = 0


@contextmanager
def step_clock() -> Iterator[list[float]]:
    """``perf_counter`` at the end of every optimiser step taken inside (any optimiser)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    ends: list[float] = []
    handle = register_optimizer_step_post_hook(lambda *_: ends.append(time.perf_counter()))
    try:
        yield ends
    finally:
        handle.remove()


def images_per_second(ends: list[float], warmup: int, batch_size: int) -> float:
    """Images/s from the end of the last warm-up step to the end of the last step."""
    timed = len(ends) - warmup
    if warmup < 1 or timed < 1:
        raise SystemExit(f"benchmark: {len(ends)} steps ran; need {warmup} warm-up + >= 1")
    return timed * batch_size / (ends[-1] - ends[warmup - 1])


def recipe() -> dict[str, Any]:
    import yaml

    from contralign.training.recipes import find_config

    return dict(yaml.safe_load(find_config(RECIPE).read_text(encoding="utf-8")))


def run_ours(args: argparse.Namespace, work: Path) -> float:
    """contralign's trainer on the recipe; images/s."""
    from contralign.training.loop import fit

    config = recipe()
    config.pop("eval", None)  # the dev kNN is not training
    config["model"]["name"] = args.architecture
    config["data"]["path"] = str(args.data)
    config["train"].update(batch_size=args.batch_size, threads=args.threads, seed=SEED,
                           num_workers=args.workers, max_steps=args.warmup + args.steps)
    config["output_dir"] = str(work / "ours")
    with step_clock() as ends:
        fit(config, progress=False, overwrite=True)
    return images_per_second(ends, args.warmup, args.batch_size)


class NpzImages:
    """A map-style dataset over ``(N, H, W)`` or ``(N, H, W, 3)`` uint8 images: ``(transform(
    RGB PIL image), 0)``, as a torchvision dataset with ``transform=`` gives lightly's loop."""

    def __init__(self, images: Any, transform: Any) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index]).convert("RGB")), 0


def lightly_model(architecture: str) -> Any:
    """``CifarResNet`` of ``architecture``'s width + lightly's ``ProjectionHead`` with the
    recipe's widths and BatchNorm, as lightly's example ``SimCLR`` module composes them."""
    from lightly.models.modules.heads import ProjectionHead
    from torch import nn

    from contralign.encoders.resnet import CifarResNet, resnet_width

    width = resnet_width(architecture)
    if width is None:
        raise SystemExit(f"benchmark: --architecture {architecture} is not a CIFAR ResNet "
                         "(resnet18-cifar-wN)")
    head_config = recipe()["model"]["head"]
    widths = [8 * width, *head_config["dims"]]
    norm = bool(head_config.get("batch_norm", True))
    blocks: list[Any] = [(a, b, nn.BatchNorm1d(b) if norm else None, nn.ReLU())
                         for a, b in zip(widths[:-2], widths[1:-1], strict=True)]
    blocks.append((widths[-2], widths[-1], None, None))

    class SimCLR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = CifarResNet(width)
            self.projection_head = ProjectionHead(blocks)

        def forward(self, x: Any) -> Any:
            return self.projection_head(self.backbone(x).flatten(start_dim=1))  # (B, 128)

    return SimCLR()


def lightly_transform(config: dict[str, Any]) -> Any:
    """lightly's ``SimCLRTransform`` with the settings of the recipe's (one) ``simclr`` view:
    input size, crop scale, jitter, grayscale, flip and blur probabilities, our normalisation."""
    from lightly.transforms import SimCLRTransform

    from contralign.data.image_views import build_image_views
    from contralign.encoders.resnet import CIFAR_MEAN, CIFAR_SIZE, CIFAR_STD

    views = build_image_views(config["views"])
    if len(set(views)) != 1:
        raise SystemExit(f"benchmark: {RECIPE} has views {config['views']}; this benchmark "
                         "needs the two views of one preset")
    view = views[0]
    size = view.side(config["model"].get("image_size") or CIFAR_SIZE)
    bright, contrast, saturation, hue = view.jitter
    return SimCLRTransform(
        input_size=size, min_scale=view.scale[0], cj_prob=view.jitter_p, cj_strength=1.0,
        cj_bright=bright, cj_contrast=contrast, cj_sat=saturation, cj_hue=hue,
        random_gray_scale=view.grayscale, hf_prob=view.flip, gaussian_blur=view.blur_for(size),
        normalize={"mean": [m / 255 for m in CIFAR_MEAN], "std": [s / 255 for s in CIFAR_STD]})


def run_lightly(args: argparse.Namespace, images: Any) -> float:
    """lightly's example SimCLR loop on the same network and images; images/s."""
    import torch
    from lightly.loss import NTXentLoss

    config = recipe()
    torch.manual_seed(SEED)
    transform = lightly_transform(config)
    loader = torch.utils.data.DataLoader(NpzImages(images, transform), batch_size=args.batch_size,
                                         shuffle=True, drop_last=True, num_workers=args.workers)
    model = lightly_model(args.architecture).train()
    criterion = NTXentLoss(temperature=config["objective"]["temperature"])
    optim = config["optim"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim["lr"],
                                  weight_decay=optim["weight_decay"])
    total = args.warmup + args.steps
    with step_clock() as ends:
        for step, ((x0, x1), _) in enumerate(loader):
            loss = criterion(model(x0), model(x1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step + 1 == total:
                break
    return images_per_second(ends, args.warmup, args.batch_size)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side (median)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both sides)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (both sides)")
    parser.add_argument("--architecture", default="resnet18-cifar-w8",
                        help="a CIFAR ResNet (resnet18-cifar-wN), for both sides")
    parser.add_argument("--data", type=Path, default=Path("/tmp/ir/fashion-mnist-train.npz"))
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    if min(args.steps, args.warmup, args.repeats, args.batch_size, args.threads) < 1:
        parser.error("--steps, --warmup, --repeats, --batch-size and --threads must be >= 1")
    return args


def main() -> None:
    import lightly
    import numpy as np
    import torch

    args = parse_args()
    require(args.data)
    with np.load(args.data) as data:
        images = data["images"]  # (N, 28, 28) uint8
    if len(images) < (args.warmup + args.steps) * args.batch_size:
        raise SystemExit(f"benchmark: {args.data} has {len(images)} images, fewer than "
                         f"{args.warmup + args.steps} batches of {args.batch_size}")
    info = {**machine(args.threads), "lightly": lightly.__version__}
    print_machine(info)
    print(f"lightly {info['lightly']}; {RECIPE} on {args.architecture}, {len(images):,} images "
          f"{tuple(images.shape[1:])} from {args.data}; batch {args.batch_size}, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.workers} workers, median of "
          f"{args.repeats}", flush=True)
    config = recipe()
    print(f"recipe: model {config['model']}, views {config['views']}, objective "
          f"{config['objective']}, optim {config['optim']}", flush=True)
    runs: dict[str, list[float]] = {"ours": [], "lightly": []}
    with tempfile.TemporaryDirectory(prefix="contralign-ssl-throughput-") as tmp:
        for repeat in range(args.repeats):
            for side in ("ours", "lightly") if repeat % 2 == 0 else ("lightly", "ours"):
                value = run_ours(args, Path(tmp)) if side == "ours" else run_lightly(args, images)
                torch.set_num_threads(args.threads)  # fit sets it; the other side keeps it
                runs[side].append(value)
                print(f"  {side:>7}: {value:7.1f} images/s", flush=True)
    ours, theirs = statistics.median(runs["ours"]), statistics.median(runs["lightly"])
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    print(f"ours {ours:.1f} images/s, lightly {theirs:.1f} images/s, ratio ours/lightly "
          f"{ratio(ours, theirs):.3f} (load average (1 min) at the end {load})")
    if args.json:
        print_json({"benchmark": "ssl_throughput", "machine": info, "load_average_end": load,
                    "recipe": RECIPE, "architecture": args.architecture,
                    "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps,
                    "workers": args.workers, "ours_images_per_second": ours,
                    "lightly_images_per_second": theirs, "ratio": ratio(ours, theirs),
                    "ours_runs": runs["ours"], "lightly_runs": runs["lightly"]})


if __name__ == "__main__":
    main()
