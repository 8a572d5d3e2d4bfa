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
        [--architecture resnet18-cifar-w16] [--projection-dim N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FASHION = Path("/usr/share/datasets/fashion-mnist")
TRAIN, TEST = FASHION / "train-images-idx3-ubyte.gz", FASHION / "t10k-images-idx3-ubyte.gz"


def prepare(out: Path, architecture: str, projection_dim: int | None) -> tuple[Path, Path]:
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
    suffix = f"-p{projection_dim}" if projection_dim else ""
    random = out / f"random-{architecture}{suffix}"
    ImageTower(architecture, ImageTowerConfig(projection_dim=projection_dim)).save(random)
    return data, random


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["prepare"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/image-recipes"))
    parser.add_argument("--architecture", default="resnet18-cifar-w16")
    parser.add_argument("--projection-dim", type=int, default=None)
    args = parser.parse_args()
    if not TRAIN.is_file():
        sys.exit(f"{TRAIN} is absent: apt-get install dataset-fashion-mnist")
    data, random = prepare(args.out, args.architecture, args.projection_dim)
    knn = (f"--knn --train {TRAIN} --train-limit 5000 --test {TEST} --test-limit 1000 --json")
    print(f"contralign eval {random} {knn}")
    print(f"contralign train simclr-images --data {data} -o runs/simclr-images")
    print(f"contralign eval runs/simclr-images {knn}")


if __name__ == "__main__":
    main()
