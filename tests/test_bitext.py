"""Bitext scoring, Tatoeba accuracy and mining against the naive references in
``tests/reference_bitext.py`` (full matrix, loops), plus known answers and the readers."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from tests.reference_bitext import naive_f1, naive_matches, naive_mine

from contralign.core.errors import DataError
from contralign.evaluation.bitext import (
    BitextEvaluator,
    best_matches,
    bitext_columns,
    read_bitext,
    tatoeba_accuracy,
    tatoeba_split,
)
from contralign.evaluation.mining import (
    MinedPairs,
    best_threshold,
    mine_pairs,
    mining_scores,
    read_gold,
)
from contralign.evaluation.protocol import Sides
from contralign.index import faiss_available

SCORINGS = ("cosine", "margin", "distance")


def noisy_translations(seed: int, n: int, m: int, dim: int = 16, noise: float = 0.6):
    """``n`` sources and ``m`` targets; the first ``min(n, m)`` targets are noisy copies of
    shuffled sources (a mining task with distractors on the longer side)."""
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(n, dim)).astype(np.float32)
    tgt = rng.normal(size=(m, dim)).astype(np.float32)
    shared = min(n, m)
    perm = rng.permutation(n)[:shared]
    tgt[:shared] = src[perm] + noise * rng.normal(size=(shared, dim))
    return src, tgt


# Unit vectors with four entries 0.5 out of 8: every cosine is a multiple of 1/4 and every sum,
# mean and margin is computed exactly, so equal scores are equal bit for bit in both the code and
# the reference: many exact ties, each broken the documented way.
PATTERNS = np.array([[0.5 if d in combo else 0.0 for d in range(8)]
                     for combo in itertools.combinations(range(8), 4)], dtype=np.float32)


def tied_vectors(seed: int, n: int, m: int):
    rng = np.random.default_rng(seed)
    return PATTERNS[rng.integers(0, 12, n)], PATTERNS[rng.integers(0, 12, m)]  # duplicates too


def assert_matches(src, tgt, scoring, k, exact: bool, **options):
    forward, backward = best_matches(src, tgt, scoring=scoring, k=k, **options)
    f_ids, f_scores, b_ids, b_scores = naive_matches(src, tgt, scoring, k)
    assert forward.ids.tolist() == f_ids
    assert backward.ids.tolist() == b_ids
    if exact:
        assert forward.scores.tolist() == f_scores and backward.scores.tolist() == b_scores
    else:
        np.testing.assert_allclose(forward.scores, f_scores, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(backward.scores, b_scores, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("k", [1, 3, 4, 40])
@pytest.mark.parametrize(("n", "m"), [(30, 30), (25, 37), (37, 6)])
def test_best_matches_equal_the_naive_reference(scoring, k, n, m):
    src, tgt = noisy_translations(seed=n * 100 + m + k, n=n, m=m)
    assert_matches(src, tgt, scoring, k, exact=False, backend="exact")


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("seed", range(4))
def test_ties_are_broken_like_the_reference(scoring, k, seed):
    src, tgt = tied_vectors(seed, 20, 17)
    assert_matches(src, tgt, scoring, k, exact=True, backend="exact")


@pytest.mark.parametrize("scoring", ["margin", "distance"])
def test_blocks_of_any_size_give_the_same_matches(scoring, monkeypatch):
    import contralign.evaluation.bitext as bitext

    src, tgt = noisy_translations(seed=3, n=41, m=29)
    whole = best_matches(src, tgt, scoring=scoring, backend="exact")
    for elements in (1, 7, 100):
        monkeypatch.setattr(bitext, "PAIR_BLOCK_ROWS", elements)
        blocked = best_matches(src, tgt, scoring=scoring, backend="exact",
                               max_block_elements=elements)
        for a, b in zip(whole, blocked, strict=True):
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
@pytest.mark.parametrize("scoring", SCORINGS)
def test_faiss_backend_agrees_with_the_exact_one(scoring):
    src, tgt = noisy_translations(seed=5, n=60, m=50)
    exact = best_matches(src, tgt, scoring=scoring, backend="exact")
    faiss = best_matches(src, tgt, scoring=scoring, backend="faiss")
    for a, b in zip(exact, faiss, strict=True):
        assert np.array_equal(a.ids, b.ids)
        assert np.array_equal(a.scores, b.scores)  # scores recomputed in float64 from the ids


def test_with_every_sentence_a_candidate_the_match_is_the_global_margin_maximum():
    src, tgt = noisy_translations(seed=7, n=12, m=9)
    forward, _ = best_matches(src, tgt, scoring="margin", k=50, backend="exact")
    x = src / np.linalg.norm(src, axis=1, keepdims=True)
    y = tgt / np.linalg.norm(tgt, axis=1, keepdims=True)
    cos = x.astype(np.float64) @ y.T.astype(np.float64)
    margin = cos / ((cos.mean(axis=1)[:, None] + cos.mean(axis=0)[None, :]) / 2)
    assert forward.ids.tolist() == margin.argmax(axis=1).tolist()


def test_margin_discounts_a_hub_that_cosine_prefers():
    # Sources e_0..e_4; each gold target has cosine 0.4 with its source, and one hub target has
    # cosine 1/sqrt(5) ≈ 0.447 with every source. Cosine picks the hub for every source; with
    # k = 2 the margin is 0.4 / ((0.424 + 0.2) / 2) ≈ 1.28 for gold against ≈ 1.03 for the hub.
    dim = 16
    src = np.eye(dim, dtype=np.float64)[:5]
    gold = np.zeros((5, dim))
    for i in range(5):
        gold[i, i], gold[i, 5 + i] = 0.4, np.sqrt(1 - 0.16)
    hub = np.zeros((1, dim))
    hub[0, :5] = 1 / np.sqrt(5)
    tgt = np.concatenate([gold, hub])
    cosine, _ = best_matches(src, tgt, scoring="cosine", backend="exact")
    margin, _ = best_matches(src, tgt, scoring="margin", k=2, backend="exact")
    assert cosine.ids.tolist() == [5] * 5
    assert margin.ids.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(margin.scores, 0.4 / (((0.4 + 1 / np.sqrt(5)) / 2 + 0.2) / 2))


def test_tatoeba_accuracy_counts_the_rows_that_find_their_own_translation():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(10, 32))
    tgt = src.copy()
    tgt[[2, 7]] = tgt[[7, 2]]  # rows 2 and 7 swapped: both directions miss them
    tgt[4] = src[5] + 0.01 * rng.normal(size=32)  # 4 -> 5 and 5 -> 4 and 5 find the same
    result = tatoeba_accuracy(src, tgt, scoring="cosine", backend="exact")
    # src -> tgt: 2, 7 and 5 (whose nearest is row 4 or 5) among the misses.
    f_ids, _, b_ids, _ = naive_matches(src, tgt, "cosine", 1)
    assert result["forward_accuracy"] == np.mean(np.array(f_ids) == np.arange(10))
    assert result["backward_accuracy"] == np.mean(np.array(b_ids) == np.arange(10))
    assert result["forward_accuracy"] <= 0.8 and result["backward_accuracy"] <= 0.8
    assert result["accuracy"] == (result["forward_accuracy"] + result["backward_accuracy"]) / 2


def test_bad_inputs_raise_value_errors():
    src, tgt = noisy_translations(seed=0, n=4, m=4)
    with pytest.raises(ValueError, match="scoring"):
        best_matches(src, tgt, scoring="ratio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k: must be at least 1"):
        best_matches(src, tgt, k=0)
    with pytest.raises(ValueError, match="src: no vectors"):
        best_matches(src[:0], tgt)
    with pytest.raises(ValueError, match="share a space"):
        best_matches(src, tgt[:, :8])
    with pytest.raises(ValueError, match="row-aligned"):
        tatoeba_accuracy(src, tgt[:3])
    with pytest.raises(ValueError, match="mode"):
        mine_pairs(src, tgt, mode="max")  # type: ignore[arg-type]


# --- mining -------------------------------------------------------------------------------


def assert_mined(mined: MinedPairs, expected: list[tuple[int, int, float]], exact: bool):
    assert mined.pairs() == [(i, j) for i, j, _ in expected]
    if exact:
        assert mined.scores.tolist() == [s for _, _, s in expected]
    else:
        np.testing.assert_allclose(mined.scores, [s for _, _, s in expected], rtol=1e-9)


@pytest.mark.parametrize("mode", ["intersect", "union"])
@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize(("n", "m"), [(40, 40), (30, 45)])
def test_mining_equals_the_naive_reference(mode, scoring, n, m):
    src, tgt = noisy_translations(seed=n + m, n=n, m=m, noise=0.9)
    all_pairs = naive_mine(src, tgt, scoring, 4, mode, None)
    mined = mine_pairs(src, tgt, mode=mode, scoring=scoring, backend="exact")
    assert_mined(mined, all_pairs, exact=False)
    half = len(all_pairs) // 2  # a threshold halfway between two mined scores
    middle = (all_pairs[half - 1][2] + all_pairs[half][2]) / 2
    assert_mined(mine_pairs(src, tgt, mode=mode, scoring=scoring, threshold=middle,
                            backend="exact"),
                 naive_mine(src, tgt, scoring, 4, mode, middle), exact=False)


@pytest.mark.parametrize("mode", ["intersect", "union"])
@pytest.mark.parametrize("seed", range(4))
def test_mining_with_ties_equals_the_naive_reference(mode, seed):
    src, tgt = tied_vectors(seed, 24, 21)
    for threshold in (None, 1.0):
        assert_mined(mine_pairs(src, tgt, mode=mode, threshold=threshold, backend="exact"),
                     naive_mine(src, tgt, "margin", 4, mode, threshold), exact=True)


def test_union_pairs_are_one_to_one_and_intersect_pairs_mutual():
    src, tgt = noisy_translations(seed=11, n=50, m=70, noise=1.2)
    union = mine_pairs(src, tgt, mode="union", backend="exact")
    assert len(set(union.src.tolist())) == len(union) == len(set(union.tgt.tolist()))
    forward, backward = best_matches(src, tgt, backend="exact")
    for i, j in mine_pairs(src, tgt, mode="intersect", backend="exact").pairs():
        assert forward.ids[i] == j and backward.ids[j] == i
    assert np.all(np.diff(union.scores) <= 0)


def test_mining_finds_planted_translations():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(200, 64))
    perm = rng.permutation(200)
    tgt = np.concatenate([src[perm] + 0.3 * rng.normal(size=(200, 64)),
                          rng.normal(size=(60, 64))])  # 60 distractors
    gold = {(int(perm[j]), j) for j in range(200)}
    for mode in ("intersect", "union"):
        scores = mining_scores(mine_pairs(src, tgt, threshold=1.0, mode=mode), gold)
        assert scores["precision"] == 1.0 and scores["recall"] == 1.0, mode


def test_mining_scores_known_answer():
    gold = {(0, 0), (1, 1), (2, 2), (3, 3)}
    scores = mining_scores([(0, 0), (1, 1), (2, 3)], gold)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == 0.5
    assert scores["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert mining_scores([], gold)["precision"] == 0.0
    with pytest.raises(ValueError, match="gold"):
        mining_scores([(0, 0)], set())


def test_best_threshold_is_the_best_of_every_possible_cut():
    rng = np.random.default_rng(4)
    for trial in range(30):
        size = int(rng.integers(1, 25))
        scores = np.round(rng.uniform(0.9, 1.3, size), 1 if trial % 2 else 6)  # ties sometimes
        order = np.lexsort((np.arange(size), -scores))
        mined = MinedPairs(np.arange(size)[order], np.arange(size)[order], scores[order])
        gold = {(i, i) for i in range(size) if rng.random() < 0.6} | {(99, 99)}
        choice = best_threshold(mined, gold)
        candidates = [float(t) for t in np.unique(scores)] + [float(scores.min()) - 1]
        best = max(naive_f1(mined.above(t).pairs(), gold) for t in candidates)
        assert choice.f1 == pytest.approx(best)
        assert naive_f1(mined.above(choice.threshold).pairs(), gold) == pytest.approx(best)
        if best > 0:
            scored = mining_scores(mined.above(choice.threshold), gold)
            assert (scored["precision"], scored["recall"]) == pytest.approx(
                (choice.precision, choice.recall))


def test_best_threshold_between_adjacent_floats_keeps_exactly_the_cut():
    high = 1.25
    low = float(np.nextafter(high, 0.0))
    mined = MinedPairs(np.array([0, 1]), np.array([0, 1]), np.array([high, low]))
    choice = best_threshold(mined, {(0, 0)})
    assert mined.above(choice.threshold).pairs() == [(0, 0)] and choice.f1 == 1.0
    nothing = best_threshold(mined, {(5, 5)})
    assert nothing.f1 == 0.0 and len(mined.above(nothing.threshold)) == 0


# --- files --------------------------------------------------------------------------------


def test_read_gold(tmp_path: Path):
    path = tmp_path / "gold.tsv"
    path.write_text("1\t2\n\n3\t1\n1\t2\n", encoding="utf-8")
    assert read_gold(path, {1, 3}, {1, 2}) == [(1, 2), (3, 1)]


@pytest.mark.parametrize(("text", "message"), [
    ("1\t2\nx\t3\n", "gold.tsv:2: expected two line numbers"),
    ("1\t2\t3\n", "gold.tsv:1: expected two line numbers"),
    ("0\t1\n", "gold.tsv:1: expected two line numbers"),
    ("1\t9\n", "gold.tsv:1: target: line 9 of the target file holds no sentence"),
    ("\n\n", "gold.tsv: no gold pairs"),
])
def test_bad_gold_files_name_the_line(tmp_path: Path, text, message):
    path = tmp_path / "gold.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_gold(path, {1, 2}, {1, 2})
    assert str(caught.value) == str(tmp_path / message) or str(caught.value).startswith(
        str(tmp_path / message))


def test_bitext_columns_and_reading(tmp_path: Path):
    path = tmp_path / "tatoeba.deu-eng.tsv"
    path.write_text('deu\teng\nHallo "Welt"\tHello world\n"a\tb"\tc\n', encoding="utf-8")
    assert bitext_columns(path) == {"anchor": "deu", "positive": "eng"}
    from contralign.data import DataConfig

    records = read_bitext(DataConfig(path=str(path)))
    assert [(r.anchor, r.positive) for r in records] == [('Hallo "Welt"', "Hello world"),
                                                         ("a\tb", "c")]
    three = tmp_path / "three.tsv"
    three.write_text("a\tb\tc\nx\ty\tz\n", encoding="utf-8")
    with pytest.raises(DataError, match="three.tsv:1: columns: a bitext file needs two"):
        bitext_columns(three)


def test_tatoeba_split():
    train, test = tatoeba_split(list(range(800)))
    assert train == list(range(400)) and test == list(range(400, 800))
    train, test = tatoeba_split(list(range(548)))
    assert len(train) == 148 and test == list(range(148, 548))
    assert tatoeba_split([1, 2], test_rows=5) == ([], [1, 2])


class LookupEncoder:
    """A deterministic mock tower: each text's vector from a table."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.calls = 0

    def encode(self, items, batch_size=32):
        self.calls += 1
        return np.stack([self.table[item] for item in items]).astype(np.float32)


