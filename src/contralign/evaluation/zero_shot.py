"""Zero-shot classification: score images against text prompts built from class names.

As CLIP (Radford et al. 2021, arXiv:2103.00020, Sec. 3.1.4) and open_clip build their zero-shot
classifier: each class name is put into every prompt template, each prompt is embedded by the
text tower and L2-normalised, the class's prompts are averaged (a prompt ensemble) and the mean
is normalised again. An image is assigned the class whose vector has the highest cosine with its
(normalised) image embedding; ties go to the lower class index.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contralign.evaluation.bootstrap import Resampling
from contralign.evaluation.protocol import Encoder, Item, Sides, encode_unique
from contralign.index.exact import l2_normalize

# Our own short ensemble, in the spirit of CLIP's: plain, degraded and scaled photos, drawings.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {label}.",
    "a blurry photo of a {label}.",
    "a low-resolution photo of the {label}.",
    "a close-up photo of a {label}.",
    "a photo of a small {label}.",
    "a photo of a big {label}.",
    "a drawing of a {label}.",
)

Label = int | str


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Templates as a tuple, each with one or more ``{label}`` fields and no other field.

    Raises:
        ValueError: no templates, or one without ``{label}``, with another field, or malformed
            (the message quotes it).
    """
    if isinstance(templates, str) or not templates:
        raise ValueError("templates: give one or more prompt templates, e.g. "
                         "['a photo of a {label}.']")
    for template in templates:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(template)
                      if name is not None}
        except ValueError as error:
            raise ValueError(f"templates: {template!r} is not a valid template ({error})") from None
        if fields != {"label"}:
            raise ValueError(f"templates: {template!r} must hold {{label}} and no other field "
                             f"(found {sorted(fields) or 'none'})")
    return tuple(templates)


def class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """The ``C * T`` prompts, class-major: ``templates[t]`` of ``class_names[c]`` is at
    ``c * T + t``."""
    return [template.format(label=name) for name in class_names for template in templates]


def zero_shot_classifier(prompt_embeddings: np.ndarray) -> np.ndarray:
    """Class vectors from prompt embeddings: normalise each, average per class, normalise.

    Args:
        prompt_embeddings: ``(C, T, D)``: ``T`` prompt embeddings for each of ``C`` classes.

    Returns:
        ``(C, D)`` float64 unit rows (zero for a class whose prompts average to zero).
    """
    prompts = np.asarray(prompt_embeddings, dtype=np.float64)
    if prompts.ndim != 3 or 0 in prompts.shape:
        raise ValueError(f"prompt embeddings must be (C, T, D) with none empty, got "
                         f"{prompts.shape}")
    unit = l2_normalize(prompts)  # (C, T, D), each prompt on the sphere
    return l2_normalize(unit.mean(axis=1))  # (C, D)


@dataclass(frozen=True)
class ZeroShotResult:
    """The scores of one zero-shot evaluation and what follows from them.

    Attributes:
        class_names: the ``C`` class names (with distractors absent from the labels).
        labels: ``(N,)`` int64 true class index of each image.
        scores: ``(N, C)`` float64 cosine of each image with each class vector.
    """

    class_names: tuple[str, ...]
    labels: np.ndarray
    scores: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        """``(N,)`` int64 predicted class (the first of equal highest scores)."""
        return np.argmax(self.scores, axis=1).astype(np.int64)

    @property
    def true_ranks(self) -> np.ndarray:
        """``(N,)`` 0-based rank of the true class in each image's ranking of the classes
        (by score, ties to the lower class index)."""
        n, c = self.scores.shape
        own = self.scores[np.arange(n), self.labels][:, None]  # (N, 1)
        ahead = (self.scores > own) | (
            (self.scores == own) & (np.arange(c)[None, :] < self.labels[:, None])
        )  # (N, C)
        return ahead.sum(axis=1).astype(np.int64)

    def confusion_matrix(self) -> np.ndarray:
        """``(C, C)`` int64 counts: row = true class, column = predicted class."""
        c = len(self.class_names)
        matrix = np.zeros((c, c), dtype=np.int64)
        np.add.at(matrix, (self.labels, self.predictions), 1)
        return matrix

    def per_class_accuracy(self) -> dict[str, float | None]:
        """Top-1 accuracy of each class's images; ``None`` for a class with no images."""
        matrix = self.confusion_matrix()
        support = matrix.sum(axis=1)
        return {name: (float(matrix[i, i] / support[i]) if support[i] else None)
                for i, name in enumerate(self.class_names)}

    def metrics(self) -> dict[str, float]:
        """``top1``, ``top5`` (only with at least 5 classes) and ``mean_per_class`` (top-1
        accuracy averaged over the classes present in the labels)."""
        ranks = self.true_ranks
        out = {"top1": float(np.mean(ranks < 1))}
        if len(self.class_names) >= 5:
            out["top5"] = float(np.mean(ranks < 5))
        present = [v for v in self.per_class_accuracy().values() if v is not None]
        out["mean_per_class"] = float(np.mean(present))
        return out

    def details(self) -> dict[str, Any]:
        """JSON-ready: class names, the confusion matrix (rows true, columns predicted), each
        class's accuracy and number of images."""
        matrix = self.confusion_matrix()
        return {
            "class_names": list(self.class_names),
            "confusion_matrix": matrix.tolist(),
            "per_class_accuracy": self.per_class_accuracy(),
            "support": dict(zip(self.class_names, matrix.sum(axis=1).tolist(), strict=True)),
        }


