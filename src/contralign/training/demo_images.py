"""The image–text demo: LiT on an ``.npz`` of labelled images (``contralign demo --images``).

Splits the file per class into a train and a held-out test part (a fixed seed), trains the
``lit`` recipe (EfficientNet-Lite0 and all-MiniLM-L6-v2 locked, their projections and the
temperature trained, captions from class names), and reports zero-shot accuracy on the test
images against the prompts of every class name in the file (classes absent from the images
included), the modality gap before and after, and a text -> image search over the test images.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contralign.core.config import load_config
from contralign.core.errors import DataError
from contralign.core.outputs import RUN, check_output_folder
from contralign.data import DataConfig, load_records
from contralign.data.arrays import npz_names
from contralign.encoders.loading import load_model
from contralign.encoders.model import AlignmentModel
from contralign.evaluation import GeometryEvaluator, Sides, zero_shot_from_records
from contralign.index import build_index
from contralign.training.build import build_model
from contralign.training.config import TrainConfig
from contralign.training.loop import RunResult, fit, seed_everything
from contralign.training.recipes import find_config

SPLIT_SEED = 0
DEMO_QUERIES = ("a photo of a bird", "a photo of a deer")


@dataclass
class ImageDemoResult:
    before: dict[str, float]
    after: dict[str, float]
    run: RunResult
    classes: list[str]
    train_images: int
    test_images: int
    hits: dict[str, list[tuple[str, float]]]  # query -> (label, cosine) of the top images


def run_image_demo(data: str | Path, output_dir: str | Path = "runs/demo-images", *,
                   train_per_class: int = 200, test_per_class: int = 100, epochs: int = 20,
                   progress: bool = True) -> ImageDemoResult:
    """Split ``data``, train LiT, and evaluate and search before and after.

    Raises:
        OutputError: ``output_dir`` holds something that is not a contralign run.
        DataError: ``data`` is not an ``.npz`` of ``images``, ``labels`` and ``classes``.
    """
    run_dir = Path(output_dir)
    check_output_folder(run_dir, RUN, "--output-dir", inputs=[data], replace=True)
    classes = npz_names(data, "classes")
    if classes is None:
        raise DataError(data, None, None, "the image demo needs an .npz file with images, "
                        "labels and a classes array of class names")
    with tempfile.TemporaryDirectory(prefix="contralign-demo-") as staging:
        train, test, sizes = split_per_class(Path(data), Path(staging), train_per_class,
                                             test_per_class)
        config = load_config(TrainConfig, find_config("lit"), [
            f"data.path={train}", f"output_dir={run_dir}", f"train.epochs={epochs}",
            "train.log_every=5"])
        test_records = load_records(DataConfig(path=str(test))).records
        seed_everything(config.train.seed)  # the heads fit starts from
        before = _evaluate(build_model(config), test_records, classes)
        run = fit(config, overwrite=True, progress=progress)
        trained = load_model(run.model_dir)
        after = _evaluate(trained, test_records, classes)
        hits = _search(trained, test_records, classes)
    return ImageDemoResult(before, after, run, classes, *sizes, hits)


def split_per_class(data: Path, folder: Path, train_per_class: int, test_per_class: int
                    ) -> tuple[Path, Path, tuple[int, int]]:
    """Write a train and a test ``.npz`` of ``data``: per class, a fixed random draw of
    ``test_per_class`` images for the test part and of ``train_per_class`` of the others."""
    with np.load(data, allow_pickle=False) as arrays:
        images, labels, classes = arrays["images"], arrays["labels"], arrays["classes"]
    rng = np.random.RandomState(SPLIT_SEED)
    train_rows: list[int] = []
    test_rows: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        test_rows += members[:test_per_class].tolist()
        train_rows += members[test_per_class:test_per_class + train_per_class].tolist()
    paths = folder / "train.npz", folder / "test.npz"
    for path, rows in zip(paths, (sorted(train_rows), sorted(test_rows)), strict=True):
        np.savez(path, images=images[rows], labels=labels[rows], classes=classes)
    return paths[0], paths[1], (len(train_rows), len(test_rows))


def _evaluate(model: AlignmentModel, records: list[Any], classes: list[str]) -> dict[str, float]:
    """Zero-shot accuracy on the test images and the modality gap of (image, caption) pairs."""
    from contralign.evaluation import evaluate_all

    sides = Sides(model.side("anchor"), model.side("positive"))
    images = [record.anchor for record in records]
    captions = [f"a photo of a {classes[int(record.label)]}." for record in records]
    model.eval()
    return evaluate_all(sides, [zero_shot_from_records(records, classes),
                                GeometryEvaluator(images, captions, name="geometry")])


def _search(model: AlignmentModel, records: list[Any], classes: list[str]
            ) -> dict[str, list[tuple[str, float]]]:
    """The test images' labels nearest to each demo query (text through the text tower)."""
    sides = Sides(model.side("anchor"), model.side("positive"))
    index = build_index(sides.image.encode([record.anchor for record in records], batch_size=32))
    scores, rows = index.search(sides.text.encode(list(DEMO_QUERIES), batch_size=32), 5)
    return {query: [(classes[int(records[row].label)], float(score))
                    for score, row in zip(scores[q], rows[q], strict=True)]
            for q, query in enumerate(DEMO_QUERIES)}
