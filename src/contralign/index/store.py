"""Index persistence: a folder of embeddings, items and metadata, and search over it.

Folder layout (written atomically, see ``contralign.core.io.atomic_directory``)::

    DIR/embeddings.npy   float32 (N, D), plain .npy (no pickle)
    DIR/items.jsonl      one {"id": ..., "text": ...} per line, in row order
    DIR/ann.faiss        ivf and hnsw kinds only: the FAISS index over the embeddings
    DIR/index.json       fingerprint, model name, the tower and modality that embedded the
                         items, dim, count, created, similarity, format, the vector index's
                         kind and params (``IndexConfig.params``), and the SHA-256 of the
                         other files (checked on every load); without a kind: exact
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from contralign.core.errors import ContralignError
from contralign.core.io import atomic_directory, damaged_files, folder_checksums
from contralign.core.outputs import INDEX
from contralign.core.towers import FingerprintedEncoder
from contralign.index.ann import IndexConfig, IndexConfigError, build_ann, read_ann, write_ann
from contralign.index.exact import VectorIndex, as_matrix
from contralign.index.faiss_backend import Backend, build_index

EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.jsonl"
ANN_FILE = "ann.faiss"
META_FILE = "index.json"
# 3: index.json holds the vector index's kind and params; 2: the files' SHA-256; 1 (without)
# still loads. Each loads as exact when it names no kind.
FORMAT_VERSION = 3


# What ``SearchIndex.search`` needs of a tower: ``encode`` and ``fingerprint``.
QueryEncoder = FingerprintedEncoder


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id and text, and its cosine similarity to the query."""

    id: str
    text: str
    score: float


def save_index(
    directory: str | Path,
    vectors: np.ndarray,
    ids: Sequence[str],
    texts: Sequence[str],
    model_fingerprint: str,
    model_name: str,
    tower: str | None = None,
    modality: str = "text",
    config: IndexConfig | None = None,
) -> Path:
    """Write an index folder atomically: a kill leaves the old folder (or none), never half.

    Args:
        directory: the folder to create or replace.
        vectors: ``(N, D)`` embeddings of ``texts``, stored as float32.
        ids: ``N`` distinct item ids.
        texts: ``N`` item texts.
        model_fingerprint: ``encoder.fingerprint()`` of the tower that embedded the items.
        model_name: the model's name or path, for messages.
        tower: in a model of several towers, the tower that embedded the items (queries go
            through the other one); None for a model of one tower.
        modality: what the items are (``text``, ``image``); ``texts`` then holds each item's
            display string (an image's key).
        config: the vector index to build and store (default exact: none is stored; search
            scans the embeddings).

    Returns:
        The folder path.

    Raises:
        ValueError: lengths disagree, ids repeat, or ``vectors`` is not a finite 2-D array.
        IndexConfigError: a parameter of ``config`` does not fit the vectors (``nlist > N``).
    """
    matrix = as_matrix(vectors, "vectors")
    if not len(ids) == len(texts) == len(matrix):
        raise ValueError(
            f"vectors ({len(matrix)}), ids ({len(ids)}) and texts ({len(texts)}) differ in length"
        )
    if len(set(ids)) != len(ids):
        raise ValueError("ids: must be distinct")
    config = (config or IndexConfig()).resolved(*matrix.shape)
    ann = build_ann(matrix, config) if config.kind != "exact" else None  # before the folder
    meta = {
        "format": FORMAT_VERSION,
        "fingerprint": model_fingerprint,
        "model_name": model_name,
        "tower": tower,
        "modality": modality,
        "dim": int(matrix.shape[1]),
        "count": int(matrix.shape[0]),
        "similarity": "cosine",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": config.kind,
        "params": config.params(),
    }
    with atomic_directory(directory, INDEX) as tmp:
        np.save(tmp / EMBEDDINGS_FILE, matrix, allow_pickle=False)
        with open(tmp / ITEMS_FILE, "w", encoding="utf-8") as f:
            for item_id, text in zip(ids, texts, strict=True):
                f.write(json.dumps({"id": str(item_id), "text": text}, ensure_ascii=False) + "\n")
        if ann is not None:
            write_ann(ann, tmp / ANN_FILE)
        meta["sha256"] = folder_checksums(tmp, _stored_files(config.kind))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return Path(directory)


