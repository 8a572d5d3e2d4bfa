"""Approximate nearest-neighbour indexes for large collections: FAISS IVF (flat or PQ) and HNSW.

An ``IndexConfig`` names the kind and its parameters (FAISS's names: ``nlist``/``nprobe`` for
IVF, ``m``/``nbits`` for its product quantiser, ``M``/``efConstruction``/``efSearch`` for HNSW);
``build_ann`` trains and fills the FAISS index over unit vectors with the inner-product metric
(cosine), and ``AnnIndex`` searches it with the interface of ``ExactIndex``. The index folder
(``store.py``) keeps the FAISS file and the config in its manifest, so a search uses what was built.

faiss is imported lazily (``faiss_backend._import_faiss``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from contralign.core.errors import ContralignError
from contralign.index.exact import as_matrix, l2_normalize
from contralign.index.faiss_backend import FaissSearch, _import_faiss

IndexKind = Literal["exact", "ivf", "hnsw"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)

# FAISS's k-means wants at least 39 training points per centroid; more buys little.
POINTS_PER_LIST = 40
MIN_TRAIN_SIZE = 10_000


class IndexConfigError(ContralignError, ValueError):
    """A bad index setting: ``key: what is wrong``. A ``ValueError`` for library callers, one
    line for the CLI, which names the option (``--nlist``) from ``key``."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class IndexConfig:
    """Which vector index a folder holds, and its parameters (None: chosen from the size).

    Args:
        kind: ``exact`` (brute force), ``ivf`` (inverted lists over k-means cells) or ``hnsw``
            (a navigable small-world graph).
        nlist: IVF cells; default ``4 * sqrt(N)`` (at most ``N / 40`` so every cell trains on
            40 points).
        nprobe: IVF cells visited per query; default ``nlist / 32`` (at least 8): ``nprobe``
            sets recall and latency; a thirty-second of the cells gave recall@10 above 0.99 on
            clustered unit vectors (``benchmarks/ann_search.py``) while scanning about 3% of them.
        pq: IVF product quantiser sub-vectors (``m``; must divide the dimension); None stores
            full vectors (IVF-flat). PQ shrinks the index about ``4 * D / pq`` times and lowers
            recall.
        pq_bits: bits per PQ code (``nbits``, 1 to 16).
        m: HNSW neighbours per node (``M``).
        ef_construction: HNSW candidate list size while building (``efConstruction``).
        ef_search: HNSW candidate list size while searching (``efSearch``); at least ``k``.
        train_size: IVF k-means training sample; default ``max(40 * nlist, 10000)`` (at most N).
        seed: the training sample's and k-means' seed (same vectors, same index).

    Raises:
        IndexConfigError: an unknown kind or a value out of range, naming the key.
    """

    kind: IndexKind = "exact"
    nlist: int | None = None
    nprobe: int | None = None
    pq: int | None = None
    pq_bits: int = 8
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    train_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise IndexConfigError("kind", f"unknown value {self.kind!r}; choose one of "
                                           f"{', '.join(INDEX_KINDS)}")
        for key in ("nlist", "nprobe", "pq", "train_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise IndexConfigError(key, f"must be a whole number of at least 1 (got {value})")
        for key, low in (("m", 2), ("ef_construction", 1), ("ef_search", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or value < low:
                raise IndexConfigError(key, f"must be a whole number of at least {low} "
                                            f"(got {value})")
        if not isinstance(self.pq_bits, int) or not 1 <= self.pq_bits <= 16:
            raise IndexConfigError("pq_bits", f"must be between 1 and 16 (got {self.pq_bits})")
        if not isinstance(self.seed, int):
            raise IndexConfigError("seed", f"must be a whole number (got {self.seed!r})")

    def resolved(self, count: int, dim: int | None) -> IndexConfig:
        """This config with every default filled in for ``count`` vectors of dimension ``dim``
        (None: not known yet, ``pq`` is checked later).

        Raises:
            IndexConfigError: ``nlist``/``nprobe``/``train_size`` larger than ``count`` allows,
                or ``pq`` does not divide ``dim``.
        """
        if self.kind != "ivf":
            return self
        if count < 1:
            raise IndexConfigError("kind", "an ivf index needs at least one vector")
        nlist = self.nlist or max(1, min(round(4 * math.sqrt(count)), count // POINTS_PER_LIST))
        if nlist > count:
            raise IndexConfigError("nlist", f"{nlist} cells for {count} vectors; at most the "
                                            "number of vectors (about 4 * sqrt(N) is usual)")
        nprobe = self.nprobe or min(nlist, max(8, math.ceil(nlist / 32)))
        if nprobe > nlist:
            raise IndexConfigError("nprobe", f"{nprobe} is more than nlist ({nlist})")
        train_size = self.train_size or min(count, max(POINTS_PER_LIST * nlist, MIN_TRAIN_SIZE))
        if not nlist <= train_size <= count:
            raise IndexConfigError("train_size", f"{train_size} must lie between nlist ({nlist}) "
                                                 f"and the number of vectors ({count})")
        if self.pq is not None and dim is not None and dim % self.pq:
            raise IndexConfigError("pq", f"{self.pq} sub-vectors do not divide the dimension "
                                         f"{dim}")
        return replace(self, nlist=nlist, nprobe=nprobe, train_size=train_size)

    def params(self) -> dict[str, Any]:
        """The parameters that matter for ``kind``, as written in the manifest."""
        match self.kind:
            case "ivf":
                keys = ["nlist", "nprobe", "pq", "pq_bits", "train_size", "seed"]
            case "hnsw":
                keys = ["m", "ef_construction", "ef_search"]
            case _:
                keys = []
        values = asdict(self)
        return {key: values[key] for key in keys}

    @classmethod
    def from_manifest(cls, kind: Any, params: Any) -> IndexConfig:
        """The config a manifest records (``kind`` None: an index from before kinds: exact).

        Raises:
            IndexConfigError: an unknown kind, unknown keys or bad values.
        """
        if kind is None:
            return cls()
        if not isinstance(params, dict):
            raise IndexConfigError("params", "expected a JSON object")
        allowed = set(cls.__dataclass_fields__) - {"kind"}  # the kind is the manifest's own key
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise IndexConfigError("params", f"unknown key {unknown[0]!r}")
        return cls(kind=kind, **params)

    @staticmethod
    def kind_of(key: str) -> str:
        """The kind whose parameter ``key`` is (``nprobe``: ivf, ``ef_search``: hnsw).

        Raises:
            KeyError: ``key`` is no kind's parameter.
        """
        for kind in ("ivf", "hnsw"):
            if key in IndexConfig(kind).params():
                return kind
        raise KeyError(key)


class AnnIndex(FaissSearch):
    """Search a FAISS IVF or HNSW index of unit vectors; the interface of ``ExactIndex``.

    Queries are L2-normalised, so scores are cosine similarities of the stored (possibly
    PQ-compressed) vectors. A row that finds fewer than ``k`` vectors (IVF with few cells
    probed) is padded with id -1 and score -inf.

    Args:
        faiss_index: an index built by ``build_ann`` or read by ``read_ann``.
        config: its resolved config; ``nprobe``/``ef_search`` are applied to the index.
    """

    def __init__(self, faiss_index: Any, config: IndexConfig) -> None:
        self._index = faiss_index
        self.config = config
        self.normalize = True
        self.set_search_params(nprobe=config.nprobe, ef_search=config.ef_search)

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the search-time knobs (None keeps the current value).

        Raises:
            IndexConfigError: a value below 1, or ``nprobe`` above ``nlist``.
        """
        faiss = _import_faiss()
        config = replace(self.config,
                         nprobe=self.config.nprobe if nprobe is None else nprobe,
                         ef_search=self.config.ef_search if ef_search is None else ef_search)
        if config.kind == "ivf" and config.nlist and config.nprobe and config.nprobe > config.nlist:
            raise IndexConfigError("nprobe", f"{config.nprobe} is more than nlist ({config.nlist})")
        self.config = config
        if config.kind == "ivf":
            faiss.extract_index_ivf(self._index).nprobe = int(config.nprobe or 1)
        elif config.kind == "hnsw":
            self._index.hnsw.efSearch = config.ef_search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``FaissSearch.search``, with efSearch raised to ``k`` for the call (HNSW) and rows
        that found fewer than ``k`` vectors padded with id -1 and score -inf."""
        if self.config.kind == "hnsw" and self.config.ef_search < k:
            self._index.hnsw.efSearch = k  # efSearch below k cannot return k neighbours
        try:
            scores, ids = super().search(queries, k)
        finally:
            if self.config.kind == "hnsw":
                self._index.hnsw.efSearch = self.config.ef_search
        scores[ids < 0] = -np.inf
        return scores, ids


def build_ann(vectors: np.ndarray, config: IndexConfig) -> AnnIndex:
    """Train (IVF) and fill a FAISS index over the L2-normalised ``vectors (N, D)``.

    IVF trains k-means on ``train_size`` rows drawn without replacement with ``seed``; HNSW
    adds the rows in order. Both use the inner-product metric, so scores are cosines.

    Raises:
        IndexConfigError: ``config.kind`` is ``exact`` or a parameter does not fit the vectors.
        ValueError: ``vectors`` is not a finite 2-D array.
    """
    faiss = _import_faiss()
    matrix = np.ascontiguousarray(l2_normalize(as_matrix(vectors, "vectors")))  # (N, D)
    count, dim = matrix.shape
    config = config.resolved(count, dim)
    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
    elif config.kind == "ivf":
        assert config.nlist is not None and config.train_size is not None  # resolved
        index = _ivf(faiss, dim, config)
        rows = np.random.default_rng(config.seed).choice(count, config.train_size, replace=False)
        index.train(matrix[np.sort(rows)])  # (train_size, D)
    else:
        raise IndexConfigError("kind", "build_ann builds ivf or hnsw indexes; exact needs none")
    if count:
        index.add(matrix)
    return AnnIndex(index, config)


def _ivf(faiss: Any, dim: int, config: IndexConfig) -> Any:
    """An untrained IVF index (flat or PQ lists) with a seeded k-means."""
    quantizer = faiss.IndexFlatIP(dim)
    if config.pq is None:
        index = faiss.IndexIVFFlat(quantizer, dim, config.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, config.nlist, config.pq, config.pq_bits,
                                 faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = config.seed
    return index


def write_ann(index: AnnIndex, path: Path) -> None:
    """Write the FAISS index to ``path`` in FAISS's own binary format (no pickle)."""
    _import_faiss().write_index(index.faiss_index, str(path))


def read_ann(path: Path, config: IndexConfig, count: int, dim: int) -> AnnIndex:
    """Read a FAISS index written by ``write_ann`` and check it against the manifest.

    Raises:
        ContralignError: the file cannot be read, or its size or dimension differ.
    """
    faiss = _import_faiss()
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise ContralignError(f"{path}: cannot read the {config.kind} index ({first})") from None
    if (int(index.ntotal), int(index.d)) != (count, dim):
        raise ContralignError(f"{path}: holds {index.ntotal} vectors of dimension {index.d}; "
                              f"the manifest says {count} of {dim}")
    return AnnIndex(index, config)
