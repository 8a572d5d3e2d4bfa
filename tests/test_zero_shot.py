"""Zero-shot classification: against a naive computation (loops, float64) on mock towers and on
CIFAR-10 images, known answers, validation, scikit-learn's metrics, and open_clip's classifier
construction as an independent reference (in the reference environment)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from test_evaluation import TableEncoder, naive_cosine, naive_unit, random_table
from test_evaluation_sides import ColourTower, cifar_part, class_text_tower, image

from contralign.evaluation import (
    DEFAULT_TEMPLATES,
    ModalityError,
    Sides,
    ZeroShotEvaluator,
    evaluate_all,
    zero_shot_classifier,
    zero_shot_from_records,
)

# --- the naive reference ------------------------------------------------------------------


def naive_class_vectors(text_table: dict[str, np.ndarray], class_names: list[str],
                        templates: list[str]) -> list[list[float]]:
    """CLIP's prompt ensemble by loops: unit prompts, their mean, made unit again."""
    vectors = []
    for name in class_names:
        units = [naive_unit(text_table[t.format(label=name)].tolist()) for t in templates]
        mean = [sum(column) / len(units) for column in zip(*units, strict=True)]
        vectors.append(naive_unit(mean))
    return vectors


def naive_zero_shot(image_rows: np.ndarray, labels: list[int],
                    class_vectors: list[list[float]]) -> dict[str, Any]:
    c = len(class_vectors)
    confusion = [[0] * c for _ in range(c)]
    top1 = top5 = 0
    for row, label in zip(image_rows, labels, strict=True):
        scores = [naive_cosine(row.tolist(), vector) for vector in class_vectors]
        best = 0
        for j in range(1, c):
            if scores[j] > scores[best]:  # ties keep the lower class
                best = j
        confusion[label][best] += 1
        ahead = sum(1 for j in range(c) if scores[j] > scores[label]
                    or (scores[j] == scores[label] and j < label))
        top1 += ahead < 1
        top5 += ahead < 5
    per_class = [confusion[k][k] / sum(confusion[k]) for k in range(c) if sum(confusion[k])]
    out: dict[str, Any] = {"top1": top1 / len(labels), "mean_per_class":
                           sum(per_class) / len(per_class), "confusion": confusion}
    if c >= 5:
        out["top5"] = top5 / len(labels)
    return out


