"""Dev sets evaluated during and after training, and the sample of dev pairs whose embeddings the
run keeps at each evaluation (``training.monitor``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contralign.core.items import ImageItem
from contralign.data.labelled import sample_rows
from contralign.encoders.model import AlignmentModel
from contralign.evaluation import (
    Item,
    KNNEvaluator,
    LinearProbeEvaluator,
    Sides,
    bitext_from_records,
    evaluate_all,
    evaluate_with_intervals,
    geometry_from_records,
    geometry_from_sts,
    read_bitext,
    read_pairs,
    retrieval_from_records,
    sts_from_records,
)
from contralign.training.config import EvalConfig, KNNConfig, LinearProbeConfig

SAMPLE_PAIRS = 512  # dev pairs embedded at each evaluation (diagnostics/step-N.npz)


@dataclass(frozen=True)
class DevSample:
    """A fixed sample of dev pairs, in order, whose embeddings are kept at each evaluation.

    Attributes:
        source: the config key the pairs come from (``eval.retrieval``, ``eval.sts``,
            ``eval.bitext``).
        anchors: ``n`` items embedded by the anchor's tower.
        positives: ``n`` items embedded by the positive's tower.
        labels: ``n`` labels when every sampled record has one, else None.
    """

    source: str
    anchors: list[Item]
    positives: list[Item]
    labels: list[str | int] | None = None

    def manifest(self, modalities: dict[str, str]) -> dict[str, Any]:
        """``diagnostics/sample.json``: the pairs as text (an image as its path, else
        ``image <i>``) and the modality of each side."""
        return {"format": 1, "source": self.source,
                "anchors": [_as_text(item, i) for i, item in enumerate(self.anchors)],
                "positives": [_as_text(item, i) for i, item in enumerate(self.positives)],
                "labels": self.labels,
                "modalities": {"anchor": modalities.get("anchor", "text"),
                               "positive": modalities.get("positive", "text")}}


def _as_text(item: Item, index: int) -> str:
    if isinstance(item, ImageItem):
        return str(item.path) if item.path is not None else f"image {index}"
    return item


def sample_records(records: Sequence[Any], source: str,
                   limit: int = SAMPLE_PAIRS) -> DevSample:
    """At most ``limit`` records' pairs, drawn without replacement with a fixed seed and kept
    in file order (a file sorted by topic or score still gives a spread sample)."""
    chosen = [records[int(i)] for i in sample_rows(len(records), limit)]
    labels = [getattr(record, "label", None) for record in chosen]
    known = [label for label in labels if label is not None]
    return DevSample(source, [record.anchor for record in chosen],
                     [record.positive for record in chosen],
                     known if len(known) == len(labels) else None)


@dataclass
class DevSets:
    """The evaluators built from ``eval.sts``, ``eval.retrieval``, ``eval.bitext`` (records
    read once), ``eval.knn`` and ``eval.linear_probe``, and the geometry diagnostics of one of
    the pair sets: ``eval.retrieval`` if given, else ``eval.sts`` (alignment over its pairs
    scoring >= 0.8 x the top score, the rest over all sentences), else ``eval.bitext``.
    ``sample`` holds the diagnostics' sample of pairs (the STS positives only)."""

    evaluators: list[Any] = field(default_factory=list)
    sample: DevSample | None = None

    @classmethod
    def from_config(cls, config: EvalConfig, rejects_dir: Path | None = None) -> DevSets:
        """Read the dev sets; skipped records go to ``rejects_dir`` (the run directory)."""
        evaluators: list[Any] = []
        geometry: list[Any] = []
        sample = None
        size = config.batch_size
        if config.sts is not None:
            records = read_pairs(config.sts, scored=True, rejects_dir=rejects_dir, key="eval.sts")
            evaluators.append(sts_from_records(records, batch_size=size))
            geometry = [geometry_from_sts(records, batch_size=size)]
            positives = [r for r, paired in zip(records, geometry[0].paired, strict=True)
                         if paired]
            sample = sample_records(positives, "eval.sts")
        if config.retrieval is not None:
            records = read_pairs(config.retrieval, rejects_dir=rejects_dir, key="eval.retrieval")
            evaluators.append(retrieval_from_records(records, batch_size=size))
            geometry = [geometry_from_records(records, batch_size=size)]
            sample = sample_records(records, "eval.retrieval")
        if config.bitext is not None:
            records = read_bitext(config.bitext, key="eval.bitext", rejects_dir=rejects_dir)
            evaluators.append(bitext_from_records(records, batch_size=size))
            if sample is None:
                geometry = [geometry_from_records(records, batch_size=size)]
                sample = sample_records(records, "eval.bitext")
        return cls(evaluators + classifiers(config) + geometry, sample)

    def __bool__(self) -> bool:
        return bool(self.evaluators)

    def evaluate(self, model: AlignmentModel) -> dict[str, float]:
        """Every dev metric of ``model``: anchors embedded by the anchor's tower, positives by
        the positive's (a momentum copy's source stands for the copy)."""
        if not self.evaluators:
            return {}
        with evaluating(model):
            return evaluate_all(sides_of(model), self.evaluators)

    def evaluate_with_intervals(
        self, model: AlignmentModel, confidence: float
    ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
        """``evaluate`` plus bootstrap intervals at ``confidence`` (``evaluation.bootstrap``,
        its default resamples and seed)."""
        if not self.evaluators:
            return {}, {}
        with evaluating(model):
            return evaluate_with_intervals(sides_of(model), self.evaluators, confidence)

    def embed_sample(self, model: AlignmentModel, batch_size: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
        """The sample's ``(n, D)`` anchors and positives, L2-normalised float32.

        Raises:
            ValueError: there is no sample.
        """
        if self.sample is None:
            raise ValueError("no dev pairs to embed")
        with evaluating(model):
            sides = sides_of(model)
            anchors = sides.query.encode(self.sample.anchors, batch_size=batch_size)
            positives = sides.document.encode(self.sample.positives, batch_size=batch_size)
        return _unit(anchors), _unit(positives)


def classifiers(config: EvalConfig) -> list[Any]:
    """The k-NN and linear-probe evaluators of ``eval.knn`` and ``eval.linear_probe``."""
    from contralign.data.labelled import read_labelled_images

    found: list[Any] = []
    section: KNNConfig | LinearProbeConfig | None
    for key, section in (("eval.knn", config.knn), ("eval.linear_probe", config.linear_probe)):
        if section is None:
            continue
        train = read_labelled_images(section.train.path, key=f"{key}.train",
                                     limit=section.train.limit)
        test = read_labelled_images(section.test.path, key=f"{key}.test",
                                    limit=section.test.limit)
        sets = (train.items, train.labels, test.items, test.labels)
        if isinstance(section, KNNConfig):
            found.append(KNNEvaluator(*sets, k=section.k, temperature=section.temperature,
                                      batch_size=config.batch_size))
        elif section.c is not None:
            found.append(LinearProbeEvaluator(*sets, c=section.c, batch_size=config.batch_size))
        else:
            found.append(LinearProbeEvaluator(*sets, batch_size=config.batch_size))
    return found


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def sides_of(model: AlignmentModel) -> Sides:
    """The towers that embed anchors and positives."""
    return Sides(model.side("anchor"), model.side("positive"))


@contextmanager
def evaluating(model: AlignmentModel) -> Iterator[None]:
    """``model`` in eval mode for the block, back in its mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
