"""Evaluation: evaluators that embed texts with an encoder and return ``{metric: value}``.

Each evaluator is ``evaluator(encoder) -> dict[str, float]`` with a ``name`` and a ``primary``
metric; ``evaluate_all`` runs several and prefixes their keys (``sts/spearman``).
"""

from __future__ import annotations

from collections.abc import Sequence

from contralign.evaluation.geometry import (
    GeometryEvaluator,
    alignment,
    geometry_from_records,
    uniformity,
)
from contralign.evaluation.protocol import (
    Encoder,
    Evaluator,
    PairRecord,
    encode_unique,
    read_pairs,
)
from contralign.evaluation.retrieval import (
    RetrievalEvaluator,
    ranking_metrics,
    relevant_ranks,
    retrieval_from_records,
)
from contralign.evaluation.sts import STSEvaluator, sts_correlations, sts_from_records

__all__ = [
    "Encoder",
    "Evaluator",
    "GeometryEvaluator",
    "PairRecord",
    "RetrievalEvaluator",
    "STSEvaluator",
    "alignment",
    "encode_unique",
    "evaluate_all",
    "geometry_from_records",
    "read_pairs",
    "ranking_metrics",
    "relevant_ranks",
    "retrieval_from_records",
    "sts_correlations",
    "sts_from_records",
    "uniformity",
]


def evaluate_all(encoder: Encoder, evaluators: Sequence[Evaluator]) -> dict[str, float]:
    """Run each evaluator on ``encoder``; keys become ``"<evaluator name>/<metric>"``.

    Raises:
        ValueError: two evaluators share a name (their keys would collide).
    """
    names = [evaluator.name for evaluator in evaluators]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"evaluator names must be distinct; repeated: {repeated}")
    results: dict[str, float] = {}
    for evaluator in evaluators:
        for key, value in evaluator(encoder).items():
            results[f"{evaluator.name}/{key}"] = value
    return results
