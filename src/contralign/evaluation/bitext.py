"""Bitext retrieval: the nearest translation of every sentence by cosine or margin scoring, and
Tatoeba accuracy in both directions.

Scoring (Artetxe & Schwenk 2019, "Margin-based Parallel Corpus Mining with Multilingual Sentence
Embeddings", arXiv:1811.01136), for unit vectors ``x`` (source) and ``y`` (target):

- ``cosine``: ``cos(x, y)``.
- ``margin`` (their *ratio* margin): ``cos(x, y) / (Σ_{z ∈ NN_k(x)} cos(x, z) / 2k +
  Σ_{z ∈ NN_k(y)} cos(y, z) / 2k)``, where ``NN_k(x)`` are the ``k`` nearest targets of ``x``
  and ``NN_k(y)`` the ``k`` nearest sources of ``y``. Dividing by the neighbourhoods' mean
  similarity discounts *hubs*, sentences close to everything.
- ``distance``: the same two means subtracted instead of divided.

As in the authors' released tool (LASER's ``mine_bitexts.py``), the candidates of a sentence are
its ``k`` nearest neighbours by cosine, and the best of those by the chosen score is its match
(with ``k`` at least the other side's size, every sentence is a candidate). Neighbours are found
through the index layer (``contralign.index``: exact search, or FAISS), a block of queries at a
time, so no ``N × M`` matrix is ever held; the scores of the chosen pairs are then computed again
in float64 from the unit vectors, so they do not depend on the backend. Ties are broken the same
way everywhere: among equal cosines the lower id is the nearer neighbour (exact backend; FAISS
orders exactly tied neighbours its own way), among equal scores the lower id is the match.

The ratio margin assumes the neighbourhoods' mean similarity is positive, as it is for sentence
embeddings; for vectors whose nearest neighbours have negative cosines it is not meaningful.

Tatoeba protocol (LASER, Artetxe & Schwenk 2019 TACL, arXiv:1812.10464): row ``i`` of the source
side translates row ``i`` of the target side; the accuracy of a direction is the fraction of
sentences whose match is their own translation (LASER reports the error rate, ``1 − accuracy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar, get_args

import numpy as np

from contralign.core.errors import DataError
from contralign.evaluation.bootstrap import Resampling, mean_resampling
from contralign.evaluation.protocol import (
    Encoder,
    Item,
    PairRecord,
    Sides,
    encode_sides,
    record_pairs,
)
from contralign.index import Backend, build_index, l2_normalize
from contralign.index.exact import DEFAULT_CHUNK_SIZE, as_matrix

if TYPE_CHECKING:
    from contralign.data import DataConfig, Record

Scoring = Literal["cosine", "margin", "distance"]
SCORINGS: tuple[str, ...] = get_args(Scoring)
DEFAULT_K = 4  # the neighbourhood of the margin, as in the paper and LASER
# Score-block entries the index holds per query block: (rows, corpus chunk) float32, ~64 MiB.
MAX_BLOCK_ELEMENTS = 1 << 24
PAIR_BLOCK_ROWS = 8192  # rows whose (rows, D) float64 products pair_cosines holds at once
TATOEBA_TEST_ROWS = 400  # the held-out rows: the last 400 of each file

T = TypeVar("T")


@dataclass(frozen=True)
class Matches:
    """The best match of each sentence of one side among the other side.

    Attributes:
        ids: ``(N,)`` int64 row of the match on the other side.
        scores: ``(N,)`` float64 score of the match (cosine, ratio margin or distance margin).
    """

    ids: np.ndarray
    scores: np.ndarray


def unit_rows(vectors: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``vectors (N, D)`` as unit rows twice: C-contiguous float32 for the index, and float64
    (normalised in float64) for the scores.

    Raises:
        ValueError: not a finite non-empty 2-D array (the message names ``what``).
    """
    matrix = as_matrix(vectors, what)
    if len(matrix) == 0:
        raise ValueError(f"{what}: no vectors")
    exact = l2_normalize(np.asarray(vectors, dtype=np.float64))
    return np.ascontiguousarray(exact, dtype=np.float32), exact


