"""What the server serves, without any web framework: the model, its query tower, the index.

``load_served_model(model, index)`` loads a model the way ``contralign search`` does (a tower of
a model of several towers embeds text queries against an index the other tower built) and
refuses an index built with a model that embeds differently (``SearchIndex.check_encoder``).
``ServeSettings`` holds the limits and the batching settings; ``TokenCounter`` counts the
tokens the model sees, for the OpenAI-style ``usage`` field.

The HTTP layer (``serving.app``) runs every call into a tower on a worker thread: the tower's
``encode`` only through the dynamic batcher's single thread, the token counter on its own copy
of the tokenizer (a transformers fast tokenizer must not be used from two threads at once: it
changes its truncation settings on each call).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contralign.core.errors import ConfigError, ContralignError
from contralign.core.towers import modality_of
from contralign.index import SearchIndex, load_index

if TYPE_CHECKING:
    from contralign.encoders.loading import Backend


@dataclass(frozen=True)
class ServeSettings:
    """Limits, batching and authentication of one server.

    Attributes:
        max_batch: the most items one encoder batch takes (the dynamic batcher's bound).
        max_wait_s: how long the batcher waits for more requests before it runs a batch.
        max_items: the most texts (or pairs) one request may carry.
        max_chars: the most characters one text may have.
        max_k: the most hits one search may ask for.
        max_body_bytes: the largest request body, in bytes (413 beyond).
        token: the bearer token every API call must carry (None: no authentication).
    """

    max_batch: int = 64
    max_wait_s: float = 0.005
    max_items: int = 256
    max_chars: int = 8192
    max_k: int = 100
    max_body_bytes: int = 4 * 1024 * 1024
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for key in ("max_batch", "max_items", "max_chars", "max_k", "max_body_bytes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"serve: {key}: must be at least 1, got {getattr(self, key)}")
        if self.max_wait_s < 0:
            raise ConfigError(f"serve: max_wait_s: must be >= 0, got {self.max_wait_s}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("serve: --token: empty; give a token or leave the option out")


@dataclass
class ServedModel:
    """A model ready to answer: the tower that embeds text queries and, with an index, the tower
    that embedded its items.

    Attributes:
        name: the model's name or path, as shown by ``/info`` and ``/v1/embeddings``.
        query: the text tower behind ``/embed``, ``/similarity`` and the search queries.
        towers: every tower of the model, by name (one tower: ``{"tower": query}``).
        index: the index ``/search`` answers from (None: ``/search`` answers 404).
        indexed_by: the tower that embedded the index's items when it is not ``query``.
    """

    name: str
    query: Any
    towers: dict[str, Any]
    index: SearchIndex | None = None
    indexed_by: Any = None

    @property
    def dim(self) -> int:
        return int(self.query.dim)

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` reports (no weights are touched beyond stored fingerprints)."""
        query_name = next(n for n, t in self.towers.items() if t is self.query)
        index = None
        if self.index is not None:
            meta = self.index.meta
            index = {"size": len(self.index), "fingerprint": self.index.fingerprint,
                     "model": self.index.model_name, "tower": self.index.tower,
                     "modality": self.index.modality, "dim": int(meta["dim"]),
                     "created": meta.get("created"), "path": str(self.index.path)}
        return {
            "model": self.name,
            "dim": self.dim,
            "query_tower": query_name,
            "towers": [{"name": n, "kind": str(getattr(t, "kind", "?")),
                        "modality": modality_of(t), "dim": int(t.dim),
                        "fingerprint": t.fingerprint()} for n, t in self.towers.items()],
            "index": index,
        }


def load_served_model(model: str | Path, index_dir: str | Path | None = None, *,
                      backend: Backend = "torch") -> ServedModel:
    """Load ``model`` (and the index in ``index_dir``) as ``contralign search`` does.

    Args:
        model: a model folder, run directory, installed package, static vectors or hub id.
        index_dir: an index folder written by ``contralign index``.
        backend: what runs the towers: ``torch``, ``onnx`` or ``onnx-int8``
            (``encoders.loading.load_tower``).

    Raises:
        ContralignError: nothing loadable, a model without a text tower, a broken index, or an
            index built with a model that embeds differently (its fingerprint differs).
    """
    from contralign.encoders.loading import load_model, load_tower, model_source, multi_tower

    name = str(model)
    index = load_index(index_dir) if index_dir is not None else None
    if multi_tower(model_source(name)) is None:
        tower = load_tower(name, backend=backend)
        return served(name, {"tower": tower}, tower, index)
    full = load_model(name, backend=backend)
    towers = dict(full.online())
    if index is not None and index.tower is not None:
        if index.tower not in towers:
            raise ContralignError(f"--index: {index.path} was embedded by tower {index.tower!r}, "
                                  f"which model {name} does not have ({', '.join(towers)})")
        return served(name, towers, full.query_side(index.tower), index, towers[index.tower])
    texts = [full.side(role) for role in ("anchor", "positive")
             if modality_of(full.side(role)) == "text"]
    return served(name, towers, texts[0] if texts else full.side("anchor"), index)


def served(name: str, towers: dict[str, Any], query: Any, index: SearchIndex | None = None,
           indexed_by: Any = None) -> ServedModel:
    """A ``ServedModel`` after the checks every server needs.

    Raises:
        ContralignError: the query tower does not embed text, or the index was built with a
            model that embeds differently.
    """
    if modality_of(query) != "text":
        raise ContralignError(f"serve: model {name} embeds {modality_of(query)}s only; the "
                              "server takes text (a model with a text tower serves an image "
                              "index)")
    if index is not None:
        index.check_encoder(indexed_by if indexed_by is not None else query)
    return ServedModel(name, query, towers, index, indexed_by)


class TokenCounter:
    """Counts the tokens a text tower sees for each text (with its prompt and special tokens,
    truncated as the tower truncates), on a private copy of the tokenizer.

    Args:
        tower: a ``TextEncoder`` or ``StaticEncoder`` (or the ``OnnxTower`` of one); anything
            else counts nothing.
    """

    def __init__(self, tower: Any) -> None:
        from contralign.encoders.onnx_tower import OnnxTower
        from contralign.encoders.static import StaticEncoder
        from contralign.encoders.text import TextEncoder

        self._lock = threading.Lock()
        self._tower = tower
        self._tokenizer: Any = None
        onnx_kind = tower.kind if isinstance(tower, OnnxTower) else None  # same tokenizers
        self._text = isinstance(tower, TextEncoder) or onnx_kind == "text"
        if self._text:
            self._tokenizer = copy.deepcopy(tower.tokenizer)
        elif isinstance(tower, StaticEncoder) or onnx_kind == "static":
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_str(tower.tokenizer.to_str())  # with its truncation

    @property
    def available(self) -> bool:
        return self._tokenizer is not None

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text (zeros when the tower has no tokenizer). Thread-safe; blocking."""
        if self._tokenizer is None:
            return [0] * len(texts)
        with self._lock:
            if self._text:
                prompted = self._tower.preprocessor.prompted(list(texts))
                ids = self._tokenizer(prompted, truncation=True, add_special_tokens=True,
                                      max_length=self._tower.config.max_length)["input_ids"]
                return [len(row) for row in ids]
            encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
            return [len(e.ids) for e in encode(list(texts), add_special_tokens=False)]
