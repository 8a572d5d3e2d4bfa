"""Index: vectors in, ``(scores, ids)`` out; an exact reference, FAISS backends (flat, IVF,
HNSW), persistence.

Imports only ``contralign.core`` (DESIGN.md, layers); faiss loads lazily in ``faiss_backend``.
"""

from __future__ import annotations

from contralign.index.ann import (
    INDEX_KINDS,
    AnnIndex,
    IndexConfig,
    IndexConfigError,
    IndexKind,
    build_ann,
)
from contralign.index.exact import ExactIndex, VectorIndex, l2_normalize
from contralign.index.faiss_backend import Backend, FaissIndex, build_index, faiss_available
from contralign.index.store import Hit, QueryEncoder, SearchIndex, load_index, save_index

__all__ = [
    "INDEX_KINDS",
    "AnnIndex",
    "Backend",
    "ExactIndex",
    "FaissIndex",
    "Hit",
    "IndexConfig",
    "IndexConfigError",
    "IndexKind",
    "QueryEncoder",
    "SearchIndex",
    "VectorIndex",
    "build_ann",
    "build_index",
    "faiss_available",
    "l2_normalize",
    "load_index",
    "save_index",
]
