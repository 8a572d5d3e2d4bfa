"""Linear probe (L-BFGS multinomial logistic regression in float64) against scikit-learn's
``LogisticRegression`` on the same standardised features; choosing C; the evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_evaluation_sides import ColourTower, cifar_part

from contralign.evaluation import evaluate_with_intervals
from contralign.evaluation.linear_probe import LinearProbeEvaluator, choose_c, fit_linear_probe


def blobs(seed: int, n: int, m: int, classes: int = 6, dim: int = 24
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    scales = rng.uniform(0.5, 5.0, dim)  # features on different scales: standardising matters
    y, y_test = rng.integers(0, classes, n), rng.integers(0, classes, m)
    x = (centres[y] * 0.5 + rng.normal(size=(n, dim))) * scales + 3.0
    x_test = (centres[y_test] * 0.5 + rng.normal(size=(m, dim))) * scales + 3.0
    return x, y, x_test, y_test


@pytest.mark.parametrize(("seed", "c"), [(0, 1.0), (1, 0.01), (2, 10.0)])
def test_matches_scikit_learn(seed: int, c: float) -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, y, x_test, y_test = blobs(seed, 500, 400)
    probe = fit_linear_probe(x, y, 6, c)
    mean, std = x.mean(0), x.std(0)
    # scikit-learn run to a tight tolerance, so both sit at the one optimum of the objective.
    theirs = linear_model.LogisticRegression(C=c, solver="lbfgs", max_iter=10_000,
                                             tol=1e-10).fit((x - mean) / std, y)
    np.testing.assert_allclose(probe.weight, theirs.coef_, atol=2e-3 * np.abs(theirs.coef_).max())
    # Softmax ignores a common shift of the (unpenalised) biases: compare them centred.
    np.testing.assert_allclose(probe.bias - probe.bias.mean(),
                               theirs.intercept_ - theirs.intercept_.mean(), atol=2e-3)
    ours = probe.predict(x_test)
    sklearn_predictions = theirs.predict((x_test - mean) / std)
    assert np.mean(ours == sklearn_predictions) >= 0.995
    assert abs(np.mean(ours == y_test) - np.mean(sklearn_predictions == y_test)) <= 0.005


def test_standardisation_makes_the_probe_scale_invariant() -> None:
    x, y, x_test, _ = blobs(3, 300, 100)
    probe = fit_linear_probe(x, y, 6, 0.5)
    scaled = fit_linear_probe(x * 1000.0 - 7.0, y, 6, 0.5)
    np.testing.assert_allclose(scaled.logits(x_test * 1000.0 - 7.0), probe.logits(x_test),
                               rtol=1e-6, atol=1e-6)
    # A constant feature is only centred (no division by zero).
    constant = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    assert np.isfinite(fit_linear_probe(constant, y, 6).weight).all()


def test_choose_c_picks_the_best_held_out_accuracy() -> None:
    x, y, _, _ = blobs(4, 400, 10)
    best, accuracy = choose_c(x, y, 6, [10.0, 1e-4, 0.1])
    assert list(accuracy) == [1e-4, 0.1, 10.0]
    assert accuracy[best] == max(accuracy.values())
    assert accuracy[1e-4] < accuracy[best]  # almost no fit at all loses


def test_validates() -> None:
    x, y, _, _ = blobs(5, 30, 5)
    with pytest.raises(ValueError, match="c must be positive"):
        fit_linear_probe(x, y, 6, c=0.0)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        fit_linear_probe(x, y, 2)
    with pytest.raises(ValueError, match="give one or more positive values"):
        LinearProbeEvaluator(["a"], [0], ["b"], [0], c=[])


def test_evaluator_on_cifar(shared_data: Path) -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    items, labels, _, arrays = cifar_part(shared_data, per_class=60)
    train, test = items[::2], items[1::2]
    train_y, test_y = np.array(labels[::2]), np.array(labels[1::2])
    tower = ColourTower(np.full(6, 0.3))
    evaluator = LinearProbeEvaluator(train, train_y.tolist(), test, test_y.tolist(), c=1.0)
    got = evaluator(tower)
    raw = (tower.raw(arrays) - 0.3).astype(np.float32).astype(np.float64)
    mean, std = raw[::2].mean(0), raw[::2].std(0)
    theirs = linear_model.LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10).fit(
        (raw[::2] - mean) / std, train_y).predict((raw[1::2] - mean) / std)
    assert got["top1"] == pytest.approx(np.mean(theirs == test_y), abs=0.005)
    assert got["top1"] > 0.3  # colour statistics beat the 0.2 of chance on five classes
    metrics, intervals = evaluate_with_intervals(tower, [evaluator], 0.9, resamples=200)
    assert metrics == {"linear_probe/top1": got["top1"]}
    assert intervals["linear_probe/top1"][0] < got["top1"] < intervals["linear_probe/top1"][1]
    assert evaluator.settings()["c"] == 1.0
