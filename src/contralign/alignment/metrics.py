"""Word-alignment quality against gold links with sure and possible links (Och & Ney 2003).

With predicted links ``A``, sure gold links ``S`` and possible gold links ``P ⊇ S``, summed over
the corpus (counts of every sentence pair added before dividing, as every word-alignment paper
reports them):

- precision ``= |A ∩ P| / |A|``
- recall ``= |A ∩ S| / |S|``
- F1 ``= 2 · precision · recall / (precision + recall)``
- AER ``= 1 − (|A ∩ S| + |A ∩ P|) / (|A| + |S|)`` (lower is better)

A corpus without sure/possible distinction has ``P = S``: then AER ``= 1 − F1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from contralign.alignment.pharaoh import GoldAlignment, Link


@dataclass(frozen=True)
class AlignmentScores:
    """Corpus-level alignment quality and the counts it comes from.

    Attributes:
        precision, recall, f1, aer: as in the module docstring (0 where a denominator is 0).
        predicted: ``|A|``, links predicted.
        sure: ``|S|``; possible: ``|P|`` (sure links included).
        hits_sure: ``|A ∩ S|``; hits_possible: ``|A ∩ P|``.
    """

    precision: float
    recall: float
    f1: float
    aer: float
    predicted: int
    sure: int
    possible: int
    hits_sure: int
    hits_possible: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def metrics(self) -> dict[str, float]:
        """The four rates only: precision, recall, f1, aer."""
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "aer": self.aer}


def alignment_scores(predicted: Sequence[set[Link]], gold: GoldAlignment) -> AlignmentScores:
    """Precision, recall, F1 and AER of ``predicted`` against ``gold``, summed over the corpus.

    Args:
        predicted: the links of each sentence pair (0-indexed, as ``gold``).
        gold: sure and possible links of the same pairs.

    Raises:
        ValueError: ``predicted`` and ``gold`` hold different numbers of sentence pairs.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"alignment_scores: {len(predicted)} predicted sentence pairs, "
                         f"{len(gold)} gold")
    n_a = n_s = n_p = a_s = a_p = 0
    for links, sure, possible in zip(predicted, gold.sure, gold.possible, strict=True):
        n_a += len(links)
        n_s += len(sure)
        n_p += len(possible | sure)  # P ⊇ S even if a caller built P without S
        a_s += len(links & sure)
        a_p += len(links & (possible | sure))
    precision = a_p / n_a if n_a else 0.0
    recall = a_s / n_s if n_s else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    aer = 1.0 - (a_s + a_p) / (n_a + n_s) if n_a + n_s else 1.0
    return AlignmentScores(precision, recall, f1, aer, n_a, n_s, n_p, a_s, a_p)