def zero_shot_case(seed: int, n: int = 60, n_classes: int = 7, present: int = 4,
                   templates: tuple[str, ...] = ("a {label}.", "the {label}!", "{label} {label}")
                   ) -> tuple[Sides, list[Any], list[int], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    class_names = [f"class{c}" for c in range(n_classes)]
    prompts = [t.format(label=name) for name in class_names for t in templates]
    text = TableEncoder(random_table(rng, prompts, 5), "text")
    # Prompts of very different norms: each must be normalised before the mean.
    for prompt in prompts:
        text.table[prompt] *= rng.uniform(0.1, 20.0)
    keys = [f"img{i}" for i in range(n)]
    images = TableEncoder(random_table(rng, keys, 5), "image")
    labels = [int(c) for c in rng.integers(0, present, n)]  # classes >= present: distractors
    return Sides(images, text), [image(k) for k in keys], labels, class_names, list(templates)


# --- against the naive computation --------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zero_shot_matches_naive(seed: int) -> None:
    sides, images, labels, class_names, templates = zero_shot_case(seed)
    evaluator = ZeroShotEvaluator(images, labels, class_names, templates)
    got = evaluator(sides)
    image_rows = np.stack([sides.image.table[item.key] for item in images])  # type: ignore
    expected = naive_zero_shot(image_rows, labels, naive_class_vectors(
        sides.text.table, class_names, templates))  # type: ignore[attr-defined]
    assert set(got) == {"top1", "top5", "mean_per_class"}
    for key in ("top1", "top5", "mean_per_class"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert evaluator.details["confusion_matrix"] == expected["confusion"]
    np.testing.assert_allclose(
        evaluator.classifier(sides.text),
        naive_class_vectors(sides.text.table, class_names, templates),  # type: ignore
        rtol=0, atol=1e-6)  # float32 embeddings from the tower
    # Names as labels give the same result; so does listing the towers the other way round.
    named = ZeroShotEvaluator(images, [class_names[k] for k in labels], class_names, templates)
    assert named(Sides(sides.document, sides.query)) == got


def test_each_prompt_and_image_embedded_once_by_its_tower() -> None:
    sides, images, labels, class_names, _ = zero_shot_case(3)
    # Repeated images; two templates that give one prompt ("{label}" twice is the same text).
    templates = ["{label}", "{label}"]
    for name in class_names:
        sides.text.table[name] = np.ones(5)  # type: ignore[attr-defined]
    ZeroShotEvaluator(images + images[:5], labels + labels[:5], class_names, templates)(sides)
    text, image_tower = sides.text, sides.image
    assert text.calls == [class_names]  # type: ignore[attr-defined]
    assert image_tower.calls == [images]  # type: ignore[attr-defined]


# --- known answers ------------------------------------------------------------------------


def test_zero_shot_known_answers() -> None:
    # Classes along e1, e2, e3; the ensemble of e1 and 100 e2 is (e1 + e2) / sqrt 2.
    e = np.eye(3)
    text = TableEncoder({"a x": e[0], "a y": e[1], "a z": e[2],
                         "b x": e[0], "b y": 100 * e[1], "b z": e[2]}, "text")
    np.testing.assert_allclose(
        zero_shot_classifier(np.stack([[text.table["a x"], text.table["b y"]]])),
        [[1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]], atol=1e-12)
    pictures = TableEncoder({"p0": e[0], "p1": e[1], "tie": e[0] + e[1], "p2": -e[2]}, "image")
    items = [image(k) for k in ("p0", "p1", "tie", "p2")]
    evaluator = ZeroShotEvaluator(items, [0, 1, 1, 2], ["x", "y", "z"], ["a {label}"])
    got = evaluator(Sides(pictures, text))
    # p0, p1 right; "tie" scores x and y equally and goes to x (the lower class), so wrong;
    # p2 points away from z: last.
    assert got == {"top1": 0.5, "mean_per_class": pytest.approx((1 + 0.5 + 0) / 3)}
    assert "top5" not in got  # fewer than 5 classes
    assert evaluator.details["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [1, 0, 0]]
    assert list(evaluator.result.true_ranks) == [0, 0, 1, 2]  # type: ignore[union-attr]


def test_details_are_json_and_name_distractors() -> None:
    sides, images, labels, class_names, templates = zero_shot_case(4)
    evaluator = ZeroShotEvaluator(images, labels, class_names, templates, name="zs")
    with pytest.raises(RuntimeError, match="zs: call the evaluator"):
        _ = evaluator.details
    metrics = evaluate_all(sides, [evaluator])
    assert metrics["zs/top1"] == evaluator.result.metrics()["top1"]  # type: ignore[union-attr]
    details = json.loads(json.dumps(evaluator.details))
    assert details["class_names"] == class_names
    matrix = np.array(details["confusion_matrix"])
    assert matrix.shape == (7, 7) and matrix.sum() == len(images)
    assert list(matrix.sum(1)) == [labels.count(c) for c in range(7)]
    assert details["support"] == {name: labels.count(c) for c, name in enumerate(class_names)}
    assert [details["per_class_accuracy"][name] for name in class_names[4:]] == [None] * 3
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["zs/top1"])


# --- validation ---------------------------------------------------------------------------


def test_zero_shot_validates() -> None:
    items = [image("a"), image("b")]
    with pytest.raises(ValueError, match=r"labels\[1\]: 'dog' is not a class name"):
        ZeroShotEvaluator(items, ["cat", "dog"], ["cat", "bird"])
    with pytest.raises(ValueError, match=r"labels\[0\]: class index 2 is out of range"):
        ZeroShotEvaluator(items, [2, 0], ["cat", "bird"])
    with pytest.raises(ValueError, match=r"labels\[0\]: expected a class index or name"):
        ZeroShotEvaluator(items, [True, 0], ["cat", "bird"])
    with pytest.raises(ValueError, match="distinct names"):
        ZeroShotEvaluator(items, [0, 0], ["cat", "cat"])
    with pytest.raises(ValueError, match="equal in number"):
        ZeroShotEvaluator(items, [0], ["cat"])
    for bad in (["a photo of a {}."], ["{label} and {other}"], ["a {label"], ["no field"], []):
        with pytest.raises(ValueError, match="templates"):
            ZeroShotEvaluator(items, [0, 0], ["cat"], bad)
    assert ZeroShotEvaluator(items, [np.int64(0), 0], ["cat"]).labels.tolist() == [0, 0]
    sides, images, labels, class_names, templates = zero_shot_case(5)
    evaluator = ZeroShotEvaluator(images, labels, class_names, templates)
    with pytest.raises(ModalityError, match="needs an image tower"):
        evaluator(sides.text)
    wide = TableEncoder({k: np.ones(9) for k in sides.image.table}, "image")  # type: ignore
    with pytest.raises(ValueError, match="9-d .* 5-d"):
        evaluator(Sides(wide, sides.text))


def test_default_templates() -> None:
    assert len(set(DEFAULT_TEMPLATES)) == len(DEFAULT_TEMPLATES) >= 5
    evaluator = ZeroShotEvaluator([image("a")], [0], ["cat"])
    assert evaluator.templates == DEFAULT_TEMPLATES
    assert all(t.format(label="cat").count("cat") == 1 for t in DEFAULT_TEMPLATES)


def test_zero_shot_from_records() -> None:
    records = [SimpleNamespace(anchor=image("a"), label="dog", line=2),
               SimpleNamespace(anchor=image("b"), label="cat", line=3)]
    evaluator = zero_shot_from_records(records)
    assert evaluator.class_names == ("cat", "dog") and evaluator.labels.tolist() == [1, 0]
    with_names = zero_shot_from_records(records, ["dog", "cat", "bird"], ["{label}"])
    assert with_names.labels.tolist() == [0, 1] and with_names.templates == ("{label}",)
    with pytest.raises(ValueError, match="line 4: label: missing"):
        zero_shot_from_records([SimpleNamespace(anchor=image("a"), label=None, line=4)])
    with pytest.raises(ValueError, match="give class_names"):
        zero_shot_from_records([SimpleNamespace(anchor=image("a"), label=3, line=2)])
    # Records of an .npz file hold integer labels as decimal texts: indices into class_names.
    npz_like = [SimpleNamespace(anchor=image("a"), label="2", line=1),
                SimpleNamespace(anchor=image("b"), label="0", line=2)]
    assert zero_shot_from_records(npz_like, ["cat", "dog", "bird"]).labels.tolist() == [2, 0]
    with pytest.raises(ValueError, match="give class_names"):
        zero_shot_from_records(npz_like)
    # A class named by digits is a name first.
    digits = zero_shot_from_records(npz_like, ["2", "0", "x"])
    assert digits.labels.tolist() == [0, 1]


# --- real images: CIFAR-10 with a tiny fake image tower -----------------------------------


def test_zero_shot_on_cifar_matches_naive(shared_data: Path) -> None:
    # 5 present classes scored against all 10 CIFAR-10 names (5 distractors), as in issue 9.
    items, labels, classes, arrays = cifar_part(shared_data, per_class=100)
    train = [i for i in range(len(items)) if i % 100 < 50]  # prompts placed from these
    test = [i for i in range(len(items)) if i % 100 >= 50]
    offset = ColourTower.raw(arrays).mean(0)
    templates = list(DEFAULT_TEMPLATES[:3])
    text = class_text_tower(arrays[train], [labels[i] for i in train], classes, offset,
                            templates)
    image_tower = ColourTower(offset)
    evaluator = ZeroShotEvaluator([items[i] for i in test], [labels[i] for i in test], classes,
                                  templates)
    got = evaluator(Sides(image_tower, text))
    image_rows = image_tower.encode([items[i] for i in test], 32).astype(np.float64)
    expected = naive_zero_shot(image_rows, [labels[i] for i in test],
                               naive_class_vectors(text.table, classes, templates))
    for key in ("top1", "top5", "mean_per_class"):
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    assert evaluator.details["confusion_matrix"] == expected["confusion"]
    print(f"CIFAR-10 zero-shot, colour features ({len(test)} images, 10 names): "
          f"top1 {got['top1']:.3f}, top5 {got['top5']:.3f}, "
          f"mean per class {got['mean_per_class']:.3f}")
    assert got["top1"] > 0.25  # chance: 0.1 over 10 names, 0.2 over the 5 present


# --- open_clip as an independent reference (reference environment) ------------------------


class OpenClipMock:
    """What open_clip's zero-shot code calls: a tokenizer (texts -> ids) and
    ``model.encode_text(ids, normalize=...)``, over the same table as our text tower."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        import torch

        self.texts = list(table)
        self.rows = torch.tensor(np.stack([table[t] for t in self.texts]), dtype=torch.float64)

    def tokenizer(self, texts: list[str]) -> Any:
        import torch

        return torch.tensor([self.texts.index(t) for t in texts])

    def encode_text(self, ids: Any, normalize: bool = False) -> Any:
        import torch

        out = self.rows[ids]
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out


@pytest.mark.reference
@pytest.mark.parametrize("per_batch", [None, 1, 3])
def test_classifier_matches_open_clip(per_batch: int | None) -> None:
    zero_shot = pytest.importorskip("open_clip.zero_shot_classifier")
    sides, images, labels, class_names, templates = zero_shot_case(6)
    table = sides.text.table  # type: ignore[attr-defined]
    mock = OpenClipMock(table)
    # open_clip formats a template with str.format(name) or calls it: give it callables.
    as_callables = [lambda name, t=t: t.format(label=name) for t in templates]
    evaluator = ZeroShotEvaluator(images, labels, class_names, templates)
    ours = zero_shot_classifier(np.stack([
        np.stack([table[t.format(label=name)] for t in templates]) for name in class_names]))
    # The evaluator's classifier is the same construction (float32 embeddings from the tower).
    np.testing.assert_allclose(evaluator.classifier(sides.text), ours, atol=1e-6)
    theirs = zero_shot.build_zero_shot_classifier(
        mock, mock.tokenizer, class_names, as_callables, num_classes_per_batch=per_batch)
    np.testing.assert_allclose(ours, theirs.T.numpy(), rtol=0, atol=1e-12)  # (C, D)
    legacy = zero_shot.build_zero_shot_classifier_legacy(
        mock, mock.tokenizer, class_names, as_callables)
    np.testing.assert_allclose(ours, legacy.T.numpy(), rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # distractors
def test_metrics_match_scikit_learn() -> None:
    # scikit-learn's top-k accuracy, balanced accuracy (mean recall over the classes present)
    # and confusion matrix, on our scores and predictions.
    metrics = pytest.importorskip("sklearn.metrics")
    sides, images, labels, class_names, templates = zero_shot_case(7, n=200, n_classes=9,
                                                                   present=6)
    evaluator = ZeroShotEvaluator(images, labels, class_names, templates)
    got = evaluator(sides)
    result = evaluator.result
    assert result is not None
    every = list(range(len(class_names)))
    for k in (1, 5):
        theirs = metrics.top_k_accuracy_score(labels, result.scores, k=k, labels=every)
        assert got[f"top{k}"] == pytest.approx(theirs, abs=1e-12)
    assert got["mean_per_class"] == pytest.approx(
        metrics.balanced_accuracy_score(labels, result.predictions), abs=1e-12)
    np.testing.assert_array_equal(
        result.confusion_matrix(), metrics.confusion_matrix(labels, result.predictions,
                                                            labels=every))
