"""Retrieval: rank a corpus by cosine similarity to each query and score the ranking.

Every metric is computed from the exact rank of every relevant document (no top-k
approximation), with score ties broken by the lower corpus id. Definitions, per query, averaged
over queries (binary relevance; ``R`` = the query's relevant documents; ranks start at 1):

- ``recall@k``: ``|R ∩ top k| / |R|``, the fraction of relevant documents found in the top k.
- ``accuracy@k``: 1 if any relevant document is in the top k, else 0 (hit rate).
- ``mrr@10``: ``1 / rank`` of the first relevant document if it is in the top 10, else 0.
- ``ndcg@10``: ``DCG@10 / IDCG@10`` with ``DCG@10 = sum over relevant d in top 10 of
  1 / log2(rank(d) + 1)`` and the ideal ranking putting all of ``R`` first
  (Järvelin & Kekäläinen 2002).
- ``map``: average precision over the full ranking, ``(1/|R|) sum over d in R of
  precision@rank(d)``; no cutoff.

These match sentence-transformers' ``InformationRetrievalEvaluator`` except ``map``, which
there is cut at 100 (``MAP@100`` divides by ``min(100, |R|)`` and ignores documents below rank
100); the two agree when every relevant document ranks in the top 100.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from contralign.core.items import item_key
from contralign.evaluation.bootstrap import Resampling, mean_resampling
from contralign.evaluation.protocol import (
    Encoder,
    Item,
    PairRecord,
    Sides,
    check_same_space,
    encode_unique,
    record_pairs,
)
from contralign.index.exact import l2_normalize

# Score-matrix entries held at once: (query block) x (corpus) float32 stays near 64 MiB.
MAX_BLOCK_ELEMENTS = 1 << 24
# Relevant documents ranked at once per query: bounds the (R, N) comparison masks.
RELEVANT_CHUNK = 64


def _ranks_in_row(row: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based ranks of ``relevant`` ids in ``row (N,)`` sorted by (-score, id)."""
    ranks = np.empty(len(relevant), dtype=np.int64)
    positions = np.arange(len(row))
    for start in range(0, len(relevant), RELEVANT_CHUNK):
        ids = relevant[start : start + RELEVANT_CHUNK]  # (r,)
        own = row[ids][:, None]  # (r, 1)
        before = (row[None, :] > own) | ((row[None, :] == own) & (positions < ids[:, None]))
        ranks[start : start + RELEVANT_CHUNK] = before.sum(axis=1)  # (r,)
    return np.sort(ranks)


