"""Dev sets evaluated during and after training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contralign.data import load_records
from contralign.evaluation import (
    evaluate_all,
    geometry_from_records,
    retrieval_from_records,
    sts_from_records,
)
from contralign.training.config import EvalConfig


@dataclass
class DevSets:
    """The evaluators built from ``eval.sts`` and ``eval.retrieval`` (records read once)."""

    evaluators: list[Any] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: EvalConfig) -> DevSets:
        evaluators: list[Any] = []
        if config.sts is not None:
            evaluators.append(sts_from_records(load_records(config.sts).records,
                                              batch_size=config.batch_size))
        if config.retrieval is not None:
            records = load_records(config.retrieval).records
            evaluators += [retrieval_from_records(records, batch_size=config.batch_size),
                           geometry_from_records(records, batch_size=config.batch_size)]
        return cls(evaluators)

    def __bool__(self) -> bool:
        return bool(self.evaluators)

    def evaluate(self, encoder: Any) -> dict[str, float]:
        if not self.evaluators:
            return {}
        was_training = encoder.training
        encoder.eval()
        try:
            return evaluate_all(encoder, self.evaluators)
        finally:
            encoder.train(was_training)
