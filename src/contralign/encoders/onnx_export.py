"""``export_onnx``: a tower's saved folder plus the whole tower as an ONNX graph (and int8).

The exported folder is the tower's own folder (``tower.save``: the torch backend still loads it
and gives the same fingerprint) with::

    onnx/model.onnx         fp32: backbone, pooling, head and L2 normalisation in one graph;
                            the batch axis is dynamic, and for text the sequence axis too
    onnx/model_qint8.onnx   with ``int8``: the same graph with int8 weights
                            (``onnxruntime.quantization.quantize_dynamic``, per channel)

and an ``"onnx"`` entry in ``contralign.json`` (``ONNX_KEY``): each file's path, SHA-256 and
precision, the opset, the graph's input names, what the preprocessing needs, the versions of
torch, onnx and onnxruntime, and what the check measured. ``encoders.onnx_tower`` loads it.

Before the folder is put in place, onnxruntime embeds a few items through the exported folder
(``OnnxTower``, so the preprocessing is checked too) and the result must match the torch tower
within ``fp32_tolerance`` (max abs): a larger difference is a bug of the export, not a user error.
The tolerance is 1e-5 on embeddings of unit scale (every normalised tower) and 1e-5 of the
largest value otherwise: EfficientNet-Lite0's raw features reach 5.6 on CIFAR-10 images, where
torch's and onnxruntime's fp32 convolutions differ by 1.3e-5 while each lies 7e-6 and 8e-6 from a
float64 run of the same tower (rounding, not a wrong graph).

**int8.** Dynamic quantisation (int8 weights, activations quantised per batch) suits the matrix
products of transformers and the table of a static tower: on the 204 bundled paper titles the
int8 graph's cosine to fp32 is at least 0.987 (mean 0.992) for all-MiniLM-L6-v2 and 0.9994 for
wordllama-256. It does not suit convolutions: EfficientNet-Lite0's int8 graph gave cosines down to
0.36 on CIFAR-10 images (its depthwise convolutions and ReLU6 ranges) and ran slower than fp32
(ConvInteger: 12.4 s against 7.8 s for 64 images), the CIFAR ResNet 5x slower; so an image tower
is refused ``int8`` (calibrated static quantisation would be the way there). An int8 graph whose
smallest cosine to torch on the check items falls below ``INT8_MIN_COSINE`` is refused too.

**Attention.** A text tower is traced with transformers' ``eager`` attention (its own, ``sdpa``
by default, is restored afterwards; ``contralign.json`` records ``"attention"``). The ``sdpa``
trace builds a float mask in every layer, scales Q and K apart and adds an ``IsNaN``/``Where``
pass over the ``(B, heads, T, T)`` probabilities, all of which onnxruntime runs as written; the
``eager`` trace is MatMul, scale, mask, Softmax, MatMul. Measured on all-MiniLM-L6-v2
(onnxruntime 1.32, batch 32, texts sorted by length, idle threads not spinning, median of 3 on
2 shared cores): on the 204 bundled abstracts the eager graph encodes 1.22x (fp32) and 1.44x
(int8) as many texts per second as the sdpa graph on one thread; on 1,000 STS-B dev sentences
the two run at the same speed (0.99x and 1.02x, median of 5). onnxruntime's transformer optimizer
(``optimize_model(model_type="bert")``) fuses the eager graph's attention into its ``Attention``
operator (6 of 6 layers; the sdpa graph: none), but the fused graph was slower than the eager one
(one thread: -12 % fp32 and -17 % int8 on the STS-B sentences, -2 % and -6 % on the abstracts;
its CPU kernel projects Q, K and V head by head, small products for short texts), so the export
writes the eager graph unfused and leaves fusion to onnxruntime's own session optimisations,
after one rewrite of its own: the key padding mask folded into ``Q K^T``
(``onnx_attention.fold_key_mask``, recorded as ``"mask_folded_layers"``).

**Exporter.** torch's TorchScript exporter (``dynamo=False``). Measured on all-MiniLM-L6-v2
(torch 2.13, onnxruntime 1.32, one thread, 256 sentences): it exports in 2 s against 9.5 s for
the dynamo exporter, writes one self-contained file (dynamo writes the weights beside it as
external data), needs no onnxscript, and onnxruntime runs both graphs at the same speed (2.16 s
each) with the same error against torch (1.8e-7 and 2.7e-7 max abs). ``dynamo=True`` would add a
dependency for no gain here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from contralign.core.errors import ContralignError
from contralign.core.io import atomic_directory, file_sha256
from contralign.core.outputs import MODEL, check_output_folder
from contralign.encoders.model import AlignmentModel
from contralign.encoders.pooling import pool

ONNX_KEY = "onnx"  # contralign.json's entry for the export
ONNX_DIR = "onnx"
FP32_FILE = f"{ONNX_DIR}/model.onnx"
INT8_FILE = f"{ONNX_DIR}/model_qint8.onnx"
OUTPUT_NAME = "sentence_embedding"  # "embedding" collides with a node name of BERT graphs
OPSET = 17  # LayerNormalization as one operator
FP32_TOLERANCE = 1e-5  # max abs difference from torch's embeddings, per unit of their scale
INT8_MIN_COSINE = 0.95  # smallest cosine of an int8 embedding to torch's on the check items
ONNX_EXTRA = 'pip install "contralign[onnx]"'

# Items the check embeds: texts of several lengths (so a batch holds padded rows) and images.
_CHECK_TEXTS = [
    "A man is playing a guitar.",
    "Contrastive learning pulls matching pairs together and pushes the rest apart.",
    "ok",
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill.",
    "",
    "Embeddings, exported.",
]


def export_onnx(tower: Any, folder: str | Path, *, int8: bool = False,
                overwrite: bool = False) -> dict[str, Any]:
    """Write ``folder``: ``tower``'s saved folder plus its ONNX export, atomically.

    Args:
        tower: a tower (``text``, ``static`` or ``image``), or an ``AlignmentModel``: a model of
            several towers gets one subfolder per online tower, each with its own export.
        folder: the folder to write (new, empty, or a model folder of ours with ``overwrite``).
        int8: also write the dynamically quantised graph.
        overwrite: replace a model folder contralign wrote.

    Returns:
        The ``onnx`` entry written (of each tower, by name, for a model of several towers).

    Raises:
        ContralignError: onnx or onnxruntime is not installed.
        OutputError: ``folder`` holds files that are not ours, or ours without ``overwrite``.
        ContralignError: ``int8`` for an image tower; an int8 graph too far from torch
            (``INT8_MIN_COSINE``).
        RuntimeError: the fp32 graph embeds differently from torch (a bug).
    """
    _require_onnx()
    kinds = [t.kind for t in (tower.online().values() if isinstance(tower, AlignmentModel)
                              else [tower])]
    if int8 and "image" in kinds:
        raise ContralignError("export: --int8: an image tower is exported in fp32 only (dynamic "
                              "int8 quantisation of its convolutions loses too much and runs "
                              "slower than fp32); leave out --int8, or export the text tower "
                              "with --tower")
    folder = Path(folder)
    check_output_folder(folder, MODEL, "--output", inputs=[], replace=overwrite)
    towers: dict[str, Any] = {}
    if isinstance(tower, AlignmentModel) and len(tower.online()) == 1:
        tower = next(iter(tower.online().values()))
    with atomic_directory(folder, MODEL) as tmp:
        tower.save(tmp)  # the tower's (or model's) own folder: torch loads it as before
        if isinstance(tower, AlignmentModel):
            towers = {name: write_onnx(t, tmp / name, int8=int8)
                      for name, t in tower.online().items()}
            return towers
        return write_onnx(tower, tmp, int8=int8)


def write_onnx(tower: Any, folder: Path, *, int8: bool) -> dict[str, Any]:
    """Add ``onnx/`` and the ``onnx`` entry to ``folder``, which ``tower.save`` just wrote.

    Raises:
        RuntimeError: the fp32 graph embeds differently from torch (a bug).
    """
    graph, example, names, axes = _graph_of(tower)
    (folder / ONNX_DIR).mkdir()
    started = time.perf_counter()
    was_training = tower.training
    tower.eval()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
                _eager_attention(tower) as attention:
            warnings.simplefilter("ignore")  # tracer and deprecation notes, not the user's
            torch.onnx.export(graph, example, str(folder / FP32_FILE), input_names=names,
                              output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
    finally:
        tower.train(was_training)
    folded = _fold_attention_mask(folder / FP32_FILE) if tower.kind == "text" else 0
    entry = _entry(tower, folder, names)
    if attention is not None:
        entry["attention"] = attention  # the implementation the graph was traced with
        entry["mask_folded_layers"] = folded  # onnx_attention.fold_key_mask
    entry["export_seconds"] = round(time.perf_counter() - started, 2)
    _write_entry(folder, entry)
    entry["fp32_max_abs_diff"] = _check_fp32(tower, folder)
    if int8:
        started = time.perf_counter()
        _quantize(folder / FP32_FILE, folder / INT8_FILE)
        entry["files"]["int8"] = {"path": INT8_FILE, "sha256": file_sha256(folder / INT8_FILE),
                                  "precision": "int8 weights (dynamic quantisation, per "
                                               "channel), fp32 activations"}
        entry["int8_seconds"] = round(time.perf_counter() - started, 2)
        _write_entry(folder, entry)
        entry["int8_min_cosine"] = _int8_cosine(tower, folder)
    _write_entry(folder, entry)
    return entry


def _fold_attention_mask(path: Path) -> int:
    """``onnx_attention.fold_key_mask`` on the graph file; the number of layers folded. A graph
    whose weights lie beside it (external data: a model over protobuf's 2 GB, which cannot be
    rewritten as one message) is left unfolded."""
    import onnx

    from contralign.encoders.onnx_attention import fold_key_mask

    model = onnx.load(str(path), load_external_data=False)
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        return 0
    folded = fold_key_mask(model)
    if folded:
        onnx.save(model, str(path))
    return folded


def _require_onnx() -> None:
    """Raises: ContralignError: onnx or onnxruntime missing (one line with the extra)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ContralignError(f"export: ONNX export needs onnx and onnxruntime: {ONNX_EXTRA}"
                              ) from None