def test_evaluator_embeds_each_side_with_its_tower():
    src, tgt = noisy_translations(seed=8, n=15, m=15, noise=0.8)
    sources = [f"s{i}" for i in range(15)]
    targets = [f"t{i}" for i in range(15)]
    query = LookupEncoder(dict(zip(sources, src, strict=True)))
    document = LookupEncoder(dict(zip(targets, tgt, strict=True)))
    evaluator = BitextEvaluator(sources, targets, scoring="margin", backend="exact")
    result = evaluator(Sides(query, document))
    assert result == tatoeba_accuracy(src, tgt, scoring="margin", backend="exact")
    assert evaluator.primary in result and query.calls == document.calls == 1
    both = LookupEncoder({**query.table, **document.table})
    assert evaluator(both) == result


def test_eval_bitext_is_a_dev_set_during_training(tiny_model_dir, pairs_file, tmp_path):
    from tests.conftest import PAIRS

    import contralign
    from contralign.training.config import TrainConfig
    from contralign.training.loop import fit

    dev = tmp_path / "dev.tsv"
    dev.write_text("src\ttgt\n" + "".join(f"{a}\t{b}\n" for a, b in PAIRS), encoding="utf-8")
    config = TrainConfig.model_validate({
        "model": {"name": str(tiny_model_dir), "max_length": 32},
        "data": {"path": str(pairs_file), "columns": {"anchor": "query", "positive": "doc"}},
        "train": {"epochs": 1, "batch_size": 4, "seed": 0},
        "eval": {"bitext": {"path": str(dev)}}, "output_dir": str(tmp_path / "run")})
    result = fit(config, progress=False)
    tower = contralign.load_tower(str(result.model_dir))
    src = tower.encode([a for a, _ in PAIRS], batch_size=32)
    tgt = tower.encode([b for _, b in PAIRS], batch_size=32)
    forward, _, backward, _ = naive_matches(src, tgt, "cosine", 1)
    gold = np.arange(len(PAIRS))
    assert result.metrics["bitext/forward_accuracy"] == np.mean(np.array(forward) == gold)
    assert result.metrics["bitext/backward_accuracy"] == np.mean(np.array(backward) == gold)