class SearchIndex:
    """A loaded index folder: items, their embeddings, the model fingerprint, a vector index.

    Args:
        path: the folder it came from.
        vectors: ``(N, D)`` float32 embeddings.
        ids: ``N`` item ids.
        texts: ``N`` item texts.
        meta: the contents of ``index.json``.
        backend: the exact backend (see ``build_index``) when no ``vector_index`` is given.
        vector_index: the stored ivf or hnsw index (``load_index`` reads it); None: exact.
    """

    def __init__(
        self,
        path: Path,
        vectors: np.ndarray,
        ids: list[str],
        texts: list[str],
        meta: dict[str, Any],
        backend: Backend = "auto",
        vector_index: VectorIndex | None = None,
    ) -> None:
        self.path = path
        self.ids = ids
        self.texts = texts
        self.meta = meta
        self.index: VectorIndex = (vector_index if vector_index is not None
                                   else build_index(vectors, backend=backend, normalize=True))

    @property
    def kind(self) -> str:
        """The stored vector index's kind (``exact``, ``ivf``, ``hnsw``); old folders: exact."""
        return str(self.meta.get("kind") or "exact")

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def model_name(self) -> str:
        return str(self.meta["model_name"])

    @property
    def tower(self) -> str | None:
        """The tower of a model of several towers that embedded the items (None: one tower)."""
        tower = self.meta.get("tower")
        return None if tower is None else str(tower)

    @property
    def modality(self) -> str:
        return str(self.meta.get("modality", "text"))

    def __len__(self) -> int:
        return len(self.ids)

    def check_encoder(self, encoder: QueryEncoder) -> None:
        """Raise ``ContralignError`` unless ``encoder`` is the model the index was built with."""
        theirs = encoder.fingerprint()
        if theirs != self.fingerprint:
            raise ContralignError(
                f"index was built with model {self.model_name} (fingerprint {self.fingerprint}), "
                f"query model has fingerprint {theirs}"
            )

    def search(
        self, encoder: QueryEncoder, query_texts: Sequence[Any], k: int, batch_size: int = 32,
        *, indexed_by: QueryEncoder | None = None,
    ) -> list[list[Hit]]:
        """Embed the queries with ``encoder`` and return the ``k`` best items for each, best
        first.

        Args:
            indexed_by: the tower that embedded the items, when the queries go through another
                tower of the same model (text queries against an image index); default
                ``encoder`` itself.

        Raises:
            ContralignError: the tower is not the one the index was built with.
            ValueError: ``k < 1``, or the encoder's dimension differs from the index's.
        """
        self.check_encoder(indexed_by if indexed_by is not None else encoder)
        if not query_texts:
            return []
        queries = encoder.encode(list(query_texts), batch_size=batch_size)  # (Q, D)
        return self.search_vectors(queries, k)

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Like ``search`` for query vectors ``(Q, D)`` embedded by the index's model."""
        scores, rows = self.index.search(queries, k)  # (Q, k), (Q, k)
        return [
            [
                Hit(self.ids[row], self.texts[row], float(score))
                for score, row in zip(row_scores, row_ids, strict=True)
                if row >= 0  # an approximate index pads with -1 when it found fewer than k
            ]
            for row_scores, row_ids in zip(scores, rows, strict=True)
        ]