def relevant_ranks(
    queries: np.ndarray,
    corpus: np.ndarray,
    relevant: Sequence[Collection[int]],
    max_block_elements: int = MAX_BLOCK_ELEMENTS,
) -> list[np.ndarray]:
    """The rank of every relevant document for every query, by cosine similarity.

    Args:
        queries: ``(Q, D)`` query embeddings.
        corpus: ``(N, D)`` corpus embeddings.
        relevant: ``Q`` collections of corpus row numbers.
        max_block_elements: bound on the ``(block, N)`` score matrix scored at once.

    Returns:
        ``Q`` sorted int64 arrays of 0-based ranks (ties broken by the lower corpus id).
    """
    q = l2_normalize(np.asarray(queries, dtype=np.float32))
    c = l2_normalize(np.asarray(corpus, dtype=np.float32))
    block_rows = max(1, max_block_elements // max(len(c), 1))
    ranks: list[np.ndarray] = []
    for start in range(0, len(q), block_rows):
        block = q[start : start + block_rows] @ c.T  # (B, N)
        for offset, row in enumerate(block):
            ids = np.fromiter(sorted(relevant[start + offset]), dtype=np.int64)
            ranks.append(_ranks_in_row(row, ids))
    return ranks


def ranking_metrics(
    ranks: Sequence[np.ndarray], ks: Sequence[int] = (1, 5, 10), cutoff: int = 10
) -> dict[str, float]:
    """Recall@k, accuracy@k, MRR@cutoff, nDCG@cutoff and MAP from relevant-document ranks.

    Args:
        ranks: per query, the sorted 0-based ranks of all its relevant documents (non-empty).
        ks: cutoffs for ``recall@k`` and ``accuracy@k``.
        cutoff: cutoff for ``mrr@…`` and ``ndcg@…``.

    Returns:
        The metrics defined in this module's docstring, averaged over queries.
    """
    return {key: float(np.mean(values))
            for key, values in query_metrics(ranks, ks, cutoff).items()}


def query_metrics(
    ranks: Sequence[np.ndarray], ks: Sequence[int] = (1, 5, 10), cutoff: int = 10
) -> dict[str, np.ndarray]:
    """Each query's metrics (``ranking_metrics`` before the average over queries).

    Returns:
        metric -> ``(Q,)`` float64 values, in the order of ``ranks``.
    """
    names = ([f"recall@{k}" for k in ks] + [f"accuracy@{k}" for k in ks]
             + [f"mrr@{cutoff}", f"ndcg@{cutoff}", "map"])
    values = {name: np.zeros(len(ranks)) for name in names}
    for q, r in enumerate(ranks):
        n = len(r)
        for k in ks:
            values[f"recall@{k}"][q] = float(np.count_nonzero(r < k)) / n
            values[f"accuracy@{k}"][q] = float(r[0] < k)
        values[f"mrr@{cutoff}"][q] = 1.0 / (r[0] + 1) if r[0] < cutoff else 0.0
        dcg = np.sum(1.0 / np.log2(r[r < cutoff] + 2.0))
        idcg = np.sum(1.0 / np.log2(np.arange(min(n, cutoff)) + 2.0))
        values[f"ndcg@{cutoff}"][q] = float(dcg / idcg)
        # The j-th relevant document (0-based) at rank r_j has precision (j + 1) / (r_j + 1).
        values["map"][q] = float(np.mean((np.arange(n) + 1.0) / (r + 1.0)))
    return values


class RetrievalEvaluator:
    """Exact cosine retrieval metrics (see the module docstring); primary ``ndcg@10``.

    Args:
        queries: ``Q`` queries (texts, or images), embedded by the query tower.
        corpus: ``N`` documents (texts, or images), embedded by the document tower.
        relevant: ``Q`` sets of row numbers into ``corpus``; each must be non-empty.
        name: prefix for ``evaluate_all`` (``retrieval/ndcg@10``).
        batch_size: passed to each tower's ``encode``.
        ks: cutoffs for ``recall@k`` and ``accuracy@k``.

    Raises:
        ValueError: lengths differ, an empty corpus or query list, a query without relevant
            documents, a row number out of range, or a cutoff below 1.
    """

    primary = "ndcg@10"

    def __init__(
        self,
        queries: Sequence[Item],
        corpus: Sequence[Item],
        relevant: Sequence[Collection[int]],
        name: str = "retrieval",
        batch_size: int = 32,
        ks: Sequence[int] = (1, 5, 10),
    ) -> None:
        if len(queries) != len(relevant):
            raise ValueError(f"queries ({len(queries)}) and relevant ({len(relevant)}) differ")
        if not queries or not corpus:
            raise ValueError("retrieval needs at least one query and one document")
        if any(k < 1 for k in ks):
            raise ValueError(f"ks: cutoffs must be at least 1 (got {list(ks)})")
        for i, ids in enumerate(relevant):
            if not ids:
                raise ValueError(f"relevant[{i}]: query {queries[i]!r} has no relevant document")
            if any(not 0 <= j < len(corpus) for j in ids):
                raise ValueError(f"relevant[{i}]: row numbers must be in [0, {len(corpus)})")
        self.queries = list(queries)
        self.corpus = list(corpus)
        self.relevant = [set(ids) for ids in relevant]
        self.name = name
        self.batch_size = batch_size
        self.ks = tuple(ks)

    @classmethod
    def from_pairs(
        cls,
        anchors: Sequence[Item],
        positives: Sequence[Item],
        extra_corpus: Sequence[Item] = (),
        name: str = "retrieval",
        batch_size: int = 32,
        ks: Sequence[int] = (1, 5, 10),
    ) -> RetrievalEvaluator:
        """Queries from ``anchors``, documents from ``positives`` (+ distractors).

        A repeated anchor becomes one query whose relevant set holds all its positives; equal
        items (equal ``item_key``) become one document. ``extra_corpus`` adds documents that
        answer no query (distractors, e.g. hard negatives). The other arguments are the
        constructor's.

        Raises:
            ValueError: ``anchors`` and ``positives`` differ in length, or are empty.
        """
        if len(anchors) != len(positives):
            raise ValueError(f"anchors ({len(anchors)}) and positives ({len(positives)}) differ")
        documents: dict[str, int] = {}  # item key -> row
        corpus: list[Item] = []
        relevant: dict[str, set[int]] = {}  # anchor key -> rows
        queries: list[Item] = []
        for item in [*positives, *extra_corpus]:
            if documents.setdefault(item_key(item), len(corpus)) == len(corpus):
                corpus.append(item)
        for anchor, positive in zip(anchors, positives, strict=True):
            key = item_key(anchor)
            if key not in relevant:
                queries.append(anchor)
            relevant.setdefault(key, set()).add(documents[item_key(positive)])
        return cls(queries, corpus, list(relevant.values()), name=name, batch_size=batch_size,
                   ks=ks)

    def __call__(self, sides: Encoder | Sides) -> dict[str, float]:
        """Embed the queries with the query tower and the corpus with the document tower (one
        encoder: both) and return the metrics."""
        sides = Sides.of(sides)
        query_embeddings, query_index = encode_unique(sides.query, self.queries, self.batch_size)
        doc_embeddings, doc_index = encode_unique(sides.document, self.corpus, self.batch_size)
        return self.score(query_embeddings[query_index], doc_embeddings[doc_index])

    def resampling(self, sides: Encoder | Sides) -> tuple[dict[str, float], list[Resampling]]:
        """The metrics and their bootstrap over queries (``evaluation.bootstrap``): every
        query's ranks are computed once against the whole corpus; a resample averages the
        resampled queries' metrics."""
        sides = Sides.of(sides)
        query_embeddings, query_index = encode_unique(sides.query, self.queries, self.batch_size)
        doc_embeddings, doc_index = encode_unique(sides.document, self.corpus, self.batch_size)
        per_query = self.query_scores(query_embeddings[query_index], doc_embeddings[doc_index])
        return ({key: float(np.mean(values)) for key, values in per_query.items()},
                [mean_resampling(per_query)])

    def query_scores(self, queries: np.ndarray, corpus: np.ndarray) -> dict[str, np.ndarray]:
        """Each query's metrics (``query_metrics``) from embeddings already computed, as
        ``score`` takes them.

        Raises:
            ValueError: as ``score``.
        """
        self._check_embeddings(queries, corpus)
        return query_metrics(relevant_ranks(queries, corpus, self.relevant), ks=self.ks,
                             cutoff=10)

    def score(self, queries: np.ndarray, corpus: np.ndarray) -> dict[str, float]:
        """The metrics from embeddings already computed: ``queries (Q, D)`` in the order of
        ``self.queries``, ``corpus (N, D)`` in the order of ``self.corpus``.

        Raises:
            ValueError: the row counts differ from the queries and corpus, or the widths differ.
        """
        self._check_embeddings(queries, corpus)
        return ranking_metrics(relevant_ranks(queries, corpus, self.relevant), ks=self.ks,
                               cutoff=10)

    def _check_embeddings(self, queries: np.ndarray, corpus: np.ndarray) -> None:
        if len(queries) != len(self.queries) or len(corpus) != len(self.corpus):
            raise ValueError(f"expected {len(self.queries)} query and {len(self.corpus)} corpus "
                             f"embeddings, got {len(queries)} and {len(corpus)}")
        check_same_space(queries, corpus)


def retrieval_from_records(
    records: Sequence[PairRecord], name: str = "retrieval", batch_size: int = 32
) -> RetrievalEvaluator:
    """A ``RetrievalEvaluator`` from records: anchors query, positives are the documents.

    Hard negatives (``record.negatives``, when records carry them) join the corpus as
    distractors.

    Raises:
        ValueError: a record lacks a positive (the message names its line).
    """
    anchors, positives, _ = record_pairs(records)
    negatives = [text for record in records for text in getattr(record, "negatives", ())]
    return RetrievalEvaluator.from_pairs(
        anchors, positives, negatives, name=name, batch_size=batch_size
    )