def knn(queries: np.ndarray, corpus: np.ndarray, k: int, *, backend: Backend = "auto",
        max_block_elements: int = MAX_BLOCK_ELEMENTS) -> np.ndarray:
    """The ``k`` nearest corpus rows of every query by inner product, found by the index layer
    one block of queries at a time.

    Args:
        queries: ``(Q, D)`` float32 unit rows.
        corpus: ``(N, D)`` float32 unit rows.
        k: neighbours per query (capped at ``N``).
        backend: the index backend (``contralign.index.build_index``).
        max_block_elements: bound on ``query block × corpus chunk`` scores held at once.

    Returns:
        ``(Q, min(k, N))`` int64 corpus rows, nearest first.

    Raises:
        ValueError: ``k < 1`` or an unknown backend.
    """
    if k < 1:
        raise ValueError(f"k: must be at least 1 (got {k})")
    index = build_index(corpus, backend=backend, normalize=False)
    k = min(k, len(corpus))
    rows = max(1, max_block_elements // min(len(corpus), DEFAULT_CHUNK_SIZE))
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), rows):
        _, ids[start : start + rows] = index.search(queries[start : start + rows], k)
    return ids


def pair_cosines(x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``cos(x_i, y_ids[i, j])`` in float64 for float64 unit rows, one column at a time.

    The products are summed in the same order whichever side is ``x``, so a pair's cosine is the
    same bit for bit in both directions.

    Args:
        x: ``(N, D)`` unit rows.
        y: ``(M, D)`` unit rows.
        ids: ``(N, K)`` rows of ``y``.

    Returns:
        ``(N, K)`` float64.
    """
    out = np.empty(ids.shape, dtype=np.float64)
    for start in range(0, len(x), PAIR_BLOCK_ROWS):  # bounds the (rows, D) products
        rows = slice(start, start + PAIR_BLOCK_ROWS)
        for column in range(ids.shape[1]):
            out[rows, column] = (x[rows] * y[ids[rows, column]]).sum(axis=1)  # (rows,)
    return out


def margin_scores(cosines: np.ndarray, own_mean: np.ndarray, other_mean: np.ndarray,
                  scoring: Scoring) -> np.ndarray:
    """Score candidate pairs from their cosines and the two neighbourhoods' mean cosines.

    Args:
        cosines: ``(N, K)`` cosine of each sentence with each of its candidates.
        own_mean: ``(N, 1)`` mean cosine of each sentence with its ``k`` nearest neighbours.
        other_mean: ``(N, K)`` the same for each candidate.
        scoring: ``cosine``, ``margin`` (ratio) or ``distance``.

    Returns:
        ``(N, K)`` float64 scores.

    Raises:
        ValueError: an unknown ``scoring``.
    """
    match scoring:
        case "cosine":
            return cosines
        case "margin":
            return cosines / ((own_mean + other_mean) / 2)
        case "distance":
            return cosines - (own_mean + other_mean) / 2
        case _:
            raise ValueError(f"scoring: unknown value {scoring!r}; choose one of {SCORINGS}")


def _best(ids: np.ndarray, scores: np.ndarray) -> Matches:
    """The best-scoring candidate per row, the lower id among equal scores."""
    first = np.lexsort((ids, -scores), axis=1)[:, :1]  # (N, 1): by -score, then by id
    return Matches(np.take_along_axis(ids, first, axis=1)[:, 0],
                   np.take_along_axis(scores, first, axis=1)[:, 0])


def best_matches(src: np.ndarray, tgt: np.ndarray, *, scoring: Scoring = "margin",
                 k: int = DEFAULT_K, backend: Backend = "auto",
                 max_block_elements: int = MAX_BLOCK_ELEMENTS) -> tuple[Matches, Matches]:
    """The best target of every source sentence and the best source of every target sentence.

    Args:
        src: ``(N, D)`` source embeddings (normalised here).
        tgt: ``(M, D)`` target embeddings.
        scoring: ``cosine``, ``margin`` (ratio margin) or ``distance``.
        k: neighbourhood size of the margin and number of candidates per sentence (cosine
            scoring needs only the nearest).
        backend: the index backend that finds the neighbours.
        max_block_elements: bound on the score block the index holds at once.

    Returns:
        ``(forward, backward)``: ``forward.ids`` ``(N,)`` rows of ``tgt``, ``backward.ids``
        ``(M,)`` rows of ``src``, with their scores.

    Raises:
        ValueError: bad or empty embeddings, different widths, ``k < 1``, an unknown scoring or
            backend.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring: unknown value {scoring!r}; choose one of {SCORINGS}")
    (x, x64), (y, y64) = unit_rows(src, "src"), unit_rows(tgt, "tgt")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"src is {x.shape[1]}-d and tgt {y.shape[1]}-d; they must share a space")
    neighbours = 1 if scoring == "cosine" else k
    forward_ids = knn(x, y, neighbours, backend=backend, max_block_elements=max_block_elements)
    backward_ids = knn(y, x, neighbours, backend=backend, max_block_elements=max_block_elements)
    forward_cos = pair_cosines(x64, y64, forward_ids)  # (N, k), float64
    backward_cos = pair_cosines(y64, x64, backward_ids)  # (M, k)
    forward_mean = forward_cos.mean(axis=1)  # (N,)
    backward_mean = backward_cos.mean(axis=1)  # (M,)
    forward = margin_scores(forward_cos, forward_mean[:, None], backward_mean[forward_ids],
                            scoring)
    backward = margin_scores(backward_cos, backward_mean[:, None], forward_mean[backward_ids],
                             scoring)
    return _best(forward_ids, forward), _best(backward_ids, backward)