class ZeroShotEvaluator:
    """Zero-shot classification of images against class prompts; primary ``top1``.

    Images are embedded by ``sides.image``, prompts by ``sides.text`` (see the module docstring
    for the classifier). Returns ``top1``, ``top5`` (at least 5 classes) and ``mean_per_class``;
    the last call's confusion matrix is in ``details`` (and the full ``result``).

    Args:
        images: ``N`` images (``ImageItem``s).
        labels: ``N`` labels: class indices into ``class_names``, or class names.
        class_names: the ``C`` classes scored; may include classes that no image has
            (distractors).
        templates: prompt templates with a ``{label}`` field; several make a prompt ensemble
            (default ``DEFAULT_TEMPLATES``).
        name: prefix for ``evaluate_all`` (``zero_shot/top1``).
        batch_size: passed to each tower's ``encode``.

    Raises:
        ValueError: no images, lengths differ, class names empty or repeated, a label that is
            not a class (the message names it), or a bad template.
    """

    primary = "top1"

    def __init__(
        self,
        images: Sequence[Item],
        labels: Sequence[Label],
        class_names: Sequence[str],
        templates: Sequence[str] | None = None,
        name: str = "zero_shot",
        batch_size: int = 32,
    ) -> None:
        if len(images) != len(labels) or not images:
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) must be equal "
                             f"in number, > 0")
        names = [str(n) for n in class_names]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"class_names: need distinct names, got {names}")
        self.images = list(images)
        self.class_names = tuple(names)
        self.labels = _label_indices(labels, self.class_names)
        self.templates = check_templates(DEFAULT_TEMPLATES if templates is None else templates)
        self.name = name
        self.batch_size = batch_size
        self.result: ZeroShotResult | None = None

    def classifier(self, text_tower: Encoder) -> np.ndarray:
        """``(C, D)`` unit class vectors from the prompts embedded by ``text_tower``."""
        prompts = class_prompts(self.class_names, self.templates)
        embeddings, rows = encode_unique(text_tower, prompts, self.batch_size)
        c, t = len(self.class_names), len(self.templates)
        return zero_shot_classifier(embeddings[rows].reshape(c, t, -1))  # (C, T, D) -> (C, D)

    def classify(self, sides: Encoder | Sides) -> ZeroShotResult:
        """Embed the prompts and images and score every image against every class.

        Raises:
            ModalityError: the model has no image tower or no text tower.
            ValueError: the towers' dimensions differ.
        """
        sides = Sides.of(sides)
        image_tower, text_tower = sides.image, sides.text
        classes = self.classifier(text_tower)  # (C, D)
        embeddings, rows = encode_unique(image_tower, self.images, self.batch_size)
        if embeddings.shape[1] != classes.shape[1]:
            raise ValueError(f"the image tower gives {embeddings.shape[1]}-d embeddings and the "
                             f"text tower {classes.shape[1]}-d; zero-shot needs one space")
        images = l2_normalize(embeddings.astype(np.float64))[rows]  # (N, D)
        return ZeroShotResult(self.class_names, self.labels, images @ classes.T)  # (N, C)

    def __call__(self, sides: Encoder | Sides) -> dict[str, float]:
        """Classify (keeping the result in ``self.result``) and return the metrics."""
        self.result = self.classify(sides)
        return self.result.metrics()

    def resampling(self, sides: Encoder | Sides) -> tuple[dict[str, float], list[Resampling]]:
        """The metrics and their bootstrap over images (``evaluation.bootstrap``): every image
        is scored once against the classes; a resample recomputes the accuracies of the
        resampled images (``mean_per_class`` over the classes present in the resample)."""
        self.result = self.classify(sides)
        ranks, labels = self.result.true_ranks, self.result.labels  # (N,), (N,)
        classes, top5 = len(self.class_names), len(self.class_names) >= 5

        def score(indices: np.ndarray) -> dict[str, float]:
            correct = (ranks[indices] < 1).astype(np.float64)
            out = {"top1": float(correct.mean())}
            if top5:
                out["top5"] = float(np.mean(ranks[indices] < 5))
            support = np.bincount(labels[indices], minlength=classes)
            hits = np.bincount(labels[indices], weights=correct, minlength=classes)
            out["mean_per_class"] = float(np.mean(hits[support > 0] / support[support > 0]))
            return out

        return self.result.metrics(), [Resampling(len(ranks), score)]

    @property
    def details(self) -> dict[str, Any]:
        """The last call's ``ZeroShotResult.details()`` (confusion matrix and per-class
        accuracy), JSON-ready.

        Raises:
            RuntimeError: the evaluator has not been called yet.
        """
        if self.result is None:
            raise RuntimeError(f"{self.name}: call the evaluator before reading its details")
        return self.result.details()