def load_index(
    directory: str | Path, backend: Backend = "auto", *, nprobe: int | None = None,
    ef_search: int | None = None,
) -> SearchIndex:
    """Read an index folder written by ``save_index``. Never unpickles anything.

    Searches use the stored kind and params; ``backend="exact"`` scans the embeddings instead
    (the reference an approximate index is measured against).

    Args:
        nprobe: IVF cells to visit per query instead of the stored value (ivf only).
        ef_search: HNSW search list size instead of the stored value (hnsw only).

    Raises:
        ContralignError: a missing folder or file, or a corrupt or inconsistent one; the
            one-line message names the file. ``IndexConfigError`` for a bad override or one
            that does not apply to the folder's kind.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ContralignError(f"{folder}: index folder not found")
    meta = _read_meta(folder / META_FILE)
    config = _read_config(folder / META_FILE, meta)
    for key, value in (("nprobe", nprobe), ("ef_search", ef_search)):
        if value is not None and key not in config.params():
            raise IndexConfigError(key, f"applies to {IndexConfig.kind_of(key)} indexes only "
                                        f"({folder} is {config.kind})")
    _verify_files(folder, meta, config.kind)
    vectors = _read_embeddings(folder / EMBEDDINGS_FILE, meta)
    ids, texts = _read_items(folder / ITEMS_FILE, int(meta["count"]))
    vector_index = None
    if config.kind != "exact" and backend != "exact":
        ann = read_ann(folder / ANN_FILE, config, int(meta["count"]), int(meta["dim"]))
        ann.set_search_params(nprobe=nprobe, ef_search=ef_search)
        vector_index = ann
    return SearchIndex(folder, vectors, ids, texts, meta, backend=backend,
                       vector_index=vector_index)


def _stored_files(kind: str) -> list[str]:
    """The files of an index folder of ``kind`` that ``index.json`` checksums."""
    return [EMBEDDINGS_FILE, ITEMS_FILE] + ([ANN_FILE] if kind != "exact" else [])


def _read_config(path: Path, meta: dict[str, Any]) -> IndexConfig:
    """The manifest's kind and params; a folder written before kinds is exact.

    Raises:
        ContralignError: an unknown kind or bad params, naming ``index.json`` and the key.
    """
    try:
        return IndexConfig.from_manifest(meta.get("kind"), meta.get("params", {}))
    except IndexConfigError as err:
        raise ContralignError(f"{path}: {err}") from None


def _verify_files(folder: Path, meta: dict[str, Any], kind: str = "exact") -> None:
    """Compare the files with the checksums in ``index.json`` (format 2 and later).

    Raises:
        ContralignError: a file is missing or changed since the index was written.
    """
    checksums = meta.get("sha256")
    if checksums is None and meta.get("format") == 1:
        return  # written before indexes carried checksums
    if not isinstance(checksums, dict) or set(checksums) != set(_stored_files(kind)):
        raise ContralignError(f"{folder / META_FILE}: sha256: missing or incomplete")
    damaged = damaged_files(folder, checksums)
    if damaged:
        raise ContralignError(f"{folder / damaged[0]}: damaged: its checksum differs from "
                              f"{META_FILE}'s (the file changed after the index was written); "
                              "build the index again")


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContralignError(f"{path}: missing (not an index folder?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ContralignError(f"{path}: cannot read index metadata ({err})") from None
    if not isinstance(meta, dict):
        raise ContralignError(f"{path}: expected a JSON object")
    for key, kind in (("fingerprint", str), ("model_name", str), ("dim", int), ("count", int)):
        if not isinstance(meta.get(key), kind):
            raise ContralignError(f"{path}: {key}: missing or not {kind.__name__}")
    return meta


def _read_embeddings(path: Path, meta: dict[str, Any]) -> np.ndarray:
    try:
        vectors = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ContralignError(f"{path}: missing") from None
    except (OSError, ValueError, EOFError) as err:
        # Object arrays (pickles) end up here too: allow_pickle=False refuses them.
        raise ContralignError(f"{path}: cannot read embeddings ({err})") from None
    expected = (meta["count"], meta["dim"])
    if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32:
        raise ContralignError(f"{path}: expected a float32 array")
    if vectors.shape != expected:
        raise ContralignError(f"{path}: shape {vectors.shape} does not match index.json {expected}")
    if not np.isfinite(vectors).all():
        raise ContralignError(f"{path}: contains NaN or infinite values")
    return vectors


def _read_items(path: Path, count: int) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                try:
                    item = json.loads(line)
                    ids.append(str(item["id"]))
                    texts.append(str(item["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ContralignError(
                        f"{path}:{number}: expected a JSON object with id and text"
                    ) from None
    except FileNotFoundError:
        raise ContralignError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ContralignError(f"{path}: cannot read items ({err})") from None
    if len(ids) != count:
        raise ContralignError(f"{path}: {len(ids)} items, but index.json says {count}")
    return ids, texts
