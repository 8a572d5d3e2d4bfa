"""Bootstrap confidence intervals for evaluation metrics (Efron & Tibshirani 1993, ch. 13:
percentile intervals).

An evaluator that supports intervals exposes ``resampling(sides) -> (metrics, [Resampling])``:
it embeds its items once, computes its usual metrics, and returns one ``Resampling`` per group
of units it is averaged or correlated over (STS and geometry: the pairs; retrieval: the queries,
one group per direction for image<->text; bitext: the pairs; zero-shot: the images). Each
``Resampling`` maps a sample of unit indices (drawn with replacement) to the metrics recomputed
on it, from the stored embeddings or per-unit values, so a thousand resamples cost only the
scoring, never the encoding.

Draws are reproducible: evaluator ``name`` resamples with
``numpy.random.default_rng([seed, zlib.crc32(name)])``, group after group, each resample one
``rng.integers(0, units, units)`` call; so an evaluator's intervals do not depend on which other
evaluators ran beside it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from contralign.evaluation.protocol import Encoder, Evaluator, Sides, check_distinct_names

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
BATCH_RESAMPLES = 64  # resamples scored at once by a Resampling's score_batch
Interval = tuple[float, float]


@dataclass(frozen=True)
class Resampling:
    """Metrics as a function of a sample of ``units`` (pairs, queries, images).

    Attributes:
        units: how many units the metrics are computed over.
        score: ``(units,)`` int64 indices, drawn with replacement -> ``{metric: value}``; the
            identity ``arange(units)`` gives the metrics themselves.
        score_batch: optional, the same for ``(R, units)`` indices at once -> ``{metric: (R,)
            values}``, for metrics that are cheaper in matrix products over many resamples
            (uniformity); used instead of ``score`` when given.
    """

    units: int
    score: Callable[[np.ndarray], dict[str, float]]
    score_batch: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None


@runtime_checkable
class Resamplable(Protocol):
    """An evaluator whose metrics can be bootstrapped (see the module docstring)."""

    name: str

    def resampling(self, sides: Encoder | Sides) -> tuple[dict[str, float], list[Resampling]]:
        ...


def mean_resampling(values: dict[str, np.ndarray]) -> Resampling:
    """A ``Resampling`` of metrics that are means of per-unit values.

    Args:
        values: metric -> ``(N,)`` per-unit values (a query's recall@1, a row's 0/1 accuracy).

    Raises:
        ValueError: no metrics, or value arrays of different lengths.
    """
    names = list(values)
    if not names:
        raise ValueError("mean_resampling needs at least one metric")
    table = np.stack([np.asarray(values[name], dtype=np.float64) for name in names], axis=1)

    def score(indices: np.ndarray) -> dict[str, float]:
        means = table[indices].mean(axis=0)  # (M,)
        return {name: float(value) for name, value in zip(names, means, strict=True)}

    return Resampling(len(table), score)


def percentile_interval(samples: np.ndarray, confidence: float) -> Interval | None:
    """The central ``confidence`` percentile interval of bootstrap ``samples`` (NaNs dropped:
    a resample on which the metric is undefined, such as a correlation of a constant sample).

    Returns:
        ``(lo, hi)``, or None when no sample is finite.

    Raises:
        ValueError: ``confidence`` outside ``(0, 1)``.
    """
    check_confidence(confidence)
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return None
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return float(lo), float(hi)


def check_confidence(confidence: float) -> None:
    """Raise ``ValueError`` unless ``0 < confidence < 1``."""
    if not 0.0 < confidence < 1.0:  # also rejects NaN
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_intervals(
    resamplings: Sequence[Resampling], confidence: float, *, name: str = "",
    resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
) -> dict[str, Interval]:
    """Percentile intervals of every metric of ``resamplings``.

    Args:
        resamplings: the groups of units; their metric names must be distinct.
        confidence: the coverage, e.g. 0.95.
        name: the evaluator's name (part of the seed, see the module docstring).
        resamples: bootstrap resamples per group.
        seed: the base seed.

    Returns:
        metric -> ``(lo, hi)``; a metric undefined on every resample is left out.

    Raises:
        ValueError: ``confidence`` outside ``(0, 1)`` or ``resamples < 1``.
    """
    check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    intervals: dict[str, Interval] = {}
    for group in resamplings:
        draws: dict[str, list[float]] = {}
        for start in range(0, resamples, BATCH_RESAMPLES):
            # (R, units), drawn one resample at a time so the draws do not depend on R.
            batch = np.stack([rng.integers(0, group.units, group.units)
                              for _ in range(min(BATCH_RESAMPLES, resamples - start))])
            if group.score_batch is not None:
                for metric, scored in group.score_batch(batch).items():
                    draws.setdefault(metric, []).extend(np.asarray(scored, float).tolist())
                continue
            for indices in batch:
                for metric, value in group.score(indices).items():
                    draws.setdefault(metric, []).append(value)
        for metric, drawn in draws.items():
            interval = percentile_interval(np.asarray(drawn), confidence)
            if interval is not None:
                intervals[metric] = interval
    return intervals


def evaluate_with_intervals(
    sides: Encoder | Sides, evaluators: Sequence[Evaluator], confidence: float, *,
    resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
) -> tuple[dict[str, float], dict[str, Interval]]:
    """``evaluate_all`` plus bootstrap intervals for the evaluators that support them.

    Returns:
        ``(metrics, intervals)``, both keyed ``"<evaluator name>/<metric>"``; metrics of an
        evaluator without ``resampling`` (word alignment) have no interval.

    Raises:
        ValueError: two evaluators share a name, ``confidence`` outside ``(0, 1)``, or
            ``resamples < 1``.
    """
    check_confidence(confidence)
    check_distinct_names(evaluators)
    sides = Sides.of(sides)
    metrics: dict[str, float] = {}
    intervals: dict[str, Interval] = {}
    for evaluator in evaluators:
        if isinstance(evaluator, Resamplable):
            values, groups = evaluator.resampling(sides)
            found = bootstrap_intervals(groups, confidence, name=evaluator.name,
                                        resamples=resamples, seed=seed)
            intervals.update({f"{evaluator.name}/{k}": v for k, v in found.items()})
        else:
            values = evaluator(sides)
        metrics.update({f"{evaluator.name}/{k}": v for k, v in values.items()})
    return metrics, intervals
