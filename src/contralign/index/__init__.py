"""Index: vectors in, ``(scores, ids)`` out; an exact reference, a FAISS backend, persistence.

Imports only ``contralign.core`` (DESIGN.md, layers); faiss loads lazily in ``faiss_backend``.
"""

from __future__ import annotations

from contralign.index.exact import ExactIndex, VectorIndex, l2_normalize
from contralign.index.faiss_backend import Backend, FaissIndex, build_index, faiss_available
from contralign.index.store import Hit, QueryEncoder, SearchIndex, load_index, save_index

__all__ = [
    "Backend",
    "ExactIndex",
    "FaissIndex",
    "Hit",
    "QueryEncoder",
    "SearchIndex",
    "VectorIndex",
    "build_index",
    "faiss_available",
    "l2_normalize",
    "load_index",
    "save_index",
]
