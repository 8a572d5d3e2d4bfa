"""Weighted k-nearest-neighbour classification of frozen embeddings.

The monitor of self-supervised image training introduced by InstDisc (Wu et al. 2018,
arXiv:1805.01978, Sec. 3.4) and used by lightly's and solo-learn's benchmarks
(``lightly.utils.benchmarking.knn_predict``, ``solo.utils.knn.WeightedKNNClassifier``): every
embedding is L2-normalised; a test image's ``k`` nearest training images by cosine similarity
``s_i`` vote for their classes with weight ``exp(s_i / T)``; a class's score is the sum of its
neighbours' weights, and the image is assigned the class with the highest score. Defaults:
``k = 200``, ``T = 0.1``. ``weights="uniform"`` gives each neighbour one vote instead (the plain
majority vote of scikit-learn's ``KNeighborsClassifier``).

Ties are broken deterministically: among training images equally similar to a test image at the
``k``-th place, the lower training index is a neighbour; among classes of equal score, the lower
class index wins (``argmax``), as scikit-learn's majority vote does. Scores are computed for
``block`` test rows at a time, so memory is ``O(block x N_train)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from contralign.core.items import ImageItem
from contralign.evaluation.bootstrap import Resampling, mean_resampling
from contralign.evaluation.protocol import Encoder, Item, Sides, encode_unique
from contralign.index.exact import l2_normalize

DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.1
DEFAULT_BLOCK = 256
Weighting = Literal["exp", "uniform"]
Label = int | str


def knn_class_scores(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, classes: int, *,
    k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE,
    weights: Weighting = "exp", block: int = DEFAULT_BLOCK,
) -> np.ndarray:
    """Each test row's score for each class from its ``k`` nearest training rows.

    Args:
        train: ``(N, D)`` training embeddings (normalised here).
        train_labels: ``(N,)`` int class index of each training row, in ``[0, classes)``.
        test: ``(M, D)`` test embeddings (normalised here).
        classes: ``C``, the number of classes.
        k: neighbours per test row (at most ``N``: fewer training rows use them all).
        temperature: ``T`` of the weights ``exp(similarity / T)``.
        weights: ``"exp"`` (InstDisc) or ``"uniform"`` (one vote per neighbour).
        block: test rows scored at once.

    Returns:
        ``(M, C)`` float64 class scores (sums of neighbour weights).

    Raises:
        ValueError: empty inputs, dimensions that differ, a label out of range, ``k`` or
            ``block`` below 1, a temperature that is not positive, or an unknown weighting.
    """
    train, test, labels = _check_inputs(train, train_labels, test, classes)
    if k < 1 or block < 1:
        raise ValueError(f"k and block must be at least 1, got k={k}, block={block}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if weights not in ("exp", "uniform"):
        raise ValueError(f"weights must be 'exp' or 'uniform', got {weights!r}")
    k = min(k, len(train))
    one_hot = np.zeros((len(train), classes), dtype=np.float64)  # (N, C)
    one_hot[np.arange(len(train)), labels] = 1.0
    # The dtype of the inputs (float32 from a tower): the (block, N) similarities dominate memory.
    dtype = np.result_type(train.dtype, test.dtype, np.float32)
    train = l2_normalize(train.astype(dtype, copy=False))
    test = l2_normalize(test.astype(dtype, copy=False))
    scores = np.empty((len(test), classes), dtype=np.float64)
    for start in range(0, len(test), block):
        sims = (test[start:start + block] @ train.T).astype(np.float64)  # (b, N)
        chosen = _top_k_mask(sims, k)  # (b, N), exactly k True per row
        if weights == "exp":
            votes = np.where(chosen, np.exp(np.where(chosen, sims, 0.0) / temperature), 0.0)
        else:
            votes = chosen.astype(np.float64)
        scores[start:start + block] = votes @ one_hot  # (b, N) @ (N, C) -> (b, C)
    return scores


def _check_inputs(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray,
                  classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train, test = np.asarray(train), np.asarray(test)
    labels = np.asarray(train_labels)
    if train.ndim != 2 or test.ndim != 2 or 0 in train.shape or 0 in test.shape:
        raise ValueError(f"embeddings must be non-empty (N, D) arrays, got train {train.shape} "
                         f"and test {test.shape}")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train embeddings are {train.shape[1]}-d and test {test.shape[1]}-d")
    if labels.shape != (len(train),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"train_labels must be ({len(train)},) class indices, got "
                         f"{labels.shape} {labels.dtype}")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"train_labels must lie in [0, {classes}), got "
                         f"[{labels.min()}, {labels.max()}]")
    return train, test, labels.astype(np.int64)


def _top_k_mask(sims: np.ndarray, k: int) -> np.ndarray:
    """``(b, N)`` bool: the ``k`` largest of each row, equal values at the boundary taken in
    index order (lower index first)."""
    n = sims.shape[1]
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1:k]  # (b, 1): the k-th largest value
    above = sims > kth  # (b, N): fewer than k per row
    at = sims == kth
    room = k - above.sum(axis=1, keepdims=True)  # (b, 1): boundary places left
    return above | (at & (np.cumsum(at, axis=1) <= room)) if n > k else np.ones_like(above)


def true_class_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(M,)`` 0-based rank of each row's true class by score (ties to the lower class index);
    a label of ``-1`` (a class the classifier never saw) ranks ``C``, so it is never correct."""
    m, c = scores.shape
    known = labels >= 0
    own = scores[np.arange(m), np.where(known, labels, 0)][:, None]  # (M, 1)
    ahead = (scores > own) | ((scores == own) & (np.arange(c)[None, :] < labels[:, None]))
    return np.where(known, ahead.sum(axis=1), c).astype(np.int64)