# --- graphs -----------------------------------------------------------------------------------


class _TextGraph(nn.Module):
    """A text tower as one graph: token ids ``(B, T)`` -> ``(B, D)``. The caller trims the
    padding (``TextEncoder.features`` trims with Python ints, which tracing would freeze)."""

    def __init__(self, tower: Any, names: list[str]) -> None:
        super().__init__()
        self.tower = tower
        self.names = names

    def forward(self, *inputs: Tensor) -> Tensor:
        batch = dict(zip(self.names, inputs, strict=True))
        hidden = self.tower.model(**batch).last_hidden_state  # (B, T, H)
        return self.tower.project(pool(hidden, batch["attention_mask"],
                                       self.tower.config.pooling))  # (B, D)


class _StaticGraph(nn.Module):
    """A static tower as one graph: right-padded ids and mask ``(B, T)`` -> ``(B, D)``: the
    masked mean of the token vectors (``EmbeddingBag`` exports as a loop; a gather and a sum
    are the same mean), zeros for a text without tokens."""

    def __init__(self, tower: Any) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        vectors = self.tower.embedding.weight[input_ids]  # (B, T, D)
        mask = attention_mask.to(vectors.dtype)  # (B, T)
        share = mask / mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, T): 1/length per token
        mean = (share.unsqueeze(1) @ vectors).squeeze(1)  # (B, 1, T) @ (B, T, D) -> (B, D)
        return self.tower.project(mean)