def tatoeba_accuracy(src: np.ndarray, tgt: np.ndarray, *, scoring: Scoring = "cosine",
                     k: int = DEFAULT_K, backend: Backend = "auto") -> dict[str, float]:
    """Tatoeba accuracy of aligned rows: row ``i`` of ``src`` translates row ``i`` of ``tgt``.

    Args:
        src: ``(N, D)`` source embeddings.
        tgt: ``(N, D)`` target embeddings, row for row.
        scoring, k, backend: as ``best_matches``.

    Returns:
        ``forward_accuracy`` (src → tgt), ``backward_accuracy`` (tgt → src) and their mean
        ``accuracy``.

    Raises:
        ValueError: the sides differ in length, or as ``best_matches``.
    """
    if len(src) != len(tgt):
        raise ValueError(f"src ({len(src)}) and tgt ({len(tgt)}) must be row-aligned")
    forward, backward = best_matches(src, tgt, scoring=scoring, k=k, backend=backend)
    gold = np.arange(len(src))
    results = {"forward_accuracy": float(np.mean(forward.ids == gold)),
               "backward_accuracy": float(np.mean(backward.ids == gold))}
    results["accuracy"] = (results["forward_accuracy"] + results["backward_accuracy"]) / 2
    return results


class BitextEvaluator:
    """Tatoeba accuracy of translation pairs in both directions; primary ``accuracy`` (the mean
    of the two).

    Sources (anchors) are embedded by the query tower and targets (positives) by the document
    tower; one encoder embeds both. Every row is a sentence of its side, repeated texts
    included, so a retrieved duplicate of the translation at another row counts as a miss, as in
    LASER's evaluation.

    Args:
        sources: ``N`` source sentences.
        targets: ``N`` target sentences, ``targets[i]`` the translation of ``sources[i]``.
        name: prefix for ``evaluate_all`` (``bitext/accuracy``).
        scoring: ``cosine``, ``margin`` or ``distance``.
        k: the margin's neighbourhood size.
        batch_size: passed to each tower's ``encode``.
        backend: the index backend.
        directions: labels of the two directions, for tables (``("deu→eng", "eng→deu")``).

    Raises:
        ValueError: no pairs, sides of different lengths, ``k < 1`` or an unknown scoring.
    """

    primary = "accuracy"

    def __init__(self, sources: Sequence[Item], targets: Sequence[Item], name: str = "bitext",
                 scoring: Scoring = "cosine", k: int = DEFAULT_K, batch_size: int = 32,
                 backend: Backend = "auto",
                 directions: tuple[str, str] = ("src→tgt", "tgt→src")) -> None:
        if len(sources) != len(targets):
            raise ValueError(f"sources ({len(sources)}) and targets ({len(targets)}) differ")
        if not sources:
            raise ValueError("bitext evaluation needs at least one pair")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring: unknown value {scoring!r}; choose one of {SCORINGS}")
        if k < 1:
            raise ValueError(f"k: must be at least 1 (got {k})")
        self.sources = list(sources)
        self.targets = list(targets)
        self.name = name
        self.scoring: Scoring = scoring
        self.k = k
        self.batch_size = batch_size
        self.backend: Backend = backend
        self.directions = directions

    def __call__(self, sides: Encoder | Sides) -> dict[str, float]:
        """Embed both sides and return ``forward_accuracy``, ``backward_accuracy``,
        ``accuracy``."""
        embeddings, src_rows, tgt_rows = encode_sides(Sides.of(sides), self.sources,
                                                      self.targets, self.batch_size)
        return self.score(embeddings[src_rows], embeddings[tgt_rows])

    def score(self, src: np.ndarray, tgt: np.ndarray) -> dict[str, float]:
        """The accuracies from embeddings already computed, ``(N, D)`` each, in pair order."""
        return tatoeba_accuracy(src, tgt, scoring=self.scoring, k=self.k, backend=self.backend)

    def resampling(self, sides: Encoder | Sides) -> tuple[dict[str, float], list[Resampling]]:
        """The accuracies and their bootstrap over pairs (``evaluation.bootstrap``): each
        sentence's best match is found once among all the other side's sentences; a resample
        averages the resampled pairs' hits (the candidates stay the whole set)."""
        embeddings, src_rows, tgt_rows = encode_sides(Sides.of(sides), self.sources,
                                                      self.targets, self.batch_size)
        forward, backward = best_matches(embeddings[src_rows], embeddings[tgt_rows],
                                         scoring=self.scoring, k=self.k, backend=self.backend)
        gold = np.arange(len(self.sources))
        hits = {"forward_accuracy": (forward.ids == gold).astype(np.float64),
                "backward_accuracy": (backward.ids == gold).astype(np.float64)}
        metrics = {key: float(np.mean(values)) for key, values in hits.items()}
        metrics["accuracy"] = (metrics["forward_accuracy"] + metrics["backward_accuracy"]) / 2
        hits["accuracy"] = (hits["forward_accuracy"] + hits["backward_accuracy"]) / 2
        return metrics, [mean_resampling(hits)]


