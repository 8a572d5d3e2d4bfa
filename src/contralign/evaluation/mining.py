"""Parallel sentence mining from two unpaired lists (the BUCC protocol), and its scores.

Candidates come from ``bitext.best_matches`` (margin scoring over each sentence's ``k`` nearest
neighbours, Artetxe & Schwenk 2019, arXiv:1811.01136). Two ways to combine the directions, as
LASER's ``mine_bitexts.py`` retrieval strategies:

- ``intersect``: keep ``(i, j)`` when ``j`` is the best target of source ``i`` and ``i`` the
  best source of target ``j`` (mutual best matches).
- ``union`` (LASER's ``max``): pool the best match of every source and of every target, and
  take them by descending score, each sentence at most once (greedy one-to-one).

Pairs are kept when their score is strictly above the threshold. A pair's score is the same from
both directions (``bitext.pair_cosines``). Results are ordered by descending score, ties by
source then target row, so they are the same on every run.

BUCC scoring (Zweigenbaum et al. 2017): precision = correct mined pairs / mined pairs, recall =
correct mined pairs / gold pairs, F1 their harmonic mean; the threshold is chosen on a dev set as
the one that maximises F1 (``best_threshold``, as LASER's BUCC script does).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from contralign.core.errors import DataError
from contralign.evaluation.bitext import (
    DEFAULT_K,
    MAX_BLOCK_ELEMENTS,
    Scoring,
    best_matches,
)
from contralign.index import Backend

MineMode = Literal["intersect", "union"]
MINE_MODES: tuple[str, ...] = get_args(MineMode)
Pair = tuple[int, int]
_LINE_NUMBER = re.compile("[1-9][0-9]*")


@dataclass(frozen=True)
class MinedPairs:
    """Mined sentence pairs, best first.

    Attributes:
        src: ``(P,)`` int64 source rows.
        tgt: ``(P,)`` int64 target rows.
        scores: ``(P,)`` float64 scores, descending (ties by source, then target row).
    """

    src: np.ndarray
    tgt: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def pairs(self) -> list[Pair]:
        """``(source row, target row)`` of every pair, best first."""
        return list(zip(self.src.tolist(), self.tgt.tolist(), strict=True))

    def above(self, threshold: float | None) -> MinedPairs:
        """The pairs scoring strictly above ``threshold`` (all of them for None)."""
        if threshold is None:
            return self
        keep = self.scores > threshold
        return MinedPairs(self.src[keep], self.tgt[keep], self.scores[keep])


def _ordered(src: np.ndarray, tgt: np.ndarray, scores: np.ndarray) -> MinedPairs:
    order = np.lexsort((tgt, src, -scores))  # by -score, then source, then target
    return MinedPairs(src[order].astype(np.int64), tgt[order].astype(np.int64), scores[order])


def mine_pairs(src: np.ndarray, tgt: np.ndarray, *, threshold: float | None = None,
               k: int = DEFAULT_K, mode: MineMode = "intersect", scoring: Scoring = "margin",
               backend: Backend = "auto",
               max_block_elements: int = MAX_BLOCK_ELEMENTS) -> MinedPairs:
    """Mine translation pairs between two unpaired sets of sentence embeddings.

    Args:
        src: ``(N, D)`` source embeddings.
        tgt: ``(M, D)`` target embeddings.
        threshold: keep pairs scoring strictly above it; None keeps every candidate (to choose
            a threshold afterwards with ``best_threshold`` and ``MinedPairs.above``).
        k: neighbourhood size of the margin and candidates per sentence.
        mode: ``intersect`` (mutual best matches) or ``union`` (greedy one-to-one over the best
            matches of both directions).
        scoring: ``margin`` (ratio), ``distance`` or ``cosine``.
        backend: the index backend that finds neighbours.
        max_block_elements: bound on the score block the index holds at once.

    Returns:
        The mined pairs, best first.

    Raises:
        ValueError: an unknown mode, or as ``bitext.best_matches``.
    """
    if mode not in MINE_MODES:
        raise ValueError(f"mode: unknown value {mode!r}; choose one of {MINE_MODES}")
    forward, backward = best_matches(src, tgt, scoring=scoring, k=k, backend=backend,
                                     max_block_elements=max_block_elements)
    if mode == "intersect":
        rows = np.flatnonzero(backward.ids[forward.ids] == np.arange(len(forward.ids)))
        mined = _ordered(rows, forward.ids[rows], forward.scores[rows])
    else:
        pooled = _ordered(np.concatenate([np.arange(len(forward.ids)), backward.ids]),
                          np.concatenate([forward.ids, np.arange(len(backward.ids))]),
                          np.concatenate([forward.scores, backward.scores]))
        mined = _one_to_one(pooled)
    return mined.above(threshold)


def _one_to_one(pooled: MinedPairs) -> MinedPairs:
    """Walk ``pooled`` best first and keep a pair when neither of its sentences is taken."""
    seen_src: set[int] = set()
    seen_tgt: set[int] = set()
    keep = np.zeros(len(pooled), dtype=bool)
    for position, (i, j) in enumerate(pooled.pairs()):
        if i not in seen_src and j not in seen_tgt:
            seen_src.add(i)
            seen_tgt.add(j)
            keep[position] = True
    return MinedPairs(pooled.src[keep], pooled.tgt[keep], pooled.scores[keep])


def mining_scores(mined: Iterable[Pair] | MinedPairs, gold: Collection[Pair]) -> dict[str, float]:
    """BUCC precision, recall and F1 of mined pairs against gold pairs.

    Args:
        mined: ``(source row, target row)`` pairs (or ``MinedPairs``).
        gold: the true pairs; must be non-empty.

    Returns:
        ``precision`` (0 when nothing was mined), ``recall``, ``f1``, and the counts ``mined``,
        ``gold`` and ``correct``.

    Raises:
        ValueError: ``gold`` is empty.
    """
    if not gold:
        raise ValueError("gold: no pairs to score against")
    found = set(mined.pairs() if isinstance(mined, MinedPairs) else mined)
    truth = set(gold)
    correct = len(found & truth)
    precision = correct / len(found) if found else 0.0
    recall = correct / len(truth)
    f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "mined": float(len(found)),
            "gold": float(len(truth)), "correct": float(correct)}


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold that maximises F1 on a dev set, and the scores it gives there."""

    threshold: float
    precision: float
    recall: float
    f1: float


