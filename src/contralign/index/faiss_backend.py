"""The FAISS backend (``faiss.IndexFlatIP``) and ``build_index``, which picks a backend.

faiss is imported here only, and lazily, so ``import contralign.index`` stays light.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, get_args

import numpy as np

from contralign.core.errors import ContralignError
from contralign.index.exact import (
    ExactIndex,
    VectorIndex,
    as_matrix,
    l2_normalize,
    prepare_queries,
)

Backend = Literal["auto", "exact", "faiss"]
BACKENDS: tuple[str, ...] = get_args(Backend)


def faiss_available() -> bool:
    """Whether ``import faiss`` would succeed (checked without importing it)."""
    return importlib.util.find_spec("faiss") is not None


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ContralignError(
            "index backend 'faiss' needs the faiss-cpu package (pip install faiss-cpu)"
        ) from None
    return faiss


class FaissSearch:
    """What every FAISS-backed index shares: the wrapped ``faiss`` index, its width and size,
    and ``search`` with ``ExactIndex``'s checks on the queries.

    Subclasses set ``_index`` (a ``faiss.Index``) and ``normalize`` (L2-normalise queries).
    """

    _index: Any
    normalize: bool

    @property
    def faiss_index(self) -> Any:
        return self._index

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

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
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
        scores, ids = self._index.search(q, k)  # (Q, k), (Q, k)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


class FaissIndex(FaissSearch):
    """Exact inner-product search with ``faiss.IndexFlatIP``; the interface of ``ExactIndex``.

    With ``normalize=True`` (default) corpus and queries are L2-normalised (cosine). Scores agree
    with ``ExactIndex`` to float32 rounding; unlike ``ExactIndex``, the order of exactly tied
    scores is whatever FAISS returns.

    Args:
        vectors: ``(N, D)`` corpus vectors; copied as float32.
        normalize: L2-normalise corpus and queries.

    Raises:
        ValueError: ``vectors`` is not a finite 2-D array.
        ContralignError: faiss is not installed.
    """

    def __init__(self, vectors: np.ndarray, normalize: bool = True) -> None:
        faiss = _import_faiss()
        matrix = as_matrix(vectors, "vectors")
        self.normalize = normalize
        self._index = faiss.IndexFlatIP(int(matrix.shape[1]))
        if len(matrix):
            self._index.add(np.ascontiguousarray(l2_normalize(matrix) if normalize else matrix))


def build_index(
    vectors: np.ndarray, backend: Backend = "auto", normalize: bool = True
) -> VectorIndex:
    """Build a search index over ``vectors (N, D)``.

    Args:
        vectors: ``(N, D)`` corpus vectors.
        backend: ``"faiss"`` (``FaissIndex``), ``"exact"`` (``ExactIndex``), or ``"auto"``:
            faiss when it is installed, else exact.
        normalize: L2-normalise (cosine similarity) or use raw inner products.

    Raises:
        ValueError: an unknown ``backend`` (named in the message) or bad ``vectors``.
        ContralignError: ``backend="faiss"`` without faiss installed.
    """
    match backend:
        case "exact":
            return ExactIndex(vectors, normalize=normalize)
        case "faiss":
            return FaissIndex(vectors, normalize=normalize)
        case "auto":
            if faiss_available():
                return FaissIndex(vectors, normalize=normalize)
            return ExactIndex(vectors, normalize=normalize)
        case _:
            raise ValueError(f"backend: unknown value {backend!r}; choose one of {BACKENDS}")
