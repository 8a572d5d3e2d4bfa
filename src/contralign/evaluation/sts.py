"""Semantic textual similarity: rank correlation between cosine similarity and gold scores.

As reported in the STS literature (e.g. Sentence-BERT, arXiv:1908.10084; SimCSE,
arXiv:2104.08821): Spearman and Pearson correlation x 100.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

from contralign.evaluation.bootstrap import Resampling
from contralign.evaluation.protocol import (
    Encoder,
    Item,
    PairRecord,
    Sides,
    encode_sides,
    record_pairs,
)
from contralign.index.exact import l2_normalize


def cosine_pairs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``x (N, D)`` and ``y (N, D)``: ``(N,)`` float64."""
    x = l2_normalize(np.asarray(x, dtype=np.float64))
    y = l2_normalize(np.asarray(y, dtype=np.float64))
    return np.einsum("nd,nd->n", x, y)


def sts_correlations(x: np.ndarray, y: np.ndarray, scores: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson correlation (x 100) of ``cos(x_i, y_i)`` with ``scores``.

    Args:
        x: ``(N, D)`` embeddings of the first sentences.
        y: ``(N, D)`` embeddings of the second sentences.
        scores: ``N`` gold similarity scores (any scale: correlations ignore it).

    Returns:
        ``{"spearman": ..., "pearson": ...}``.
    """
    return correlations(cosine_pairs(x, y), np.asarray(scores, dtype=np.float64))


def correlations(similarity: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson correlation (x 100) of ``similarity (N,)`` with ``gold (N,)``."""
    spearman = stats.spearmanr(similarity, gold).statistic
    pearson = stats.pearsonr(similarity, gold).statistic
    return {"spearman": 100.0 * float(spearman), "pearson": 100.0 * float(pearson)}


class STSEvaluator:
    """Spearman/Pearson (x 100) of cosine similarity against gold scores; primary ``spearman``.

    ``sentences1`` are embedded by the query tower, ``sentences2`` by the document tower; each
    distinct sentence once per tower, even when it occurs in many pairs.

    Args:
        sentences1: ``N`` first sentences (items of the query tower's modality).
        sentences2: ``N`` second sentences (items of the document tower's modality).
        scores: ``N`` gold scores.
        name: prefix for ``evaluate_all`` (``sts/spearman``).
        batch_size: passed to each tower's ``encode``.

    Raises:
        ValueError: lengths differ, fewer than 2 pairs, or the scores are constant.
    """

    primary = "spearman"

    def __init__(
        self,
        sentences1: Sequence[Item],
        sentences2: Sequence[Item],
        scores: Sequence[float],
        name: str = "sts",
        batch_size: int = 32,
    ) -> None:
        if not len(sentences1) == len(sentences2) == len(scores):
            raise ValueError(
                f"sentences1 ({len(sentences1)}), sentences2 ({len(sentences2)}) and scores "
                f"({len(scores)}) differ in length"
            )
        if len(scores) < 2:
            raise ValueError(f"STS needs at least 2 pairs (got {len(scores)})")
        if len(set(scores)) < 2:
            raise ValueError("scores: all equal, so no correlation is defined")
        self.sentences1 = list(sentences1)
        self.sentences2 = list(sentences2)
        self.scores = [float(s) for s in scores]
        self.name = name
        self.batch_size = batch_size

    def __call__(self, sides: Encoder | Sides) -> dict[str, float]:
        """Embed the sentences (one encoder: both sides) and return ``{"spearman",
        "pearson"}``."""
        embeddings, first, second = encode_sides(
            Sides.of(sides), self.sentences1, self.sentences2, self.batch_size
        )
        return sts_correlations(embeddings[first], embeddings[second], self.scores)

    def resampling(self, sides: Encoder | Sides) -> tuple[dict[str, float], list[Resampling]]:
        """The metrics and their bootstrap over pairs (``evaluation.bootstrap``): the cosine of
        every pair is computed once; a resample recomputes only the correlations."""
        embeddings, first, second = encode_sides(
            Sides.of(sides), self.sentences1, self.sentences2, self.batch_size
        )
        similarity = cosine_pairs(embeddings[first], embeddings[second])  # (N,)
        gold = np.asarray(self.scores, dtype=np.float64)  # (N,)

        def score(indices: np.ndarray) -> dict[str, float]:
            with warnings.catch_warnings():  # a resample of equal scores: NaN, left out
                warnings.simplefilter("ignore", stats.ConstantInputWarning)
                return correlations(similarity[indices], gold[indices])

        return correlations(similarity, gold), [Resampling(len(gold), score)]


def sts_from_records(
    records: Sequence[PairRecord], name: str = "sts", batch_size: int = 32
) -> STSEvaluator:
    """An ``STSEvaluator`` over records with ``anchor``, ``positive`` and ``score``.

    Raises:
        ValueError: a record lacks a positive or a score (the message names its line).
    """
    anchors, positives, scores = record_pairs(records, with_score=True)
    return STSEvaluator(anchors, positives, scores, name=name, batch_size=batch_size)