def best_threshold(mined: MinedPairs, gold: Collection[Pair]) -> ThresholdChoice:
    """The threshold with the best F1 of ``mined.above(threshold)`` against ``gold``.

    Only cuts between two different scores can be made by a threshold; each is tried. The
    threshold lies halfway between the last kept and the first dropped score (below the lowest
    score when every pair is kept); among equal F1 the higher threshold wins.

    Args:
        mined: every candidate (``mine_pairs(..., threshold=None)``), best first.
        gold: the true pairs; must be non-empty.

    Returns:
        The threshold and its precision, recall and F1 (all 0, and a threshold that keeps
        nothing, when no candidate is correct).

    Raises:
        ValueError: ``gold`` is empty.
    """
    if not gold:
        raise ValueError("gold: no pairs to score against")
    truth = set(gold)
    scores = mined.scores
    hits = np.cumsum([pair in truth for pair in mined.pairs()])  # (P,) correct in the first c
    if len(scores) == 0 or hits[-1] == 0:
        top = float(scores[0]) if len(scores) else 0.0
        return ThresholdChoice(top, 0.0, 0.0, 0.0)
    kept = np.arange(1, len(scores) + 1)
    cuttable = np.append(scores[:-1] > scores[1:], True)  # (P,) a threshold can stop after c
    precision = hits / kept
    recall = hits / len(truth)
    f1 = np.where(hits > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    f1 = np.where(cuttable, f1, -1.0)
    c = int(np.argmax(f1))  # first best: the fewest pairs, the highest threshold
    return ThresholdChoice(_threshold_after(scores, c), float(precision[c]), float(recall[c]),
                           float(f1[c]))


def _threshold_after(scores: np.ndarray, c: int) -> float:
    """A threshold that keeps ``scores[: c + 1]`` and drops the rest (``score > threshold``)."""
    last = float(scores[c])
    if c + 1 == len(scores):
        return float(np.nextafter(last, -np.inf))
    following = float(scores[c + 1])
    middle = (last + following) / 2
    return middle if following <= middle < last else following


def read_gold(path: str | Path, src_lines: Collection[int], tgt_lines: Collection[int]
              ) -> list[Pair]:
    """Gold pairs from a file of ``SRC_LINE<TAB>TGT_LINE`` lines (1-based line numbers of the
    two sentence files, BUCC's gold layout with line numbers for ids); blank lines are skipped.

    Args:
        path: the gold file.
        src_lines: the line numbers that hold a source sentence.
        tgt_lines: the same for the target file.

    Returns:
        Distinct ``(source line, target line)`` pairs in file order.

    Raises:
        DataError: the file is unreadable or not UTF-8, a line is not two positive integers, a
            line number holds no sentence, or there is no pair (naming the file and line).
    """
    from contralign.data.lines import check_readable, numbered_lines

    path = Path(path)
    check_readable(path)
    pairs: dict[Pair, None] = {}
    for numbered in numbered_lines(path, split_cr=False):
        if numbered.problem is not None:
            raise numbered.error(path)
        number, line = numbered.number, numbered.text
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not all(_LINE_NUMBER.fullmatch(f) for f in fields):
            raise DataError(path, number, None, f"expected two line numbers (source, target) "
                            f"separated by a tab, got {line.strip()[:60]!r}")
        pair = (int(fields[0]), int(fields[1]))
        for side, value, lines in (("source", pair[0], src_lines), ("target", pair[1],
                                                                    tgt_lines)):
            if value not in lines:
                raise DataError(path, number, side, f"line {value} of the {side} file holds no "
                                "sentence")
        pairs[pair] = None
    if not pairs:
        raise DataError(path, None, None, "no gold pairs")
    return list(pairs)
