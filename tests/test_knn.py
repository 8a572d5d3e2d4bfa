"""Weighted k-NN evaluation (InstDisc, arXiv:1805.01978) against a naive loop and scikit-learn's
``KNeighborsClassifier``; the evaluator on real images; the IDX reader of Fashion-MNIST."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from test_evaluation_sides import ColourTower, cifar_part
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.core.errors import DataError
from contralign.data.idx import read_idx, read_idx_labelled
from contralign.data.labelled import read_labelled_images
from contralign.evaluation import evaluate_with_intervals
from contralign.evaluation.knn import KNNEvaluator, knn_class_scores, true_class_ranks

FASHION = Path("/usr/share/datasets/fashion-mnist")


def naive_knn_scores(train: np.ndarray, labels: np.ndarray, test: np.ndarray, classes: int,
                     k: int, temperature: float, uniform: bool = False) -> np.ndarray:
    """InstDisc's vote written as loops: cosine to every training row, the k most similar
    (ties to the lower index, by a stable sort), each adding exp(s / T) (or 1) to its class."""
    scores = np.zeros((len(test), classes))
    for i, query in enumerate(test):
        sims = [float(query @ row / np.linalg.norm(query) / np.linalg.norm(row)) for row in train]
        order = sorted(range(len(train)), key=lambda j: -sims[j])  # stable: lower index first
        for j in order[:k]:
            scores[i, labels[j]] += 1.0 if uniform else np.exp(sims[j] / temperature)
    return scores


def blobs(seed: int, n: int, m: int, classes: int = 7, dim: int = 16
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    y, y_test = rng.integers(0, classes, n), rng.integers(0, classes, m)
    x = centres[y] * 0.7 + rng.normal(size=(n, dim))
    return x, y, centres[y_test] * 0.7 + rng.normal(size=(m, dim)), y_test


@pytest.mark.parametrize(("seed", "k", "uniform"), [(0, 20, False), (1, 5, True), (2, 200, False)])
def test_scores_match_naive_loop(seed: int, k: int, uniform: bool) -> None:
    x, y, x_test, _ = blobs(seed, 150, 40)
    got = knn_class_scores(x, y, x_test, 7, k=k, temperature=0.1,
                           weights="uniform" if uniform else "exp", block=7)
    expected = naive_knn_scores(x, y, x_test, 7, k, 0.1, uniform)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_ties_take_the_lower_training_index_and_the_lower_class() -> None:
    # Training rows 0 (class 2) and 1 (class 1) are equally similar to the query; k = 1 takes
    # row 0. With k = 2, classes 1 and 2 score equally and class 1 (lower) is predicted.
    train = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([2, 1, 0])
    query = np.array([[2.0, 0.0]])
    one = knn_class_scores(train, labels, query, 3, k=1)
    assert one[0].tolist() == [0.0, 0.0, pytest.approx(np.exp(10.0))]
    two = knn_class_scores(train, labels, query, 3, k=2)
    assert two[0, 1] == two[0, 2] and np.argmax(two[0]) == 1
    ranks = true_class_ranks(two, np.array([2]))
    assert ranks.tolist() == [1]  # class 2 ties with class 1, which is ahead
    assert true_class_ranks(two, np.array([-1])).tolist() == [3]  # an unseen class: never right


def test_matches_scikit_learn_uniform_and_weighted() -> None:
    neighbors = pytest.importorskip("sklearn.neighbors")
    x, y, x_test, _ = blobs(3, 400, 120)
    # Uniform votes: scikit-learn's majority vote, ties to the smallest label (argmax's order).
    ours = knn_class_scores(x, y, x_test, 7, k=15, weights="uniform").argmax(axis=1)
    theirs = neighbors.KNeighborsClassifier(n_neighbors=15, metric="cosine",
                                            algorithm="brute").fit(x, y).predict(x_test)
    assert (ours == theirs).all()
    # InstDisc's weights as a callable of cosine distance d = 1 - s: the same class scores.
    weighted = neighbors.KNeighborsClassifier(
        n_neighbors=15, metric="cosine", algorithm="brute",
        weights=lambda d: np.exp((1.0 - d) / 0.1)).fit(x, y)
    scores = knn_class_scores(x, y, x_test, 7, k=15, temperature=0.1)
    np.testing.assert_allclose(scores / scores.sum(1, keepdims=True),
                               weighted.predict_proba(x_test), atol=1e-9)
    assert (scores.argmax(1) == weighted.predict(x_test)).all()


def test_block_size_and_input_dtype_do_not_change_the_scores() -> None:
    x, y, x_test, _ = blobs(4, 300, 50)
    whole = knn_class_scores(x, y, x_test, 7, k=30, block=1000)
    # Equal up to the matrix product's rounding, which depends on the block's shape.
    np.testing.assert_allclose(knn_class_scores(x, y, x_test, 7, k=30, block=3), whole,
                               rtol=1e-12)
    single = knn_class_scores(x.astype(np.float32), y, x_test.astype(np.float32), 7, k=30)
    assert (single.argmax(1) == whole.argmax(1)).all()
    # k above the training set uses every row.
    np.testing.assert_allclose(knn_class_scores(x[:10], y[:10], x_test, 7, k=200),
                               naive_knn_scores(x[:10], y[:10], x_test, 7, 10, 0.1))


def test_validates() -> None:
    x, y, x_test, _ = blobs(5, 20, 5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        knn_class_scores(x, y, x_test, 7, temperature=0.0)
    with pytest.raises(ValueError, match=r"train_labels must lie in \[0, 3\)"):
        knn_class_scores(x, y, x_test, 3)
    with pytest.raises(ValueError, match="16-d and test 4-d"):
        knn_class_scores(x, y, x_test[:, :4], 7)
    with pytest.raises(ValueError, match="items \\(2\\) and labels \\(1\\)"):
        KNNEvaluator(["a", "b"], [1], ["c"], [1])
    with pytest.raises(ValueError, match="mix class indices and names"):
        KNNEvaluator(["a", "b"], [1, "x"], ["c"], [1])


def test_evaluator_on_cifar_matches_naive_and_bootstraps(shared_data: Path) -> None:
    items, labels, _, arrays = cifar_part(shared_data, per_class=40)
    train, test = items[::2], items[1::2]
    train_y, test_y = labels[::2], labels[1::2]
    tower = ColourTower(np.full(6, 0.3))
    evaluator = KNNEvaluator(train, train_y, test, test_y, k=20)
    got = evaluator(tower)
    raw = tower.raw(arrays) - 0.3  # the tower's own features, by rows
    expected = naive_knn_scores(raw[::2], np.array(train_y), raw[1::2], 5, 20, 0.1)
    assert got == {"top1": pytest.approx(np.mean(expected.argmax(1) == np.array(test_y)))}
    assert "top5" not in got  # 5 classes: top-5 would be 1 for every image
    assert got["top1"] > 0.25  # colour statistics beat the 0.2 of chance on five classes
    metrics, intervals = evaluate_with_intervals(tower, [evaluator], 0.9, resamples=200)
    assert metrics == {"knn/top1": got["top1"]}
    lo, hi = intervals["knn/top1"]
    assert lo < got["top1"] < hi


def test_idx_reader_and_fashion_mnist(tmp_path: Path) -> None:
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} is absent (apt-get install dataset-fashion-mnist)")
    images, labels = read_idx_labelled(FASHION / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # Fashion-MNIST's balanced test set
    sample = read_labelled_images(FASHION / "t10k-images-idx3-ubyte.gz", key="--test", limit=300)
    assert len(sample.items) == 300 and sample.items[0].array is not None
    assert sample.items[0].array.shape == (28, 28, 3)
    tower = ColourTower(np.full(6, 0.2))
    top1 = KNNEvaluator(sample.items[:200], sample.labels[:200], sample.items[200:],
                        sample.labels[200:], k=10)(tower)["top1"]
    assert top1 > 0.2  # ink statistics beat the 0.1 of chance on ten classes


def test_idx_reader_errors(tmp_path: Path) -> None:
    good = b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(6)
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(good)
    assert read_idx(path).shape == (2, 3)
    gz = tmp_path / "x-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(good))
    assert read_idx(gz).shape == (2, 3)
    cases = {
        b"\x01\x00\x08\x01" + bytes(8): "not an IDX file: magic number 01000801",
        good[:-1]: r"header says \(2, 3\) uint8 \(6 bytes\), file holds 5 bytes",
        good + b"\x00": "file holds more",
        b"\x00\x00\x08\x01" + (10**9).to_bytes(4, "big"): "does not fit the file",
        b"\x00\x00\x08\x03" + bytes(4): "header cut short",
    }
    for data, message in cases.items():
        path.write_bytes(data)
        with pytest.raises(DataError, match=message):
            read_idx(path)
    gz.write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(DataError, match="damaged file"):
        read_idx(gz)
    path.write_bytes(b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (1, 2, 3))
                     + bytes(6))
    with pytest.raises(DataError, match="x-labels-idx1-ubyte: file not found"):
        read_idx_labelled(path)
    with pytest.raises(DataError, match="named like train-images-idx3-ubyte"):
        read_idx_labelled(gz)


def test_cli_one_line_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    train = tmp_path / "train.npz"
    np.savez(train, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.arange(4))
    result = runner.invoke(app, ["eval", str(tiny_model_dir), "--knn", "--train", str(train)])
    assert "give both --train FILE and --test FILE" in one_line_error(result)
    result = runner.invoke(app, ["eval", str(tiny_model_dir), "--linear-probe", "--train",
                                 str(train), "--test", str(train)])
    assert "has no image tower" in one_line_error(result)


def test_dev_sets_build_knn_and_linear_probe(shared_data: Path, tmp_path: Path) -> None:
    from contralign.evaluation import LinearProbeEvaluator, evaluate_all
    from contralign.training.config import EvalConfig
    from contralign.training.dev import DevSets

    path = shared_data / "images" / "cifar10-part-a.npz"
    labelled = {"train": {"path": str(path), "limit": 200}, "test": {"path": str(path),
                                                                      "limit": 50}}
    config = EvalConfig.model_validate({"knn": {**labelled, "k": 20},
                                        "linear_probe": {**labelled, "c": [0.5]}})
    dev = DevSets.from_config(config)
    knn, probe = dev.evaluators
    assert isinstance(knn, KNNEvaluator) and isinstance(probe, LinearProbeEvaluator)
    assert (knn.k, knn.temperature, len(knn.train_items), len(knn.test_items)) == (20, 0.1, 200, 50)
    assert probe.grid == (0.5,) and dev.sample is None
    metrics = evaluate_all(ColourTower(np.full(6, 0.3)), dev.evaluators)
    assert set(metrics) == {"knn/top1", "linear_probe/top1"}
    with pytest.raises(ValueError, match="k"):
        EvalConfig.model_validate({"knn": {**labelled, "k": 0}})