class _ImageGraph(nn.Module):
    """An image tower as one graph: ``pixel_values`` ``(B, 3, S, S)`` -> ``(B, D)`` (eval mode:
    BatchNorm on its running statistics)."""

    def __init__(self, tower: Any) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.tower({"pixel_values": pixel_values})


@contextlib.contextmanager
def _eager_attention(tower: Any) -> Iterator[str | None]:
    """A text tower's transformers model with ``eager`` attention while it is traced, its own
    implementation (``sdpa`` by default) restored afterwards; yields the one traced (None: not
    a transformers model). Why: the ``sdpa`` trace builds a float mask in every layer and adds
    an ``IsNaN``/``Where`` pass over the ``(B, heads, T, T)`` probabilities; the ``eager`` trace
    is MatMul, scale, mask, Softmax, MatMul (see the module docstring for the speed).

    transformers 5 switches a loaded model in place (``set_attn_implementation``); transformers
    4 models (BERT among them) pick their attention classes when built and only log that they
    cannot switch, so the tower traces an eager copy built from the same config and weights."""
    model = getattr(tower, "model", None) if tower.kind == "text" else None
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if model is None or before in (None, "eager"):
        yield before
        return
    if callable(getattr(model, "set_attn_implementation", None)):
        with _quiet_transformers():  # transformers 4: "does not support setting ... dynamically"
            model.set_attn_implementation("eager")
        if getattr(config, "_attn_implementation", before) == "eager":
            try:
                yield "eager"
            finally:
                model.set_attn_implementation(before)
            return
    tower.model = _eager_copy(model)
    try:
        yield "eager"
    finally:
        tower.model = model


def _eager_copy(model: Any) -> nn.Module:
    """``model`` (a transformers model) built again from its config with ``eager`` attention,
    with its weights, device and dtype, in eval mode."""
    config = copy.deepcopy(model.config)
    config._attn_implementation = "eager"
    eager = type(model)(config)
    eager.load_state_dict(model.state_dict())
    weight = next(model.parameters())
    return eager.to(device=weight.device, dtype=weight.dtype).eval()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _graph_of(tower: Any) -> tuple[nn.Module, tuple[Tensor, ...], list[str],
                                   dict[str, dict[int, str]]]:
    """The module to export, an example input, the input names and the dynamic axes."""
    match tower.kind:
        case "text":
            batch = tower.preprocess(_CHECK_TEXTS[:2])
            names = list(batch)
            axes = {name: {0: "batch", 1: "sequence"} for name in names}
            graph: nn.Module = _TextGraph(tower, names)
        case "static":
            batch = tower.preprocess(_CHECK_TEXTS[:2])
            names = ["input_ids", "attention_mask"]
            axes = {name: {0: "batch", 1: "sequence"} for name in names}
            graph = _StaticGraph(tower)
        case "image":
            batch = tower.preprocess(check_images(tower.config.image_size, 2))
            names = ["pixel_values"]
            axes = {"pixel_values": {0: "batch"}}
            graph = _ImageGraph(tower)
        case _:
            raise ContralignError(f"export: a {tower.kind!r} tower has no ONNX export (text, "
                                  "static and image towers have)")
    axes[OUTPUT_NAME] = {0: "batch"}
    device = next(tower.parameters()).device  # the example goes where the weights are
    return graph, tuple(batch[name].to(device) for name in names), names, axes


