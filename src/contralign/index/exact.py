"""The exact reference index: brute-force inner product (cosine when normalised), in numpy.

Every other backend is checked against this one (``tests/test_index.py``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

# Corpus rows scored per step: a (Q, chunk) float32 score block stays small.
DEFAULT_CHUNK_SIZE = 16384


@runtime_checkable
class VectorIndex(Protocol):
    """Vectors in, ``(scores, ids)`` out."""

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows per query: ``scores (Q, k)`` float32, ``ids (Q, k)`` int64."""
        ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Scale each row to unit L2 norm; all-zero rows stay zero. Keeps a floating dtype.

    Args:
        x: ``(N, D)`` array.

    Returns:
        ``(N, D)`` array of the same floating dtype (float32 for integer input).
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


def as_matrix(vectors: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``(N, D)`` array.

    Raises:
        ValueError: not 2-D, non-finite values, or ``D != dim``; the message names ``what``.
    """
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (N, D), got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{what}: dimension {array.shape[1]} does not match the index ({dim})")
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return array


def check_k(k: int, count: int) -> int:
    """The number of columns a search returns: ``min(k, count)``.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k: must be at least 1 (got {k})")
    return min(k, count)


def top_k_rows(scores: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns per row, ordered by descending score, ties by lower column.

    Args:
        scores: ``(Q, C)`` scores.
        k: ``1 <= k <= C``.
        offset: added to column numbers to give ids.

    Returns:
        ``(scores (Q, k), ids (Q, k) int64)``.
    """
    n_rows, n_cols = scores.shape
    if k < n_cols:
        # The k-th best value per row; rows with extra ties at it need the exact, stable order.
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]  # (Q,)
        tied_rows = (scores >= kth[:, None]).sum(axis=1) > k
        columns = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (Q, k), unordered
        for row in np.flatnonzero(tied_rows):
            columns[row] = np.argsort(-scores[row], kind="stable")[:k]
    else:
        columns = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols)).copy()
    picked = np.take_along_axis(scores, columns, axis=1)
    order = np.lexsort((columns, -picked), axis=1)  # by -score, then by column
    return (
        np.take_along_axis(picked, order, axis=1),
        np.take_along_axis(columns, order, axis=1).astype(np.int64) + offset,
    )


def prepare_queries(
    index: VectorIndex, queries: np.ndarray, k: int, normalize: bool
) -> tuple[np.ndarray, int]:
    """Check ``queries (Q, D)`` against ``index``, normalise them if asked, and cap ``k``.

    Raises:
        ValueError: bad query shape or ``k < 1``.
    """
    q = as_matrix(queries, "queries", index.dim)
    if normalize:
        q = np.ascontiguousarray(l2_normalize(q))
    return q, check_k(k, len(index))


class ExactIndex:
    """Brute-force inner-product search over a corpus, chunked so memory stays bounded.

    With ``normalize=True`` (default) corpus and queries are L2-normalised, so scores are cosine
    similarities. Ties are broken by the lower id, so results are deterministic.

    Args:
        vectors: ``(N, D)`` corpus vectors; copied as float32.
        normalize: L2-normalise corpus and queries (cosine) or not (raw inner product).
        chunk_size: corpus rows scored at a time.

    Raises:
        ValueError: ``vectors`` is not a finite 2-D array, or ``chunk_size < 1``.
    """

    def __init__(
        self, vectors: np.ndarray, normalize: bool = True, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size: must be at least 1 (got {chunk_size})")
        matrix = as_matrix(vectors, "vectors")
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.vectors = l2_normalize(matrix) if normalize else matrix.copy()  # (N, D)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best corpus rows per query (``k`` is capped at the corpus size).

        Args:
            queries: ``(Q, D)`` query vectors.
            k: how many results per query.

        Returns:
            ``(scores (Q, k') float32, ids (Q, k') int64)`` with ``k' = min(k, N)``, best first.

        Raises:
            ValueError: bad query shape or ``k < 1``.
        """
        q, k = prepare_queries(self, queries, k, self.normalize)
        best_scores = np.empty((len(q), 0), dtype=np.float32)
        best_ids = np.empty((len(q), 0), dtype=np.int64)
        for start in range(0, len(self), self.chunk_size):
            block = q @ self.vectors[start : start + self.chunk_size].T  # (Q, C)
            scores, ids = top_k_rows(block, min(k, block.shape[1]), offset=start)
            # Merge with the running best; earlier chunks hold lower ids, so ties stay ordered.
            merged_scores = np.concatenate([best_scores, scores], axis=1)  # (Q, <= 2k)
            merged_ids = np.concatenate([best_ids, ids], axis=1)
            order = np.lexsort((merged_ids, -merged_scores), axis=1)[:, :k]
            best_scores = np.take_along_axis(merged_scores, order, axis=1)
            best_ids = np.take_along_axis(merged_ids, order, axis=1)
        return best_scores.astype(np.float32, copy=False), best_ids
