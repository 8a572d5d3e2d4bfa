"""Evaluation: evaluators that embed items with a tower per side and return ``{metric: value}``.

Each evaluator is ``evaluator(sides_or_encoder) -> dict[str, float]`` with a ``name`` and a
``primary`` metric: ``Sides(query=..., document=...)`` names the tower of each side, and one
encoder serves both. ``evaluate_all`` runs several and prefixes their keys (``sts/spearman``).
"""

from __future__ import annotations

from collections.abc import Sequence

from contralign.evaluation.bitext import (
    BitextEvaluator,
    bitext_from_records,
    read_bitext,
    tatoeba_accuracy,
    tatoeba_split,
)
from contralign.evaluation.bootstrap import (
    Resamplable,
    Resampling,
    bootstrap_intervals,
    evaluate_with_intervals,
)
from contralign.evaluation.cross_modal import (
    CrossModalRetrievalEvaluator,
    cross_modal_from_records,
)
from contralign.evaluation.diagnostics import effective_rank, hubness, k_occurrence
from contralign.evaluation.geometry import (
    GeometryEvaluator,
    alignment,
    geometry_from_records,
    geometry_from_sts,
    modality_gap,
    uniformity,
)
from contralign.evaluation.knn import KNNEvaluator, knn_class_scores
from contralign.evaluation.linear_probe import LinearProbeEvaluator, fit_linear_probe
from contralign.evaluation.mining import MinedPairs, best_threshold, mine_pairs, mining_scores
from contralign.evaluation.protocol import (
    Encoder,
    Evaluator,
    Item,
    ModalityError,
    PairRecord,
    Sides,
    check_distinct_names,
    encode_sides,
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
from contralign.evaluation.zero_shot import (
    DEFAULT_TEMPLATES,
    ZeroShotEvaluator,
    ZeroShotResult,
    class_prompts,
    zero_shot_classifier,
    zero_shot_from_records,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "BitextEvaluator",
    "CrossModalRetrievalEvaluator",
    "Encoder",
    "Evaluator",
    "GeometryEvaluator",
    "Item",
    "KNNEvaluator",
    "LinearProbeEvaluator",
    "MinedPairs",
    "ModalityError",
    "PairRecord",
    "Resamplable",
    "Resampling",
    "RetrievalEvaluator",
    "STSEvaluator",
    "Sides",
    "ZeroShotEvaluator",
    "ZeroShotResult",
    "alignment",
    "best_threshold",
    "bitext_from_records",
    "bootstrap_intervals",
    "class_prompts",
    "cross_modal_from_records",
    "encode_sides",
    "effective_rank",
    "encode_unique",
    "evaluate_all",
    "evaluate_with_intervals",
    "geometry_from_records",
    "geometry_from_sts",
    "hubness",
    "k_occurrence",
    "knn_class_scores",
    "fit_linear_probe",
    "mine_pairs",
    "mining_scores",
    "modality_gap",
    "read_bitext",
    "read_pairs",
    "ranking_metrics",
    "relevant_ranks",
    "retrieval_from_records",
    "sts_correlations",
    "sts_from_records",
    "tatoeba_accuracy",
    "tatoeba_split",
    "uniformity",
    "zero_shot_classifier",
    "zero_shot_from_records",
]


def evaluate_all(sides: Encoder | Sides, evaluators: Sequence[Evaluator]) -> dict[str, float]:
    """Run each evaluator on ``sides`` (or one encoder for both sides); keys become
    ``"<evaluator name>/<metric>"``.

    Raises:
        ValueError: two evaluators share a name (their keys would collide).
        TypeError: ``sides`` is neither a ``Sides`` nor an encoder.
    """
    check_distinct_names(evaluators)
    sides = Sides.of(sides)
    results: dict[str, float] = {}
    for evaluator in evaluators:
        for key, value in evaluator(sides).items():
            results[f"{evaluator.name}/{key}"] = value
    return results