def check_images(size: int, count: int) -> list[np.ndarray]:
    """``count`` deterministic ``(size, size, 3)`` uint8 images: gradients, stripes and noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    images = []
    for i in range(count):
        base = np.stack([np.add.outer(ramp, ramp * (i % 3)) / (1 + i % 3),
                         np.tile(ramp, (size, 1)).T, (np.indices((size, size)).sum(0) % 16) * 16],
                        axis=-1)  # (S, S, 3)
        noise = rng.normal(0, 20, base.shape)
        images.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return images


# --- the manifest entry and the checks --------------------------------------------------------


def _entry(tower: Any, folder: Path, names: list[str]) -> dict[str, Any]:
    import onnx
    import onnxruntime

    entry: dict[str, Any] = {
        "files": {"fp32": {"path": FP32_FILE, "sha256": file_sha256(folder / FP32_FILE),
                           "precision": "fp32"}},
        "opset": OPSET, "inputs": names, "output": OUTPUT_NAME, "dim": int(tower.dim),
        "exporter": "torch.onnx (TorchScript, dynamo=False)",
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }
    if tower.kind == "image":
        pre = tower.preprocessor
        entry["preprocess"] = {"image_size": int(pre.image_size), "mean": list(pre.mean),
                               "std": list(pre.std)}
    return entry


def _write_entry(folder: Path, entry: dict[str, Any]) -> None:
    path = folder / MODEL.manifest
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest[ONNX_KEY] = entry
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _check_items(tower: Any) -> list[Any]:
    if tower.kind == "image":
        return check_images(tower.config.image_size, 5)  # type: ignore[return-value]
    return list(_CHECK_TEXTS)


def fp32_tolerance(expected: np.ndarray) -> float:
    """The largest max abs difference allowed from torch's embeddings ``expected`` ``(N, D)``:
    ``FP32_TOLERANCE`` times their scale (1 for unit vectors, else their largest value)."""
    return FP32_TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0.0)))


def _check_fp32(tower: Any, folder: Path) -> float:
    """The max abs difference of onnxruntime's embeddings from torch's on the check items.

    Raises:
        RuntimeError: above ``fp32_tolerance`` (a bug of the export).
    """
    from contralign.encoders.onnx_tower import OnnxTower

    items = _check_items(tower)
    expected = tower.encode(items, batch_size=4)
    got = OnnxTower.load(folder, int8=False).encode(items, batch_size=4)
    diff = float(np.abs(got - expected).max())
    if not diff <= fp32_tolerance(expected):
        raise RuntimeError(f"ONNX export of the {tower.kind} tower embeds differently from torch: "
                           f"max abs difference {diff:.3g} > {fp32_tolerance(expected):.3g}")
    return diff


def _int8_cosine(tower: Any, folder: Path) -> float:
    """The smallest cosine between a check item's int8 and torch embeddings.

    Raises:
        ContralignError: below ``INT8_MIN_COSINE``.
    """
    from contralign.encoders.onnx_tower import OnnxTower

    items = _check_items(tower)
    expected = tower.encode(items, batch_size=4)
    got = OnnxTower.load(folder, int8=True).encode(items, batch_size=4)
    smallest = float(cosines(got, expected).min())
    if smallest < INT8_MIN_COSINE:
        raise ContralignError(f"export: --int8: the int8 graph of this {tower.kind} tower embeds "
                              f"too differently from torch (cosine {smallest:.3f} < "
                              f"{INT8_MIN_COSINE} on the check items); export fp32 only")
    return smallest


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N,)`` cosine of each row of ``a`` with the same row of ``b`` (1 for two zero rows)."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)  # (N,)
    dots = (a * b).sum(axis=1)
    return np.where(norms > 0, dots / np.maximum(norms, 1e-12), 1.0)


def _quantize(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation: int8 weights per output channel, activations quantised on the
    fly. Per channel: on all-MiniLM-L6-v2 per-tensor scales gave a smallest cosine to fp32 of 0.93
    over 256 sentences, per-channel scales 0.989 (mean 0.994)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its advice to "pre-process" goes to the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                             per_channel=True)
    finally:
        logging.disable(disabled)
