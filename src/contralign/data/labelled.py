"""Labelled image sets for classification evaluators (k-NN, linear probe): an ``.npz`` file of
``images`` and ``labels`` (read as zero-shot reads it, ``data.arrays``), any data file whose
anchor column holds images and with a label column, or an IDX images file with its labels file
beside it (MNIST, Fashion-MNIST: ``data.idx``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contralign.core.errors import DataError
from contralign.core.items import ImageItem
from contralign.data.idx import is_idx_path, read_idx_labelled

SAMPLE_SEED = 0


@dataclass(frozen=True)
class LabelledImages:
    """Images and their labels, in file order.

    Attributes:
        path: the file they come from.
        items: the images.
        labels: one label per image: an ``int`` (IDX) or the file's label text.
    """

    path: Path
    items: list[ImageItem]
    labels: list[int | str]


def sample_rows(total: int, limit: int | None) -> np.ndarray:
    """Rows ``0..total-1``, or a fixed random sample of ``limit`` of them (seed 0) in file order
    when there are more (files sorted by class still give every class its share).

    Raises:
        ValueError: ``limit`` below 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    rows = np.arange(total)
    if limit is not None and total > limit:
        rows = np.sort(np.random.default_rng(SAMPLE_SEED).choice(total, limit, replace=False))
    return rows


def read_labelled_images(path: str | Path, *, key: str, limit: int | None = None
                         ) -> LabelledImages:
    """Read labelled images, checked where they enter.

    Args:
        path: an ``.npz`` file (``images``, ``labels``), another data file with an image anchor
            and a label column, or an IDX images file (``…-images-idx3-ubyte[.gz]``) with its
            ``…-labels-idx1-ubyte[.gz]`` beside it.
        key: where the path was given (``--train``, ``eval.knn.train``), for messages.
        limit: at most this many images (``sample_rows``).

    Returns:
        The images and labels.

    Raises:
        DataError: a missing or malformed file, or no labels.
        ValueError: ``limit`` below 1.
    """
    path = Path(path)
    if is_idx_path(path):
        pixels, labels = read_idx_labelled(path)
        rows = sample_rows(len(pixels), limit)
        # (H, W) grey -> a read-only (H, W, 3) view, as the .npz reader gives grey images.
        items = [ImageItem.from_array(np.broadcast_to(pixels[i][:, :, None], (*pixels.shape[1:],
                                                                              3)), path, i + 1)
                 for i in rows]
        return LabelledImages(path, items, [int(labels[i]) for i in rows])
    from contralign.data.dataset import load_records  # torch, for batching: not at import time
    from contralign.data.records import DataConfig

    records = load_records(DataConfig(path=str(path), modalities={"anchor": "image"}),
                           key=key).records
    missing = next((r for r in records if getattr(r, "label", None) is None), None)
    if missing is not None:
        raise DataError(path, getattr(missing, "line", None), "label", "missing: a classifier "
                        "needs a label per image (an .npz file's labels array, or map a label "
                        "column)")
    chosen = [records[int(i)] for i in sample_rows(len(records), limit)]
    items = [record.anchor for record in chosen if isinstance(record.anchor, ImageItem)]
    if len(items) != len(chosen):  # the image modality makes every anchor an image
        raise DataError(path, None, "anchor", "expected images")
    return LabelledImages(path, items, [str(record.label) for record in chosen])