def accuracy_metrics(ranks: np.ndarray, classes: int) -> dict[str, np.ndarray]:
    """Per-row hits: ``top1`` and, with more than 5 classes, ``top5`` (with 5 or fewer it would
    be 1 for every row)."""
    hits = {"top1": (ranks < 1).astype(np.float64)}
    if classes > 5:
        hits["top5"] = (ranks < 5).astype(np.float64)
    return hits


@dataclass(frozen=True)
class LabelledSplit:
    """Train and test labels as class indices, the classes being the training labels' distinct
    values (sorted); a test label absent from training is ``-1``.

    Attributes:
        classes: the ``C`` class labels, sorted.
        train: ``(N,)`` int64 indices into ``classes``.
        test: ``(M,)`` int64 indices, ``-1`` for an unseen class.
    """

    classes: tuple[Label, ...]
    train: np.ndarray
    test: np.ndarray

    @classmethod
    def of(cls, train_labels: Sequence[Label], test_labels: Sequence[Label]) -> LabelledSplit:
        """Index the labels (ints and strs are never equal, so a file's labels are one kind).

        Raises:
            ValueError: labels of mixed kinds (ints and strings).
        """
        kinds = {isinstance(label, str) for label in [*train_labels, *test_labels]}
        if len(kinds) > 1:
            raise ValueError("labels mix class indices and names; give one kind")
        classes = tuple(sorted(set(train_labels)))
        index = {label: i for i, label in enumerate(classes)}
        return cls(classes, np.asarray([index[x] for x in train_labels], dtype=np.int64),
                   np.asarray([index.get(x, -1) for x in test_labels], dtype=np.int64))