def bitext_from_records(records: Sequence[PairRecord], name: str = "bitext",
                        scoring: Scoring = "cosine", k: int = DEFAULT_K, batch_size: int = 32,
                        directions: tuple[str, str] = ("src→tgt", "tgt→src")) -> BitextEvaluator:
    """A ``BitextEvaluator`` from records: anchors are the sources, positives the targets.

    Raises:
        ValueError: a record lacks a positive (the message names its line), or no records.
    """
    sources, targets, _ = record_pairs(records)
    return BitextEvaluator(sources, targets, name=name, scoring=scoring, k=k,
                           batch_size=batch_size, directions=directions)


def bitext_columns(path: str | Path, columns: dict[str, str] | None = None) -> dict[str, str]:
    """The role mapping of a bitext file: ``columns`` when given; else its columns named like
    roles (anchor, positive); else, for a file of exactly two columns (Tatoeba's ``deu\\teng``),
    the first is the source (anchor) and the second the target (positive).

    Raises:
        DataError: the file is unreadable, or has no anchor/positive columns and not exactly two
            columns.
    """
    from contralign.data import read_header

    if columns:
        return dict(columns)
    header = read_header(path)
    if header is None or {"anchor", "positive"} <= set(header):
        return {}  # JSONL keys, or role-named columns: the readers' own mapping
    if len(header) != 2:
        raise DataError(path, 1 if header else None, "columns", f"a bitext file needs two "
                        f"columns (source, target) or columns named anchor and positive; found "
                        f"{len(header)}: {', '.join(header)}")
    return {"anchor": header[0], "positive": header[1]}


def read_bitext(config: DataConfig, key: str = "--bitext", rejects_dir: Path | None = None
                ) -> list[Record]:
    """The translation pairs of a file (``bitext_columns`` when ``config`` maps no columns);
    ``key`` is where ``config`` sits in the user's config (``eval.bitext``), for messages.

    Raises:
        DataError: as ``bitext_columns`` and ``evaluation.read_pairs``.
    """
    from contralign.evaluation.protocol import read_pairs

    columns = bitext_columns(config.path, config.columns)
    return read_pairs(config.model_copy(update={"columns": columns}), rejects_dir=rejects_dir,
                      key=key)


def tatoeba_split(rows: Sequence[T], test_rows: int = TATOEBA_TEST_ROWS
                  ) -> tuple[list[T], list[T]]:
    """Split a Tatoeba file's pairs into ``(train, test)``: the test split is the last
    ``test_rows`` rows, the train split every row before them (the two never overlap; a file of
    800 rows gives 400 and 400, Thai's 548 give 148 and 400).

    Raises:
        ValueError: ``test_rows < 1``, or no row is left for testing.
    """
    if test_rows < 1:
        raise ValueError(f"test_rows: must be at least 1 (got {test_rows})")
    if not rows:
        raise ValueError("tatoeba_split: no rows")
    cut = max(0, len(rows) - test_rows)
    return list(rows[:cut]), list(rows[cut:])
