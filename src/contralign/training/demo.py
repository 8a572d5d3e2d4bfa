"""The embedded default run: align paper titles with their abstracts on the bundled corpus.

Fine-tunes the default model on a fixed train part of ``resources/papers.jsonl`` (204 arXiv
papers, CC0), evaluates before and after on the held-out part, and searches the corpus.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from contralign.core.io import atomic_write_text
from contralign.core.outputs import RUN, check_output_folder
from contralign.data import DataConfig, load_records
from contralign.encoders.resolve import DEFAULT_MODEL
from contralign.encoders.text import TextEncoder
from contralign.evaluation import (
    Evaluator,
    evaluate_all,
    geometry_from_records,
    retrieval_from_records,
)
from contralign.index import build_index
from contralign.training.config import TrainConfig
from contralign.training.loop import RunResult, fit

TEST_SIZE = 54  # papers held out for evaluation; the other 150 train
SPLIT_SEED = 0
DEMO_QUERY = "learning sentence embeddings with contrastive objectives"
# The metrics the demo table shows, in order, with whether higher is better.
DEMO_METRICS = (("retrieval/recall@1", True), ("retrieval/mrr@10", True),
                ("retrieval/ndcg@10", True), ("geometry/alignment", False),
                ("geometry/uniformity", False))


@dataclass
class DemoResult:
    before: dict[str, float]
    after: dict[str, float]
    run: RunResult
    query: str
    hits: list[tuple[str, float]]  # (title, cosine) of the top results after training


def bundled_corpus() -> Path:
    """The sample corpus shipped in the package."""
    return Path(str(resources.files("contralign") / "resources" / "papers.jsonl"))


def split_corpus(run_dir: Path) -> tuple[Path, Path]:
    """Write the fixed train/test split of the bundled corpus into ``run_dir/data``."""
    lines = bundled_corpus().read_text(encoding="utf-8").splitlines()
    order = np.random.RandomState(SPLIT_SEED).permutation(len(lines))
    test_rows, train_rows = sorted(order[:TEST_SIZE]), sorted(order[TEST_SIZE:])
    train, test = run_dir / "data" / "train.jsonl", run_dir / "data" / "test.jsonl"
    atomic_write_text(train, "".join(lines[i] + "\n" for i in train_rows))
    atomic_write_text(test, "".join(lines[i] + "\n" for i in test_rows))
    return train, test


def demo_config(run_dir: Path, train: Path, test: Path) -> TrainConfig:
    columns = {"anchor": "title", "positive": "abstract"}
    return TrainConfig.model_validate({
        "model": {"name": DEFAULT_MODEL, "max_length": 128},
        "data": {"path": str(train), "columns": columns},
        "objective": {"name": "info_nce", "temperature": 0.05, "symmetric": True},
        "optim": {"lr": 5e-5, "warmup_ratio": 0.1, "schedule": "linear"},
        "train": {"epochs": 2, "batch_size": 16, "seed": 0, "log_every": 5},
        "eval": {"retrieval": {"path": str(test), "columns": columns}},
        "output_dir": str(run_dir),
    })


def run_demo(output_dir: str | Path = "runs/demo", progress: bool = True) -> DemoResult:
    """Train, evaluate before/after and search. A demo run already at ``output_dir`` is
    replaced once the new one finishes; any other folder there is refused.

    Raises:
        OutputError: ``output_dir`` holds something that is not a contralign run.
    """
    run_dir = Path(output_dir)
    check_output_folder(run_dir, RUN, "--output-dir", inputs=[], replace=True)
    with tempfile.TemporaryDirectory(prefix="contralign-demo-") as staging:
        train, test = split_corpus(Path(staging))
        config = demo_config(run_dir, train, test)
        encoder = TextEncoder.from_pretrained(DEFAULT_MODEL, max_length=128)
        test_records = load_records(config.eval.retrieval).records  # type: ignore[arg-type]
        evaluators: list[Evaluator] = [retrieval_from_records(test_records),
                                       geometry_from_records(test_records)]
        before = evaluate_all(encoder, evaluators)
        run = fit(config, overwrite=True, progress=progress, encoder=encoder)
        _keep_split(Path(staging), run_dir, config)
    hits = search_corpus(encoder, DEMO_QUERY, k=3)
    return DemoResult(before, run.metrics, run, DEMO_QUERY, hits)


def _keep_split(staging: Path, run_dir: Path, config: TrainConfig) -> None:
    """Keep the split inside the run directory, and point its config.yaml at it."""
    target = run_dir / "data"
    for name in ("train.jsonl", "test.jsonl"):
        atomic_write_text(target / name, (staging / "data" / name).read_text(encoding="utf-8"))
    resolved = config.model_copy(deep=True)
    resolved.data = DataConfig(path=str(target / "train.jsonl"), columns=config.data.columns)
    assert config.eval.retrieval is not None
    resolved.eval.retrieval = DataConfig(path=str(target / "test.jsonl"),
                                         columns=config.eval.retrieval.columns)
    import yaml

    atomic_write_text(run_dir / "config.yaml",
                      yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))


def search_corpus(encoder: TextEncoder, query: str, k: int) -> list[tuple[str, float]]:
    """Search the bundled abstracts for ``query``; returns the titles of the top ``k``."""
    rows = [json.loads(line) for line in bundled_corpus().read_text(encoding="utf-8").splitlines()]
    index = build_index(encoder.encode([r["abstract"] for r in rows], batch_size=32))
    scores, ids = index.search(encoder.encode([query]), k)
    return [(rows[int(i)]["title"], float(s)) for s, i in zip(scores[0], ids[0], strict=True)]
