"""Bootstrap confidence intervals: against a naive resampling loop on real STS-B data, and the
properties an interval must have (it holds the estimate, it is fixed by the seed, it shrinks
with more data)."""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign.evaluation import (
    GeometryEvaluator,
    RetrievalEvaluator,
    STSEvaluator,
    evaluate_with_intervals,
    ranking_metrics,
    relevant_ranks,
    uniformity,
)


@pytest.fixture(scope="module")
def tower():
    from contralign import load_tower

    return load_tower("wordllama-256")


@pytest.fixture(scope="module")
def stsb(shared_data: Path) -> list[tuple[str, str, float]]:
    with open(shared_data / "sts" / "stsb-en-dev.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(r["sentence1"], r["sentence2"], float(r["score"])) for r in rows]


def naive_percentile_bootstrap(statistic, n: int, name: str, confidence: float,
                               resamples: int, seed: int = 0) -> tuple[float, float]:
    """Draw ``resamples`` samples of n indices with replacement (the documented draws) and
    take the central percentiles of ``statistic(indices)``."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    values = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    tail = 100 * (1 - confidence) / 2
    return tuple(np.percentile(values, [tail, 100 - tail]))


def test_sts_interval_matches_a_naive_bootstrap_with_scipy(tower, stsb) -> None:
    first, second, scores = zip(*stsb[:400], strict=True)
    evaluator = STSEvaluator(first, second, scores)
    metrics, intervals = evaluate_with_intervals(tower, [evaluator], 0.9, resamples=300)
    x, y = tower.encode(list(first)), tower.encode(list(second))
    cosine = np.sum(x * y, axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    gold = np.asarray(scores)
    lo, hi = naive_percentile_bootstrap(
        lambda i: 100 * stats.spearmanr(cosine[i], gold[i]).statistic, len(gold), "sts", 0.9,
        300)
    assert intervals["sts/spearman"] == pytest.approx((lo, hi), abs=1e-6)
    assert metrics["sts/spearman"] == pytest.approx(100 * stats.spearmanr(cosine, gold)[0],
                                                    abs=1e-6)
    assert lo < metrics["sts/spearman"] < hi


def test_intervals_hold_the_estimate_are_seeded_and_shrink(tower, stsb) -> None:
    def interval(rows: list, seed: int = 0) -> tuple[float, tuple[float, float]]:
        first, second, scores = zip(*rows, strict=True)
        metrics, intervals = evaluate_with_intervals(
            tower, [STSEvaluator(first, second, scores)], 0.95, resamples=200, seed=seed)
        return metrics["sts/spearman"], intervals["sts/spearman"]

    small_value, small = interval(stsb[::10])
    large_value, large = interval(stsb)
    assert small[0] < small_value < small[1] and large[0] < large_value < large[1]
    assert interval(stsb[::10]) == (small_value, small)  # the same seed, the same interval
    assert interval(stsb[::10], seed=1)[1] != small
    # 10x the pairs: about 1/sqrt(10) the width.
    assert (large[1] - large[0]) < 0.6 * (small[1] - small[0])


def test_retrieval_interval_matches_a_naive_bootstrap(tower, shared_data: Path) -> None:
    rows = [json.loads(line) for line in
            (shared_data / "papers" / "papers.jsonl").read_text(encoding="utf-8").splitlines()]
    titles, abstracts = [r["title"] for r in rows], [r["abstract"] for r in rows]
    evaluator = RetrievalEvaluator.from_pairs(titles, abstracts)
    metrics, intervals = evaluate_with_intervals(tower, [evaluator], 0.95, resamples=200)
    ranks = relevant_ranks(tower.encode(evaluator.queries), tower.encode(evaluator.corpus),
                           evaluator.relevant)
    lo, hi = naive_percentile_bootstrap(
        lambda i: ranking_metrics([ranks[j] for j in i])["ndcg@10"], len(ranks), "retrieval",
        0.95, 200)
    assert intervals["retrieval/ndcg@10"] == pytest.approx((lo, hi), abs=1e-9)
    assert lo <= metrics["retrieval/ndcg@10"] <= hi
    # Geometry on the same pairs: effective rank, hubness and the modality gap get no interval
    # (see GeometryEvaluator.resampling).
    geometry = GeometryEvaluator(titles, abstracts)
    metrics, intervals = evaluate_with_intervals(tower, [geometry], 0.95, resamples=100)
    assert set(intervals) == {"geometry/alignment", "geometry/uniformity"}
    for key, (lo, hi) in intervals.items():
        assert lo <= metrics[key] <= hi, key


def test_weighted_uniformity_matches_the_plain_one_on_a_subset(tower) -> None:
    # All texts distinct: a resample that draws each of some pairs once weighs their items 1
    # and the rest 0, so its uniformity is the plain uniformity of those items.
    anchors = [f"the first text about topic {i}" for i in range(30)]
    positives = [f"a second note on subject {i}" for i in range(30)]
    metrics, groups = GeometryEvaluator(anchors, positives).resampling(tower)
    (group,) = groups
    assert group.score(np.arange(30))["uniformity"] == pytest.approx(metrics["uniformity"],
                                                                    abs=1e-12)
    subset = np.array([0, 3, 4, 10, 17, 29])
    points = tower.encode([anchors[i] for i in subset] + [positives[i] for i in subset])
    assert group.score(subset)["uniformity"] == pytest.approx(uniformity(points), abs=1e-9)


def test_cli_ci_adds_intervals(stsb, tmp_path: Path) -> None:
    from contralign.cli.app import app

    path = tmp_path / "sts.tsv"
    path.write_text("sentence1\tsentence2\tscore\n" + "".join(
        f"{a}\t{b}\t{s}\n" for a, b, s in stsb[:120]), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "wordllama-256", "--sts", str(path), "--ci", "0.9",
                                 "--bootstrap", "100", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["confidence"] == 0.9 and out["bootstrap"] == 100
    lo, hi = out["ci"]["sts/spearman"]
    assert lo < out["metrics"]["sts/spearman"] < hi
    table = runner.invoke(app, ["eval", "wordllama-256", "--sts", str(path), "--ci", "0.9",
                                "--bootstrap", "100"])
    assert f"{out['metrics']['sts/spearman']:.4f} [{lo:.4f}, {hi:.4f}]" in table.stdout
    bad = runner.invoke(app, ["eval", "wordllama-256", "--sts", str(path), "--ci", "95"])
    assert "--ci" in one_line_error(bad)