class FrozenFeatureClassifier:
    """What the k-NN and linear-probe evaluators share: labelled train and test items, embedded
    by the tower of their modality in one ``encode`` call (each distinct item once).

    Raises:
        ValueError: an empty split, items and labels of different lengths, or mixed labels.
    """

    primary = "top1"

    def __init__(self, train_items: Sequence[Item], train_labels: Sequence[Label],
                 test_items: Sequence[Item], test_labels: Sequence[Label], *, name: str,
                 batch_size: int) -> None:
        for split, items, labels in (("train", train_items, train_labels),
                                     ("test", test_items, test_labels)):
            if not items or len(items) != len(labels):
                raise ValueError(f"{split}: items ({len(items)}) and labels ({len(labels)}) "
                                 f"must be equal in number, > 0")
        self.train_items, self.test_items = list(train_items), list(test_items)
        self.labels = LabelledSplit.of(list(train_labels), list(test_labels))
        self.name = name
        self.batch_size = batch_size

    def embed(self, sides: Encoder | Sides) -> tuple[np.ndarray, np.ndarray]:
        """``(N, D)`` train and ``(M, D)`` test embeddings by the tower of the items' modality
        (``sides.image`` for images, else ``sides.text``).

        Raises:
            ModalityError: the model has no tower of that modality.
        """
        sides = Sides.of(sides)
        images = all(isinstance(item, ImageItem) for item in self.train_items)
        tower = sides.image if images else sides.text
        items = [*self.train_items, *self.test_items]
        embeddings, rows = encode_unique(tower, items, self.batch_size)
        n = len(self.train_items)
        return embeddings[rows[:n]], embeddings[rows[n:]]

    def scores(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        """``(M, C)`` class scores of the test rows (the subclass's classifier)."""
        raise NotImplementedError

    def hits(self, sides: Encoder | Sides) -> dict[str, np.ndarray]:
        """Per-test-row ``(M,)`` hits of each metric."""
        train, test = self.embed(sides)
        ranks = true_class_ranks(self.scores(train, test), self.labels.test)
        return accuracy_metrics(ranks, len(self.labels.classes))

    def __call__(self, sides: Encoder | Sides) -> dict[str, float]:
        """``top1`` (and ``top5`` with more than 5 classes) accuracy on the test items."""
        return {metric: float(values.mean()) for metric, values in self.hits(sides).items()}

    def resampling(self, sides: Encoder | Sides) -> tuple[dict[str, float], list[Resampling]]:
        """The metrics and their bootstrap over test images (the classifier stays fixed)."""
        hits = self.hits(sides)
        return ({m: float(v.mean()) for m, v in hits.items()}, [mean_resampling(hits)])


class KNNEvaluator(FrozenFeatureClassifier):
    """Weighted k-NN accuracy of frozen embeddings (module docstring); primary ``top1``.

    Args:
        train_items: the ``N`` labelled items neighbours are drawn from.
        train_labels: their labels (class indices or names).
        test_items: the ``M`` items classified.
        test_labels: their labels; one absent from training counts as a miss.
        k: neighbours (default 200).
        temperature: ``T`` of ``exp(similarity / T)`` (default 0.1).
        weights: ``"exp"`` or ``"uniform"``.
        name: prefix for ``evaluate_all`` (``knn/top1``).
        batch_size: passed to the tower's ``encode``.
        block: test rows scored at once.

    Raises:
        ValueError: an empty split, lengths that differ, mixed label kinds, or a bad ``k``,
            temperature or weighting.
    """

    def __init__(self, train_items: Sequence[Item], train_labels: Sequence[Label],
                 test_items: Sequence[Item], test_labels: Sequence[Label], *,
                 k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE,
                 weights: Weighting = "exp", name: str = "knn", batch_size: int = 64,
                 block: int = DEFAULT_BLOCK) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if weights not in ("exp", "uniform"):
            raise ValueError(f"weights must be 'exp' or 'uniform', got {weights!r}")
        super().__init__(train_items, train_labels, test_items, test_labels, name=name,
                         batch_size=batch_size)
        self.k, self.temperature, self.weights, self.block = k, temperature, weights, block

    def scores(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        return knn_class_scores(train, self.labels.train, test, len(self.labels.classes),
                                k=self.k, temperature=self.temperature, weights=self.weights,
                                block=self.block)

    def settings(self) -> dict[str, Any]:
        """The protocol, for a JSON record."""
        return {"k": self.k, "temperature": self.temperature, "weights": self.weights,
                "train": len(self.train_items), "test": len(self.test_items)}