def _label_indices(labels: Sequence[Label], class_names: tuple[str, ...]) -> np.ndarray:
    """``(N,)`` int64 class indices of ``labels`` (indices or names).

    Raises:
        ValueError: a label out of range or not among the class names.
    """
    index_of = {name: i for i, name in enumerate(class_names)}
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        if isinstance(label, str):
            if label not in index_of:
                raise ValueError(f"labels[{i}]: {label!r} is not a class name "
                                 f"(classes: {', '.join(class_names)})")
            out[i] = index_of[label]
        elif isinstance(label, int | np.integer) and not isinstance(label, bool | np.bool_):
            if not 0 <= int(label) < len(class_names):
                raise ValueError(f"labels[{i}]: class index {int(label)} is out of range "
                                 f"[0, {len(class_names)})")
            out[i] = int(label)
        else:
            raise ValueError(f"labels[{i}]: expected a class index or name, got "
                             f"{type(label).__name__}")
    return out


def zero_shot_from_records(
    records: Sequence[Any],
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    name: str = "zero_shot",
    batch_size: int = 32,
) -> ZeroShotEvaluator:
    """A ``ZeroShotEvaluator`` over records whose ``anchor`` is an image and ``label`` its class:
    a class index, a class name, or (as records read from an ``.npz`` file's integer ``labels``
    hold it) a decimal text that is not a class name, taken as a class index.

    Args:
        class_names: the classes scored (e.g. the ``.npz`` file's ``classes``); by default the
            distinct labels, sorted, when they are all names.

    Raises:
        ValueError: no records, a record without a label (the message names its line), a
            label that is not a class, or class indices without ``class_names``.
    """
    if not records:
        raise ValueError("no records to evaluate on")
    raw: list[Label] = []
    for number, record in enumerate(records, start=1):
        label = getattr(record, "label", None)
        if label is None:
            where = f"record at line {getattr(record, 'line', number)}"
            raise ValueError(f"{where}: label: missing (zero-shot evaluation needs labels)")
        raw.append(label)
    if class_names is None:
        if not all(isinstance(label, str) and not label.isdecimal() for label in raw):
            raise ValueError("labels are class indices: give class_names")
        class_names = sorted({str(label) for label in raw})
    names = {str(n) for n in class_names}
    labels: list[Label] = [
        int(label) if isinstance(label, str) and label not in names and label.isdecimal()
        else label
        for label in raw
    ]
    return ZeroShotEvaluator([record.anchor for record in records], labels, class_names,
                             templates, name=name, batch_size=batch_size)
