"""Margin mining: time at 10k × 10k sentences against a plain full-matrix numpy implementation,
and BUCC-style precision / recall / F1 on mining tasks built from Tatoeba.

Timing. contralign's ``mine_pairs`` (ratio margin, k = 4, intersect and union) finds neighbours
through the index layer a block of queries at a time (exact numpy search, or FAISS's
``IndexFlatIP``) and never holds the N × M similarity matrix; the reference is what one writes
with numpy alone (LASER's procedure on the whole matrix): ``S = X Yᵀ`` (N × M float32),
``argpartition`` for the k nearest in each row and column, the margin of each candidate, the best
per sentence. Both run on the same vectors; the mined pairs are compared. Data: random unit
vectors (D = 384, 8,000 of the 10,000 targets noisy copies of sources), and, when the embedding
cache of ``benchmarks/bitext.py`` holds the held-out split of all 29 languages, real ones: 10,000
sentences drawn from all languages against the English sides of another draw of 10,000 (about
8,700 are translations, the rest distractors). Peak memory is what numpy allocates during the
call (``tracemalloc``; FAISS's own buffers are not counted).

Quality (needs the cache of the four reference languages, ``benchmarks/bitext.py --langs
deu,fra,cmn,ara``): per language, 400 xx sentences (held-out rows 401-800) against 400 English
sentences of which 300 translate rows 501-800 and 100 come from rows 1-100 (no counterpart),
shuffled. The threshold is chosen on French (F1-best, ``best_threshold``) and applied to the
others; also the F1 at ``contralign mine``'s default and each task's own best (an upper bound).

    python benchmarks/mining.py [--size 10000] [--repeats 3] [--model multilingual-e5-small]
        [--cache DIR] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bitext import DEFAULT_CACHE, REFERENCE, EmbeddingCache, languages
from common import machine, median, print_json, print_machine, ratio

K = 4
DIM = 384
TUNE_ON = "fra"


def plain_mine(src: np.ndarray, tgt: np.ndarray, k: int, mode: str) -> set[tuple[int, int]]:
    """Ratio-margin mining with the whole similarity matrix in memory (the reference)."""
    x = src / np.linalg.norm(src, axis=1, keepdims=True)
    y = tgt / np.linalg.norm(tgt, axis=1, keepdims=True)
    sim = x @ y.T  # (N, M) float32
    sim_t = np.ascontiguousarray(sim.T)  # (M, N)
    fwd_ids = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (N, k)
    bwd_ids = np.argpartition(-sim_t, k - 1, axis=1)[:, :k]  # (M, k)
    fwd_cos = np.take_along_axis(sim, fwd_ids, axis=1)
    bwd_cos = np.take_along_axis(sim_t, bwd_ids, axis=1)
    fwd_mean, bwd_mean = fwd_cos.mean(axis=1), bwd_cos.mean(axis=1)
    fwd = fwd_cos / ((fwd_mean[:, None] + bwd_mean[fwd_ids]) / 2)
    bwd = bwd_cos / ((bwd_mean[:, None] + fwd_mean[bwd_ids]) / 2)
    fwd_best = fwd_ids[np.arange(len(x)), fwd.argmax(axis=1)]
    bwd_best = bwd_ids[np.arange(len(y)), bwd.argmax(axis=1)]
    if mode == "intersect":
        return {(i, int(j)) for i, j in enumerate(fwd_best) if bwd_best[j] == i}
    pairs = [(i, int(j), s) for i, (j, s) in enumerate(zip(fwd_best, fwd.max(axis=1),
                                                             strict=True))]
    pairs += [(int(i), j, s) for j, (i, s) in enumerate(zip(bwd_best, bwd.max(axis=1),
                                                              strict=True))]
    pairs.sort(key=lambda p: -p[2])
    seen_src: set[int] = set()
    seen_tgt: set[int] = set()
    kept = set()
    for i, j, _ in pairs:
        if i not in seen_src and j not in seen_tgt:
            seen_src.add(i)
            seen_tgt.add(j)
            kept.add((i, j))
    return kept


def measured(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """``(seconds, peak MiB numpy allocated, result)`` of one call."""
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, result


def random_task(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(size, DIM)).astype(np.float32)
    tgt = rng.normal(size=(size, DIM)).astype(np.float32)
    shared = int(size * 0.8)
    tgt[:shared] = src[rng.permutation(size)[:shared]] + 0.5 * rng.normal(size=(shared, DIM))
    return src, tgt


def real_task(cache: EmbeddingCache, size: int, seed: int = 0) -> Any:
    """``(src, tgt, gold)`` from the held-out splits of every language, or None when the cache
    lacks one (nothing is embedded here)."""
    langs = languages()
    missing = [lang for lang in langs if not (cache.folder / f"{lang}.test.npz").is_file()]
    if missing:
        print(f"real 10k task skipped: no cached embeddings for {', '.join(missing)} "
              "(run benchmarks/bitext.py first)")
        return None
    parts = [cache.split(lang, "test") for lang in langs]
    xx = np.concatenate([p[0] for p in parts])
    en = np.concatenate([p[1] for p in parts])
    rng = np.random.default_rng(seed)
    src_rows = rng.choice(len(xx), size, replace=False)
    tgt_rows = rng.choice(len(en), size, replace=False)
    position = {int(row): j for j, row in enumerate(tgt_rows)}
    gold = {(i, position[int(row)]) for i, row in enumerate(src_rows) if int(row) in position}
    return xx[src_rows], en[tgt_rows], gold


def repeated_rows(vectors: np.ndarray) -> set[int]:
    """Rows equal to another row (the same sentence twice: exact ties)."""
    _, inverse, counts = np.unique(vectors, axis=0, return_inverse=True, return_counts=True)
    return set(np.flatnonzero(counts[inverse.ravel()] > 1).tolist())


def time_both(src: np.ndarray, tgt: np.ndarray, repeats: int, label: str) -> dict[str, Any]:
    """Median time and peak numpy memory of ours (exact and FAISS backends) and the plain
    reference, intersect and union. The mined pairs are compared with the plain reference's, and
    with the same reference computed in float64 (ours scores in float64): they should differ only
    where a sentence occurs twice (exact ties: ours takes the lower row, numpy's argpartition and
    argmax either) and, in union mode, where such a choice changes which sentences are taken."""
    from contralign.evaluation.mining import mine_pairs
    from contralign.index import faiss_available

    backends = ["exact"] + (["faiss"] if faiss_available() else [])
    repeated_src, repeated_tgt = repeated_rows(src), repeated_rows(tgt)
    results: dict[str, Any] = {"repeated_rows": [len(repeated_src), len(repeated_tgt)]}
    print(f"\n{label}: {len(src):,} × {len(tgt):,}, D = {src.shape[1]}, k = {K}, median of "
          f"{repeats}\n")
    print(f"({len(repeated_src)} source and {len(repeated_tgt)} target rows occur more than "
          "once)\n")
    print("| mode | implementation | seconds | peak numpy MiB | pairs | not in plain's | not in "
          "plain float64's (with no repeated sentence) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode in ("intersect", "union"):
        runs: dict[str, list[tuple[float, float, set]]] = {}
        for _ in range(repeats):  # alternate so load changes hit every side alike
            for name in ["plain", *backends]:
                def call(name: str = name, mode: str = mode) -> set:
                    if name == "plain":
                        return plain_mine(src, tgt, K, mode)
                    return set(mine_pairs(src, tgt, k=K, mode=mode, backend=name).pairs())
                runs.setdefault(name, []).append(measured(call))
        plain_pairs = runs["plain"][0][2]
        exact_pairs = plain_mine(src.astype(np.float64), tgt.astype(np.float64), K, mode)
        results[mode] = {}
        for name, values in runs.items():
            seconds = median([v[0] for v in values])
            peak = max(v[1] for v in values)
            pairs = values[0][2]
            differ = [len(pairs - plain_pairs), len(pairs - exact_pairs)]
            untied = len([(i, j) for i, j in pairs - exact_pairs if i not in repeated_src
                          and j not in repeated_tgt])
            results[mode][name] = {"seconds": seconds, "peak_mib": peak, "pairs": len(pairs),
                                   "not_in_plain": differ[0], "not_in_plain64": differ[1],
                                   "not_in_plain64_without_repeats": untied}
            print(f"| {mode} | {name} | {seconds:.2f} | {peak:.0f} | {len(pairs):,} | "
                  f"{differ[0]} | {differ[1]} ({untied}) |")
        for name in backends:
            results[mode][f"{name}_over_plain_time"] = ratio(results[mode][name]["seconds"],
                                                             results[mode]["plain"]["seconds"])
            print(f"  {mode}: ours ({name}) / plain time = "
                  f"{results[mode][f'{name}_over_plain_time']:.2f}")
    return results


def tatoeba_mining_task(cache: EmbeddingCache, lang: str, seed: int = 0) -> Any:
    """400 xx (rows 401-800) against 300 translations (rows 501-800) + 100 English of rows
    1-100, shuffled; gold as (src row, tgt row)."""
    src_all, tgt_all = cache.all_rows(lang)
    src = src_all[400:800]
    english_rows = list(range(500, 800)) + list(range(100))
    random.Random(seed).shuffle(english_rows)
    tgt = tgt_all[english_rows]
    gold = {(row - 400, j) for j, row in enumerate(english_rows) if row >= 400}
    return src, tgt, gold


def quality(cache: EmbeddingCache) -> dict[str, Any]:
    from contralign.cli.mine import DEFAULT_MARGIN_THRESHOLD as default
    from contralign.evaluation.mining import best_threshold, mine_pairs, mining_scores

    ready = [lang for lang in REFERENCE
             if all((cache.folder / f"{lang}.{p}.npz").is_file() for p in ("train", "test"))]
    if TUNE_ON not in ready:
        print("\nmining quality skipped: run benchmarks/bitext.py --langs deu,fra,cmn,ara first")
        return {}
    results: dict[str, Any] = {}
    print(f"\nMining 400 × 400 sentences (300 translations), threshold tuned on {TUNE_ON}:\n")
    print("| language | scoring | mode | threshold | P | R | F1 | F1 at default | best F1 "
          "(own threshold) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for scoring in ("margin", "cosine"):
        for mode in ("intersect", "union"):
            def candidates(lang: str, scoring: str = scoring, mode: str = mode) -> Any:
                src, tgt, gold = tatoeba_mining_task(cache, lang)
                return mine_pairs(src, tgt, mode=mode, scoring=scoring), gold
            tuned = best_threshold(*candidates(TUNE_ON)).threshold
            for lang in ready:
                mined, gold = candidates(lang)
                at_tuned = mining_scores(mined.above(tuned), gold)
                at_default = mining_scores(mined.above(default), gold)["f1"] \
                    if scoring == "margin" else None
                own = best_threshold(mined, gold)
                results[f"{lang}/{scoring}/{mode}"] = {
                    "threshold": tuned, **at_tuned, "f1_at_default": at_default,
                    "best_threshold": own.threshold, "best_f1": own.f1}
                shown = "—" if at_default is None else f"{at_default:.3f}"
                print(f"| {lang}{' (dev)' if lang == TUNE_ON else ''} | {scoring} | {mode} | "
                      f"{tuned:.4f} | {at_tuned['precision']:.3f} | {at_tuned['recall']:.3f} | "
                      f"{at_tuned['f1']:.3f} | {shown} | {own.f1:.3f} ({own.threshold:.4f}) |")
    return results


def real_quality(src: np.ndarray, tgt: np.ndarray, gold: set[tuple[int, int]]
                 ) -> dict[str, Any]:
    """P/R/F1 of the 10k task at ``contralign mine``'s default threshold and at its own best."""
    from contralign.cli.mine import DEFAULT_MARGIN_THRESHOLD
    from contralign.evaluation.mining import best_threshold, mine_pairs, mining_scores

    out: dict[str, Any] = {}
    print(f"\nQuality of the 10k task ({len(gold):,} translation pairs among the sentences):\n")
    print("| mode | threshold | P | R | F1 |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("intersect", "union"):
        candidates = mine_pairs(src, tgt, mode=mode)
        at_default = mining_scores(candidates.above(DEFAULT_MARGIN_THRESHOLD), gold)
        best = best_threshold(candidates, gold)
        out[mode] = {"default": at_default, "best": vars(best)}
        print(f"| {mode} | {DEFAULT_MARGIN_THRESHOLD} (default) | {at_default['precision']:.3f} "
              f"| {at_default['recall']:.3f} | {at_default['f1']:.3f} |")
        print(f"| {mode} | {best.threshold:.4f} (best) | {best.precision:.3f} | "
              f"{best.recall:.3f} | {best.f1:.3f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="multilingual-e5-small")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import contralign

    info = machine(args.threads)
    print_machine(info)
    result: dict[str, Any] = {"machine": info, "size": args.size, "k": K}
    result["random"] = time_both(*random_task(args.size), args.repeats, "Random unit vectors")
    cache = EmbeddingCache(contralign.load_tower(args.model), args.cache, batch_size=64)
    real = real_task(cache, args.size)
    if real is not None:
        src, tgt, gold = real
        result["real"] = time_both(src, tgt, args.repeats,
                                   f"{args.model} embeddings of Tatoeba, 29 languages → English")
        result["real_quality"] = real_quality(src, tgt, gold)
    result["quality"] = quality(cache)
    if args.json:
        print_json(result)


if __name__ == "__main__":
    main()
