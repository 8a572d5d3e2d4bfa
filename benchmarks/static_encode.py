"""Static-tower encoding speed against sentence-transformers' ``StaticEmbedding``, same vectors.

For each set of pretrained vectors (``wordllama-256``: 32,000 Llama-2 BPE tokens x 256;
``glove-6b-50d``: 400,001 words x 50), contralign builds its static tower and saves it as a model
folder; both sides then load that one folder: ``contralign.load_tower(folder)`` and
``SentenceTransformer(folder)`` (a ``StaticEmbedding`` module, the same ``tokenizer.json`` and
table). Both encode the same texts: the distinct STS-B dev sentences (~2,900 short ones) and the
204 bundled abstracts (long ones, never truncated: a static tower has no length limit), at each
batch size asked for (32 is ST's default, 512 ours). The tokenizer alone (``encode_batch_fast`` of
the whole set without special tokens, as ours calls it) is timed beside them: the ceiling of either
side, and what is left of a run besides pooling. After a warm-up the three alternate (the order
reversed in odd repeats); a timed run encodes the set enough times over to last ``--min-seconds``;
median time per side. The embeddings must agree (max abs diff < 1e-6).

Run: ``python benchmarks/static_encode.py [--vectors wordllama-256,glove-6b-50d]
[--batch-sizes 32,512] [--repeats 7] [--min-seconds 0.3] [--limit N] [--threads 1] [--json]``
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import data_dir, machine, median, print_json, print_machine, ratio, timed  # noqa: E402
from encode_speed import paper_abstracts, sts_sentences  # noqa: E402

VECTORS = ("wordllama-256", "glove-6b-50d")
BATCH_SIZES = (32, 512)
TOLERANCE = 1e-6
WARMUP_TEXTS = 256


def load_sides(name: str, folder: Path) -> tuple[Any, Any]:
    """Our tower and ST's model, both loaded from the one folder our tower of ``name`` saves."""
    from sentence_transformers import SentenceTransformer

    import contralign

    contralign.load_tower(name).save(folder)
    ours = contralign.load_tower(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ST's deprecation notes on module paths
        reference = SentenceTransformer(str(folder), device="cpu")
    if type(reference[0]).__name__ != "StaticEmbedding":
        raise SystemExit(f"benchmark: ST loaded {type(reference[0]).__name__}, not StaticEmbedding")
    return ours, reference


def encoders(ours: Any, reference: Any, batch_size: int) -> dict[str, Callable[[list[str]], Any]]:
    """Our ``encode``, ST's, and our tokenizer alone (as ours calls it: the ceiling of both)."""
    tokenize = getattr(ours.tokenizer, "encode_batch_fast", ours.tokenizer.encode_batch)
    return {
        "ours": lambda texts: ours.encode(texts, batch_size=batch_size, show_progress=False),
        "st": lambda texts: reference.encode(texts, batch_size=batch_size,
                                             show_progress_bar=False, convert_to_numpy=True),
        "tokenizer": lambda texts: tokenize(texts, add_special_tokens=False),
    }


def measure(texts: list[str], encode: dict[str, Callable[[list[str]], Any]], repeats: int,
            min_seconds: float) -> dict[str, Any]:
    """Alternate the sides ``repeats`` times each; medians, throughputs and agreement.

    A timed run encodes the set ``rounds`` times over, enough for the fastest side to take
    ``min_seconds``: a set of short sentences encodes in a few milliseconds, below what one
    timing on a shared machine resolves.
    """
    for fn in encode.values():  # warm-up: first calls allocate
        fn(texts[:WARMUP_TEXTS])
    first = min(timed(partial(fn, texts))[0] for fn in encode.values())
    rounds = max(1, math.ceil(min_seconds / max(first, 1e-6)))
    seconds: dict[str, list[float]] = {name: [] for name in encode}
    outputs: dict[str, Any] = {}
    names = list(encode)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            elapsed, out = timed(partial(_rounds, encode[name], texts, rounds))
            seconds[name].append(elapsed / rounds)
            outputs.setdefault(name, out)
    speed = {side: len(texts) / median(values) for side, values in seconds.items()}
    best = {side: len(texts) / min(values) for side, values in seconds.items()}
    a, b = (np.asarray(outputs[side], dtype=np.float32) for side in ("ours", "st"))
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    nonzero = norms > 0  # a text without tokens embeds as zeros on both sides
    cosine = (a * b).sum(axis=1)[nonzero] / norms[nonzero]
    return {
        "texts": len(texts),
        "mean_tokens": float(np.mean([len(e.ids) for e in outputs["tokenizer"]])),
        "rounds": rounds,
        "seconds": seconds,
        "ours_texts_per_second": speed["ours"],
        "st_texts_per_second": speed["st"],
        "tokenizer_texts_per_second": speed["tokenizer"],
        "ratio_ours_over_st": ratio(speed["ours"], speed["st"]),
        "ratio_best_run": ratio(best["ours"], best["st"]),
        "max_abs_diff": float(np.abs(a - b).max()),
        "min_cosine": float(cosine.min()) if cosine.size else float("nan"),
        "empty_texts": int((~nonzero).sum()),
    }


def _rounds(fn: Callable[[list[str]], Any], texts: list[str], rounds: int) -> Any:
    """``fn(texts)`` ``rounds`` times; the first result."""
    first = fn(texts)
    for _ in range(rounds - 1):
        fn(texts)
    return first


def run_vectors(name: str, sets: dict[str, list[str]], batch_sizes: list[int], repeats: int,
                min_seconds: float) -> dict[str, Any]:
    """Every set x batch size for one set of vectors; prints its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        ours, reference = load_sides(name, Path(tmp) / "model")
    print(f"\n{name}: table {tuple(ours.embedding.weight.shape)}, normalised "
          f"{ours.config.normalize}")
    print(f"  {'set':<22} {'batch':>5} {'tokens':>6} {'tokenizer/s':>11} {'ours/s':>9} "
          f"{'ST/s':>9} {'ours/ST':>7} {'best':>5}  {'max|diff|':>9} {'min cos':>8}")
    rows: dict[str, Any] = {}
    for set_name, texts in sets.items():
        for batch_size in batch_sizes:
            r = measure(texts, encoders(ours, reference, batch_size), repeats, min_seconds)
            rows[f"{set_name} @ {batch_size}"] = r
            flag = "" if r["max_abs_diff"] < TOLERANCE else "  MISMATCH"
            print(f"  {set_name:<22} {batch_size:>5} {r['mean_tokens']:>6.1f} "
                  f"{r['tokenizer_texts_per_second']:>11.0f} "
                  f"{r['ours_texts_per_second']:>9.0f} {r['st_texts_per_second']:>9.0f} "
                  f"{r['ratio_ours_over_st']:>6.2f}x {r['ratio_best_run']:>4.2f}x  "
                  f"{r['max_abs_diff']:>9.1e} {r['min_cosine']:>8.6f}{flag}")
    return {"table": list(ours.embedding.weight.shape), "normalize": ours.config.normalize,
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", default=",".join(VECTORS),
                        help="comma-separated pretrained static vectors")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per side")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many texts per set (development)")
    parser.add_argument("--min-seconds", type=float, default=0.3,
                        help="encode a set this long per timed run (several rounds if needed)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes: expected integers, got {args.batch_sizes!r}")
    if args.repeats < 1 or any(b < 1 for b in batch_sizes):
        parser.error("--repeats and --batch-sizes must be at least 1")

    data_dir()  # exit early, before loading models, when the real data is absent
    info = machine(args.threads)
    print_machine(info)
    sets = {"STS-B dev sentences": sts_sentences(), "papers abstracts": paper_abstracts()}
    sets = {k: v[: args.limit] for k, v in sets.items()}
    print(f"{args.repeats} timed runs per side (each >= {args.min_seconds} s), alternating; median "
          "texts/s (best: ratio of the fastest runs); tokenizer/s: the tokenizer alone"
          f"{f'  [--limit {args.limit}]' if args.limit else ''}")
    from contralign.core.errors import ModelNotFoundError

    results = {}
    for name in args.vectors.split(","):
        try:
            results[name] = run_vectors(name, sets, batch_sizes, args.repeats, args.min_seconds)
        except ModelNotFoundError as err:  # vectors whose package is not installed here
            print(f"\nnote: {name} skipped: {err}")
    if args.json:
        print_json({"benchmark": "static_encode", "machine": info, "repeats": args.repeats,
                    "min_seconds": args.min_seconds, "limit": args.limit, "vectors": results})


if __name__ == "__main__":
    main()
