"""Dev sets evaluated during and after training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contralign.encoders.model import AlignmentModel
from contralign.evaluation import (
    Sides,
    bitext_from_records,
    evaluate_all,
    geometry_from_records,
    read_bitext,
    read_pairs,
    retrieval_from_records,
    sts_from_records,
)
from contralign.training.config import EvalConfig


@dataclass
class DevSets:
    """The evaluators built from ``eval.sts``, ``eval.retrieval`` and ``eval.bitext`` (records
    read once)."""

    evaluators: list[Any] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: EvalConfig, rejects_dir: Path | None = None) -> DevSets:
        """Read the dev sets; skipped records go to ``rejects_dir`` (the run directory)."""
        evaluators: list[Any] = []
        if config.sts is not None:
            records = read_pairs(config.sts, scored=True, rejects_dir=rejects_dir, key="eval.sts")
            evaluators.append(sts_from_records(records, batch_size=config.batch_size))
        if config.retrieval is not None:
            records = read_pairs(config.retrieval, rejects_dir=rejects_dir, key="eval.retrieval")
            evaluators += [retrieval_from_records(records, batch_size=config.batch_size),
                           geometry_from_records(records, batch_size=config.batch_size)]
        if config.bitext is not None:
            records = read_bitext(config.bitext, key="eval.bitext", rejects_dir=rejects_dir)
            evaluators.append(bitext_from_records(records, batch_size=config.batch_size))
        return cls(evaluators)

    def __bool__(self) -> bool:
        return bool(self.evaluators)

    def evaluate(self, model: AlignmentModel) -> dict[str, float]:
        """Every dev metric of ``model``: anchors embedded by the anchor's tower, positives by
        the positive's (a momentum copy's source stands for the copy)."""
        if not self.evaluators:
            return {}
        was_training = model.training
        model.eval()
        try:
            return evaluate_all(Sides(model.side("anchor"), model.side("positive")),
                                self.evaluators)
        finally:
            model.train(was_training)
