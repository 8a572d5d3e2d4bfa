"""``OnnxTower``: a tower's ONNX export (``encoders.onnx_export``) run by onnxruntime.

What evaluation, the index and the server need of a tower: ``kind``, ``modality``, ``dim``,
``preprocess`` / ``preprocessor`` (the torch tower's own preprocessing classes: a text tower's
tokenizer and prompt, a static tower's tokenizer, an image tower's ``ImagePreprocessor``), and
``encode`` with the torch path's batching (texts sorted by token count, each batch padded only
to its longest row), and ``fingerprint``. No torch weights are read: the graph holds them.

**Fingerprints.** The fp32 graph is the same model as the torch tower, so it has the torch
tower's fingerprint (from ``contralign.json``): an index built with one backend takes queries
from the other. The int8 graph embeds differently: its fingerprint is derived from the source
fingerprint and the int8 file's SHA-256, so an index refuses to mix it with fp32 embeddings.
Each graph's SHA-256 is checked against ``contralign.json`` at load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from contralign.core.errors import ConfigError, ContralignError, ModelNotFoundError
from contralign.core.io import file_sha256
from contralign.core.outputs import MODEL, read_manifest
from contralign.core.towers import Modality
from contralign.encoders.lengths import trim_padding
from contralign.encoders.onnx_export import ONNX_EXTRA, ONNX_KEY
from contralign.encoders.static import pad_ids, tokenize

Precision = Literal["fp32", "int8"]
# Above this many items, encode() shows a progress bar unless told otherwise.
PROGRESS_THRESHOLD = 1000
# A text batch holds at most this many padded tokens (rows x longest row) as well as at most
# batch_size rows: onnxruntime's attention keeps (rows, heads, T, T) scores, and at T = 256 smaller
# batches stay in cache. all-MiniLM-L6-v2 on the 204 bundled abstracts, 2 threads, onnxruntime
# alone: texts/s at 4 / 8 / 32 rows of 256 tokens: fp32 49.4 / 49.0 / 44.5, int8 94.0 / 88.5 /
# 84.0; short sentences (STS-B, <= 64 tokens) keep their 32 rows.
MAX_BATCH_TOKENS = 1024


def export_hint(folder: Path | str) -> str:
    return f"contralign export {folder} --onnx -o DIR"


class OnnxTower(nn.Module):
    """A tower's exported graph in an onnxruntime session (no parameters of its own: an
    ``nn.Module`` only so that a model of several towers holds it like any tower).

    Args:
        session: the onnxruntime ``InferenceSession`` of the graph.
        entry: the ``onnx`` entry of ``contralign.json``.
        kind: the tower kind (``text``, ``static``, ``image``).
        preprocessor: the torch tower's preprocessing object for this folder.
        fingerprint: see the module docstring.
        tokenizer: a text or static tower's tokenizer (token counts, lengths).
        config: a text tower's ``TextEncoderConfig`` (prompts, maximum length).
        precision: ``fp32`` or ``int8``.
    """

    def __init__(self, session: Any, entry: dict[str, Any], *, kind: str, preprocessor: Any,
                 fingerprint: str, tokenizer: Any = None, config: Any = None,
                 precision: Precision = "fp32") -> None:
        super().__init__()
        self.session = session
        self.kind = kind
        self.modality: Modality = "image" if kind == "image" else "text"
        self.preprocessor = preprocessor
        self.tokenizer = tokenizer
        self.config = config
        self.precision = precision
        self.inputs = [str(name) for name in entry["inputs"]]
        self._dim = int(entry["dim"])
        self._fingerprint = fingerprint

    @property
    def dim(self) -> int:
        return self._dim

    @classmethod
    def load(cls, folder: str | Path, *, int8: bool = False,
             threads: int | None = None) -> OnnxTower:
        """The export in ``folder`` (fp32, or int8 with ``int8``) on ``threads`` intra-op
        threads (default: torch's ``get_num_threads()``).

        Raises:
            ModelNotFoundError: no export in ``folder``, its file missing or changed since the
                export (SHA-256), or no int8 graph when one is asked for.
            ContralignError: onnxruntime is not installed.
        """
        folder = Path(folder)
        manifest = read_manifest(folder, MODEL) if folder.is_dir() else None
        entry = manifest.get(ONNX_KEY) if manifest else None
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            raise ModelNotFoundError(f"model: {folder} has no ONNX export; make one with "
                                     f"`{export_hint(folder)}`")
        assert manifest is not None
        precision: Precision = "int8" if int8 else "fp32"
        path, digest = _checked_file(folder, entry, precision)
        source = str(manifest.get("fingerprint", ""))
        fingerprint = source if precision == "fp32" else f"{source}-int8-{digest[:12]}"
        kind = str(manifest["tower"])
        preprocessor, tokenizer, config = _preprocessing(folder, kind, manifest, entry)
        return cls(ort_session(path, threads), entry, kind=kind, preprocessor=preprocessor,
                   fingerprint=fingerprint, tokenizer=tokenizer, config=config,
                   precision=precision)

    # --- Tower protocol -------------------------------------------------------------------

    def preprocess(self, items: Sequence[Any]) -> dict[str, Tensor]:
        """The torch tower's preprocessing (tokens and mask ``(B, T)``, or pixels
        ``(B, 3, S, S)``)."""
        return self.preprocessor(items)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """``(B, D)``: a preprocessed batch through the graph (right padding trimmed first)."""
        if "attention_mask" in batch:
            batch = trim_padding(batch)
        feed = {name: batch[name].cpu().numpy() for name in self.inputs}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        """Not available: the graph runs the whole tower at once.

        Raises:
            ContralignError: always (features, hidden states and training need the torch
                backend).
        """
        raise ContralignError("the ONNX backend runs the whole tower as one graph: features, "
                              "hidden states and training need --backend torch")

    def project(self, features: Tensor) -> Tensor:
        """Not available (see ``features``).

        Raises:
            ContralignError: always.
        """
        return self.features({})

    def fingerprint(self) -> str:
        return self._fingerprint

    def save(self, path: Any, extra: dict[str, Any] | None = None) -> None:
        """Raises: ContralignError: always (export the torch tower instead)."""
        raise ContralignError("an ONNX tower is not saved: export the torch tower with "
                              "`contralign export MODEL --onnx -o DIR`")

    # --- inference ------------------------------------------------------------------------

    def prompt(self, prompt_name: str | None = None) -> str:
        """A text tower's prompt text (None: the default prompt, "" without one).

        Raises:
            ConfigError: a prompt name the tower does not have, or a tower without prompts.
        """
        if self.kind != "text":
            if prompt_name is not None:
                raise ConfigError(f"prompt_name: a {self.kind} tower has no prompts")
            return ""
        if prompt_name is None:
            return str(self.config.default_prompt)
        if prompt_name not in self.config.prompts:
            raise ConfigError(f"prompt_name: {prompt_name!r} is not a prompt of this tower "
                                  f"(it has: {', '.join(self.config.prompts) or 'none'})")
        return str(self.config.prompts[prompt_name])

    def encode(self, items: Sequence[Any], batch_size: int = 32,
               show_progress: bool | None = None, prompt_name: str | None = None) -> np.ndarray:
        """Embed items as a float32 array ``(N, D)`` in input order.

        Texts are tokenized once, sorted longest first and batched, each batch
        padded to its own longest row (as ``TextEncoder.encode``) and a text batch also cut to
        at most ``MAX_BATCH_TOKENS`` padded tokens; images go in input order.

        Raises:
            ConfigError: ``prompt_name`` names no prompt of the tower.
            DataError: an image that cannot be read.
        """
        items = list(items)
        preprocessor = self.preprocessor
        if self.kind == "text":
            preprocessor = dataclasses.replace(preprocessor, prompt=self.prompt(prompt_name))
        else:
            self.prompt(prompt_name)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        order, lengths, batch_of = self._batches(items, preprocessor)
        show = len(items) > PROGRESS_THRESHOLD if show_progress is None else show_progress
        for rows in _progress(_spans(order, lengths, batch_size), show):
            out[rows] = self(batch_of(rows)).numpy()
        return out

    def _batches(self, items: list[Any], preprocessor: Any
                 ) -> tuple[np.ndarray, np.ndarray | None,
                            Callable[[np.ndarray], dict[str, Tensor]]]:
        """The row order (texts longest first, ties in input order; images as given), a text
        tower's token counts ``(N,)`` (None otherwise) and the batch of given rows. Texts are
        tokenized once (a static tower's tokenizer is most of its cost)."""
        if self.kind == "image":
            return (np.arange(len(items)), None,
                    lambda rows: preprocessor([items[i] for i in rows]))
        if self.kind == "static":
            ids = [e.ids for e in tokenize(self.tokenizer, items)]
            order = np.argsort([-len(row) for row in ids], kind="stable")
            return order, None, lambda rows: pad_ids([ids[i] for i in rows])
        tokens = preprocessor.tokenize(items)
        lengths = np.array([len(row) for row in tokens["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        return order, lengths, lambda rows: preprocessor.pad(tokens, rows)


# --- loading ----------------------------------------------------------------------------------


def _checked_file(folder: Path, entry: dict[str, Any], precision: Precision) -> tuple[Path, str]:
    """The graph file of ``precision`` and its SHA-256, checked against ``contralign.json``.

    Raises:
        ModelNotFoundError: no such graph, the file is missing, or its bytes changed.
    """
    record = entry["files"].get(precision)
    if not isinstance(record, dict):
        raise ModelNotFoundError(f"model: {folder} has no int8 ONNX export; make one with "
                                 f"`contralign export {folder} --onnx --int8 -o DIR`")
    path = folder / str(record["path"])
    try:
        digest = file_sha256(path)
    except OSError:
        raise ModelNotFoundError(f"model: {path}: missing; export again with "
                                 f"`{export_hint(folder)}`") from None
    if digest != record.get("sha256"):
        raise ModelNotFoundError(f"model: {path}: its SHA-256 differs from the one "
                                 f"{MODEL.manifest} recorded at export (the file changed); "
                                 f"export again with `{export_hint(folder)}`")
    return path, digest


def ort_session(graph: Path | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of a graph file (or serialised graph) with every graph
    optimisation, on ``threads`` intra-op threads (None: as many as torch uses).

    Raises:
        ContralignError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ContralignError(f"backend: the ONNX backend needs onnxruntime: {ONNX_EXTRA}"
                              ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _preprocessing(folder: Path, kind: str, manifest: dict[str, Any], entry: dict[str, Any]
                   ) -> tuple[Any, Any, Any]:
    """The preprocessor, tokenizer and settings of a ``kind`` folder, without its weights."""
    match kind:
        case "text":
            from transformers import AutoTokenizer

            from contralign.encoders.folder import check_prompts, read_folder_config
            from contralign.encoders.text import TextPreprocessor

            config, _ = read_folder_config(folder)
            check_prompts(config)
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            return (TextPreprocessor(tokenizer, config.max_length, config.default_prompt),
                    tokenizer, config)
        case "static":
            from tokenizers import Tokenizer

            from contralign.encoders.static import StaticPreprocessor

            words = Tokenizer.from_file(str(folder / "tokenizer.json"))
            words.no_padding()
            max_length = manifest.get("max_length")  # as StaticEncoder sets its copy
            if max_length is None:
                words.no_truncation()
            else:
                words.enable_truncation(int(max_length))
            return StaticPreprocessor(words), words, None
        case "image":
            from contralign.encoders.imaging import ImagePreprocessor

            pre = entry["preprocess"]
            return (ImagePreprocessor(int(pre["image_size"]), tuple(pre["mean"]),
                                      tuple(pre["std"])), None, None)
    raise ModelNotFoundError(f"model: {folder}: a {kind!r} tower has no ONNX backend")


def _spans(order: np.ndarray, lengths: np.ndarray | None, batch_size: int) -> list[np.ndarray]:
    """``order`` cut into batches of at most ``batch_size`` rows and, where token counts are
    given (longest first), at most ``MAX_BATCH_TOKENS`` padded tokens (one row at least)."""
    spans, start = [], 0
    while start < len(order):
        rows = batch_size
        if lengths is not None:  # the first row of a batch is its longest
            rows = max(1, min(rows, MAX_BATCH_TOKENS // int(lengths[order[start]])))
        spans.append(order[start:start + rows])
        start += rows
    return spans


def _progress(items: list[np.ndarray], show: bool) -> Any:
    if not show:
        return items
    from rich.progress import track

    return track(items, description="Encoding (onnxruntime)", transient=True)
