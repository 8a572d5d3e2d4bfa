"""Approximate search at scale: exact (FAISS flat), IVF-flat, IVF-PQ and HNSW over N vectors.

For each kind it reports the build time (training included), the index size (bytes of FAISS's
serialisation) and the process's resident memory growth while building, recall@10 against exact
search, and the p50/p95 latency of one query at a time after a warm-up. The indexes are built
with the library's defaults (``contralign.index.IndexConfig``) through ``build_ann``, the code
``contralign index --kind`` runs; exact search is ``FaissIndex`` (``IndexFlatIP``).

The vectors are synthetic, seeded and clustered like real embeddings rather than uniform on the
sphere (where nearest neighbours barely exist): ``C = sqrt(N)`` cluster centres are drawn from
N(0, I) in a 64-dimensional latent space; each vector is its centre plus N(0, I) latent noise,
mapped to ``--dim`` dimensions by a fixed random ``64 x dim`` matrix (scaled by 1/8), plus
N(0, 0.1^2) noise in every output dimension, then L2-normalised. Queries are fresh draws of the
same mixture (another seed), never corpus rows.

    python benchmarks/ann_search.py                 # 1,000,000 x 384 (about 6 GB of memory)
    python benchmarks/ann_search.py --n 100000 --json
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, print_json, print_machine

from contralign.index import FaissIndex, IndexConfig, build_ann

LATENT = 64
CHUNK = 100_000
KINDS = ("exact", "ivf", "ivf-pq", "hnsw")


def synthetic(count: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """``(count, dim)`` float32 unit vectors of the mixture described above; the centres and
    the projection depend only on ``clusters`` and ``dim``, the draws on ``seed``."""
    fixed = np.random.default_rng(20_261_202)
    centres = fixed.standard_normal((clusters, LATENT)).astype(np.float32)  # (C, 64)
    projection = fixed.standard_normal((LATENT, dim)).astype(np.float32) / 8.0  # (64, D)
    rng = np.random.default_rng(seed)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, CHUNK):  # bounded temporaries at 1M rows
        rows = min(CHUNK, count - start)
        latent = centres[rng.integers(0, clusters, rows)]
        latent += rng.standard_normal((rows, LATENT), dtype=np.float32)  # (rows, 64)
        block = latent @ projection + 0.1 * rng.standard_normal((rows, dim), dtype=np.float32)
        out[start:start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def rss_bytes() -> int:
    """The process's resident memory now (``VmRSS``), in bytes."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def build(kind: str, corpus: np.ndarray, pq: int) -> Any:
    """The index of ``kind`` over ``corpus (N, D)`` with the library's defaults."""
    match kind:
        case "exact":
            return FaissIndex(corpus)
        case "ivf":
            return build_ann(corpus, IndexConfig("ivf"))
        case "ivf-pq":
            return build_ann(corpus, IndexConfig("ivf", pq=pq))
        case "hnsw":
            return build_ann(corpus, IndexConfig("hnsw"))
    raise ValueError(f"kind: unknown value {kind!r}")


def latencies_ms(index: Any, queries: np.ndarray, warmup: int) -> np.ndarray:
    """Milliseconds per query, one ``(1, D)`` query at a time, after ``warmup`` untimed ones."""
    for row in queries[:warmup]:
        index.search(row[None], 10)
    times = np.empty(len(queries))
    for i, row in enumerate(queries):
        start = time.perf_counter()
        index.search(row[None], 10)  # (1, D) -> (1, 10)
        times[i] = time.perf_counter() - start
    return times * 1000.0


def measure(kind: str, corpus: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            args: argparse.Namespace) -> dict[str, Any]:
    """Build one index and return its figures."""
    import faiss

    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    index = build(kind, corpus, args.pq)
    build_s = time.perf_counter() - start
    grown = rss_bytes() - before
    raw = index._index if kind == "exact" else index.faiss_index
    ids = index.search(queries, 10)[1]  # (Q, 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)]))
    ms = latencies_ms(index, queries, args.warmup)
    params = {} if kind == "exact" else index.config.params()
    result = {"kind": kind, "params": params, "build_s": round(build_s, 2),
              "index_bytes": int(faiss.serialize_index(raw).nbytes), "rss_growth_bytes": grown,
              "recall_at_10": round(recall, 4), "p50_ms": round(float(np.percentile(ms, 50)), 3),
              "p95_ms": round(float(np.percentile(ms, 95)), 3)}
    del index, raw
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="corpus vectors")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--pq", type=int, default=48, help="PQ sub-vectors of ivf-pq")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=None,
                        help="FAISS OpenMP threads (default: FAISS's, all cores)")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = parser.parse_args()
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := sorted(set(kinds) - set(KINDS)):
        sys.exit(f"ann_search: --kinds: unknown kind {unknown[0]!r}; choose from {KINDS}")
    info = {**machine(), "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()}
    clusters = max(16, round(args.n ** 0.5))
    start = time.perf_counter()
    corpus = synthetic(args.n, args.dim, clusters, seed=0)  # (N, D)
    queries = synthetic(args.queries, args.dim, clusters, seed=1)  # (Q, D)
    truth = FaissIndex(corpus).search(queries, 10)[1]  # (Q, 10) exact
    prepared_s = time.perf_counter() - start
    results = [measure(kind, corpus, queries, truth, args) for kind in kinds]
    print_machine(info)
    print(f"faiss {info['faiss']} on {info['faiss_threads']} threads; {args.n:,} x {args.dim} "
          f"unit vectors in {clusters} clusters, {args.queries} queries "
          f"(data and exact truth: {prepared_s:.1f} s)")
    print(f"{'kind':8} {'build s':>9} {'index MB':>9} {'RSS +MB':>8} {'recall@10':>9} "
          f"{'p50 ms':>7} {'p95 ms':>7}  params")
    for r in results:
        print(f"{r['kind']:8} {r['build_s']:9.2f} {r['index_bytes'] / 1e6:9.1f} "
              f"{r['rss_growth_bytes'] / 1e6:8.1f} {r['recall_at_10']:9.4f} {r['p50_ms']:7.3f} "
              f"{r['p95_ms']:7.3f}  {r['params']}")
    if args.json:
        print_json({"benchmark": "ann_search", "machine": info, "n": args.n, "dim": args.dim,
                    "clusters": clusters, "queries": args.queries, "results": results})


if __name__ == "__main__":
    main()
