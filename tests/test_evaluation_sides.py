"""Evaluation with a tower per side: ``Sides``, STS/retrieval/geometry with two towers against
naive loops, one encoder giving the same numbers as before, and cross-modal retrieval
(image -> text, text -> image) against naive loops on mock towers and on CIFAR-10 images."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from test_evaluation import (
    TableEncoder,
    naive_alignment,
    naive_cosine,
    naive_modality_gap,
    naive_retrieval,
    naive_spearman,
    naive_uniformity,
    random_table,
)

from contralign.core.errors import ContralignError
from contralign.core.items import ImageItem
from contralign.evaluation import (
    CrossModalRetrievalEvaluator,
    GeometryEvaluator,
    ModalityError,
    RetrievalEvaluator,
    Sides,
    STSEvaluator,
    cross_modal_from_records,
    encode_sides,
    evaluate_all,
)

# --- Sides --------------------------------------------------------------------------------


def test_sides_of_one_encoder_or_sides() -> None:
    encoder = TableEncoder({})
    sides = Sides.of(encoder)
    assert sides.query is encoder and sides.document is encoder and sides.shared
    assert Sides.of(sides) is sides
    two = Sides(TableEncoder({}), TableEncoder({}))
    assert Sides.of(two) is two and not two.shared
    with pytest.raises(TypeError, match="Sides.query: expected an encoder.*str"):
        Sides.of("model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Sides.document"):
        Sides(encoder, object())  # type: ignore[arg-type]


def test_sides_pick_the_tower_of_each_modality() -> None:
    image, text = TableEncoder({}, "image"), TableEncoder({}, "text")
    for sides in (Sides(image, text), Sides(text, image)):
        assert sides.image is image and sides.text is text
    plain = SimpleNamespace(encode=lambda items, batch_size: None)  # says nothing: text
    assert Sides.of(plain).text is plain  # type: ignore[arg-type]
    with pytest.raises(ModalityError, match=r"needs an image tower; the model has text \(query "
                       r"side\) and text \(document side\)") as caught:
        Sides.of(text).image  # noqa: B018
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ContralignError)
    with pytest.raises(ModalityError, match="needs a text tower"):
        Sides.of(image).text  # noqa: B018


def test_sides_from_roles() -> None:
    image, text = TableEncoder({}, "image"), TableEncoder({}, "text")
    sides = Sides.from_roles({"img": image, "txt": text}, {"anchor": "img", "positive": "txt"})
    assert sides.query is image and sides.document is text
    shared = Sides.from_roles({"txt": text}, {"anchor": "txt", "positive": "txt"})
    assert shared.shared
    assert Sides.from_roles({"txt": text}, {"anchor": "txt"}).shared  # SimCSE: one role


# --- one encoder: the same numbers as before ----------------------------------------------


def mixed_case(seed: int) -> tuple[TableEncoder, list[str], list[str], list[float]]:
    """Pairs with repeats within and across sides."""
    rng = np.random.default_rng(seed)
    names = [f"t{i}" for i in range(25)]
    first = [names[i] for i in rng.integers(0, 25, 60)]
    second = [names[i] for i in rng.integers(0, 25, 60)]
    scores = rng.random(60).tolist()
    return TableEncoder(random_table(rng, names, 7)), first, second, scores


def test_one_encoder_is_both_sides_exactly() -> None:
    encoder, first, second, scores = mixed_case(0)
    evaluators = [STSEvaluator(first, second, scores),
                  RetrievalEvaluator.from_pairs(first, second),
                  GeometryEvaluator(first, second)]
    for evaluator in evaluators:
        plain = evaluator(encoder)
        assert evaluator(Sides.of(encoder)) == plain
        assert evaluator(Sides(encoder, encoder)) == plain
    together = evaluate_all(encoder, evaluators)
    assert evaluate_all(Sides.of(encoder), evaluators) == together
    # One tower embeds an item found on both sides once: STS and geometry in one call each.
    encoder.calls.clear()
    evaluators[0](encoder)
    assert len(encoder.calls) == 1 and sorted(encoder.calls[0]) == sorted(set(first + second))


# --- two towers: each side by its own tower -----------------------------------------------


def two_towers(seed: int, n: int = 40) -> tuple[Sides, list[str], list[str], list[float]]:
    """Two text towers that embed the same names differently; the sides share names."""
    rng = np.random.default_rng(seed)
    names = [f"t{i}" for i in range(20)]
    query = TableEncoder(random_table(rng, names, 6))
    document = TableEncoder(random_table(rng, names, 6))
    first = [names[i] for i in rng.integers(0, 20, n)]
    second = [names[i] for i in rng.integers(0, 20, n)]
    return Sides(query, document), first, second, rng.random(n).tolist()


def rows(encoder: Any, items: list[str]) -> np.ndarray:
    return np.stack([encoder.table[item] for item in items])


def test_encode_sides_embeds_each_side_by_its_tower() -> None:
    sides, first, second, _ = two_towers(1)
    embeddings, q, d = encode_sides(sides, first, second, batch_size=8)
    query, document = sides.query, sides.document
    assert isinstance(query, TableEncoder) and isinstance(document, TableEncoder)
    # One call per tower, each distinct item of its side once, nothing of the other side.
    assert query.calls == [list(dict.fromkeys(first))]
    assert document.calls == [list(dict.fromkeys(second))]
    np.testing.assert_allclose(embeddings[q], rows(query, first), rtol=1e-6)
    np.testing.assert_allclose(embeddings[d], rows(document, second), rtol=1e-6)
    # A name on both sides is two rows, one per tower.
    shared = next(name for name in first if name in second)
    assert q[first.index(shared)] != d[second.index(shared)]
    assert len(embeddings) == len(set(first)) + len(set(second))


def test_two_tower_sts_matches_naive() -> None:
    sides, first, second, scores = two_towers(2)
    got = STSEvaluator(first, second, scores)(sides)
    query, document = sides.query, sides.document
    cosines = [naive_cosine(query.table[a].tolist(), document.table[b].tolist())  # type: ignore
               for a, b in zip(first, second, strict=True)]
    assert got["spearman"] == pytest.approx(100 * naive_spearman(cosines, scores), abs=1e-9)
    # Swapping the towers is a different model: the numbers change.
    assert STSEvaluator(first, second, scores)(Sides(document, query)) != got


def test_two_tower_retrieval_matches_naive() -> None:
    sides, first, second, _ = two_towers(3, n=30)
    evaluator = RetrievalEvaluator.from_pairs(first, second)
    got = evaluator(sides)
    expected = naive_retrieval(rows(sides.query, evaluator.queries),
                               rows(sides.document, evaluator.corpus), evaluator.relevant)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_two_tower_geometry_matches_naive() -> None:
    sides, first, second, _ = two_towers(4)
    got = GeometryEvaluator(first, second)(sides)
    x, y = rows(sides.query, first), rows(sides.document, second)
    assert got["alignment"] == pytest.approx(naive_alignment(x, y, 2.0), rel=1e-6)
    assert got["modality_gap"] == pytest.approx(naive_modality_gap(x, y), rel=1e-6)
    # Uniformity over each tower's distinct embeddings together.
    union = np.vstack([rows(sides.query, list(dict.fromkeys(first))),
                       rows(sides.document, list(dict.fromkeys(second)))])
    assert got["uniformity"] == pytest.approx(naive_uniformity(union, 2.0), rel=1e-6)


def test_towers_of_different_widths_are_refused() -> None:
    sides = Sides(TableEncoder({"a": np.ones(3)}), TableEncoder({"b": np.ones(4)}))
    with pytest.raises(ValueError, match="3-d .* 4-d"):
        STSEvaluator(["a", "a"], ["b", "b"], [1.0, 2.0])(sides)
    with pytest.raises(ValueError, match="3-d .* 4-d"):
        RetrievalEvaluator(["a"], ["b"], [{0}])(sides)


# --- cross-modal retrieval ----------------------------------------------------------------


def image(key: str) -> ImageItem:
    return ImageItem(key, array=np.zeros((2, 2, 3), np.uint8))


def naive_both_directions(
    images: list[ImageItem], captions: list[str], image_tower: TableEncoder,
    text_tower: TableEncoder,
) -> dict[str, float]:
    """Distinct images and captions in first-seen order, relevant sets by loops."""
    distinct_images: list[ImageItem] = []
    distinct_captions: list[str] = []
    for item in images:
        if all(item.key != seen.key for seen in distinct_images):
            distinct_images.append(item)
    for caption in captions:
        if caption not in distinct_captions:
            distinct_captions.append(caption)
    captions_of: list[set[int]] = [set() for _ in distinct_images]
    images_of: list[set[int]] = [set() for _ in distinct_captions]
    for item, caption in zip(images, captions, strict=True):
        i = [seen.key for seen in distinct_images].index(item.key)
        j = distinct_captions.index(caption)
        captions_of[i].add(j)
        images_of[j].add(i)
    image_rows = np.stack([image_tower.table[item.key] for item in distinct_images])
    text_rows = np.stack([text_tower.table[caption] for caption in distinct_captions])
    out = {f"image_to_text/{k}": v
           for k, v in naive_retrieval(image_rows, text_rows, captions_of).items()}
    out.update({f"text_to_image/{k}": v
                for k, v in naive_retrieval(text_rows, image_rows, images_of).items()})
    return out


def test_cross_modal_retrieval_matches_naive_loops() -> None:
    rng = np.random.default_rng(8)
    keys = [f"img{i}" for i in range(15)]
    texts = [f"caption {j}" for j in range(12)]
    image_tower = TableEncoder(random_table(rng, keys, 5), "image")
    text_tower = TableEncoder(random_table(rng, texts, 5), "text")
    # Images with several captions, captions shared by several images.
    images = [image(keys[i]) for i in rng.integers(0, 15, 40)]
    captions = [texts[j] for j in rng.integers(0, 12, 40)]
    evaluator = CrossModalRetrievalEvaluator(images, captions)
    got = evaluator(Sides(image_tower, text_tower))
    expected = naive_both_directions(images, captions, image_tower, text_tower)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    # Each distinct image embedded once by the image tower, each caption once by the text tower.
    assert [len(call) for call in image_tower.calls] == [len({i.key for i in images})]
    assert all(isinstance(item, ImageItem) for item in image_tower.calls[0])
    assert [len(call) for call in text_tower.calls] == [len(set(captions))]
    # Which side holds which tower does not matter: towers are picked by modality.
    assert evaluator(Sides(text_tower, image_tower)) == got
    assert got[evaluator.primary] == got["text_to_image/ndcg@10"]
    with pytest.raises(ModalityError, match="image tower"):
        evaluator(text_tower)


def test_cross_modal_known_answer() -> None:
    # Two images at angles 0 and 90 degrees; captions at 10 and 60 degrees.
    def at(degrees: float) -> np.ndarray:
        return np.array([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])

    image_tower = TableEncoder({"a": at(0), "b": at(90)}, "image")
    text_tower = TableEncoder({"near a": at(10), "near b": at(60)}, "text")
    # Pair "a" with "near b" and "b" with "near a": every first hit is wrong.
    got = CrossModalRetrievalEvaluator([image("a"), image("b")], ["near b", "near a"])(
        Sides(image_tower, text_tower))
    # a ranks "near a" (10) first, b ranks "near b" (30 away) first: both wrong.
    assert got["image_to_text/recall@1"] == 0.0 and got["image_to_text/mrr@10"] == 0.5
    # "near b" (60) is nearer b; "near a" (10) nearer a: both wrong again.
    assert got["text_to_image/accuracy@1"] == 0.0 and got["text_to_image/recall@5"] == 1.0


def test_cross_modal_from_records_either_role() -> None:
    records = [SimpleNamespace(anchor=image("a"), positive="x", score=None),
               SimpleNamespace(anchor=image("b"), positive="y", score=None)]
    evaluator = cross_modal_from_records(records)
    assert [i.key for i in evaluator.images] == ["a", "b"] and evaluator.captions == ["x", "y"]
    swapped = [SimpleNamespace(anchor=r.positive, positive=r.anchor, score=None)
               for r in records]
    again = cross_modal_from_records(swapped)
    assert [i.key for i in again.images] == ["a", "b"] and again.captions == ["x", "y"]
    with pytest.raises(ValueError, match="pair an image with a text"):
        cross_modal_from_records([SimpleNamespace(anchor="q", positive="d", score=None)])
    with pytest.raises(ValueError, match="equal in number"):
        CrossModalRetrievalEvaluator([image("a")], [])


# --- real images: CIFAR-10 with a tiny fake image tower -----------------------------------


class ColourTower:
    """A fake image tower on real pixels: each channel's mean and standard deviation (6-d),
    centred by a fixed offset so that cosines spread."""

    modality = "image"

    def __init__(self, offset: np.ndarray) -> None:
        self.offset = offset
        self.calls = 0

    @staticmethod
    def raw(arrays: np.ndarray) -> np.ndarray:
        pixels = arrays.reshape(len(arrays), -1, 3).astype(np.float64) / 255.0  # (N, HW, 3)
        return np.concatenate([pixels.mean(1), pixels.std(1)], axis=1)  # (N, 6)

    def encode(self, items: list[ImageItem], batch_size: int) -> np.ndarray:
        self.calls += 1
        arrays = np.stack([item.array for item in items])  # type: ignore[misc]
        return (self.raw(arrays) - self.offset).astype(np.float32)


def cifar_part(shared_data: Path, per_class: int) -> tuple[list[ImageItem], list[int], list[str],
                                                          np.ndarray]:
    path = shared_data / "images" / "cifar10-part-a.npz"
    with np.load(path) as data:
        arrays, labels, classes = data["images"], data["labels"], [str(c) for c in data["classes"]]
    chosen = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    items = [ImageItem.from_array(arrays[i], path, int(i)) for i in chosen]
    return items, [int(labels[i]) for i in chosen], classes, arrays[chosen]


@pytest.fixture(scope="module")
def cifar(shared_data: Path) -> tuple[list[ImageItem], list[int], list[str], np.ndarray]:
    return cifar_part(shared_data, per_class=60)


def class_text_tower(arrays: np.ndarray, labels: list[int], classes: list[str],
                     offset: np.ndarray, templates: list[str]) -> TableEncoder:
    """A fake text tower that embeds a class's prompts near its images' mean colour feature
    (as a trained tower would), with a small per-template offset; absent classes at random."""
    rng = np.random.default_rng(0)
    features = ColourTower.raw(arrays) - offset
    table = {}
    for c, name in enumerate(classes):
        members = [i for i, label in enumerate(labels) if label == c]
        centre = features[members].mean(0) if members else rng.standard_normal(6)
        for template in templates:
            table[template.format(label=name)] = centre + 0.01 * rng.standard_normal(6)
    return TableEncoder(table, "text")


def test_cross_modal_on_cifar_matches_naive(cifar: Any) -> None:
    items, labels, classes, arrays = cifar
    offset = ColourTower.raw(arrays).mean(0)
    image_tower = ColourTower(offset)
    template = "a photo of a {label}."
    text_tower = class_text_tower(arrays, labels, classes, offset, [template])
    captions = [template.format(label=classes[label]) for label in labels]
    got = CrossModalRetrievalEvaluator(items, captions)(Sides(image_tower, text_tower))
    assert image_tower.calls == 1
    image_table = TableEncoder(
        {item.key: row for item, row in zip(items, image_tower.encode(items, 32), strict=True)})
    expected = naive_both_directions(items, captions, image_table, text_tower)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    print(f"CIFAR-10 ({len(items)} images, 5 captions), colour features: "
          f"image->text R@1 {got['image_to_text/recall@1']:.3f}, "
          f"text->image accuracy@1 {got['text_to_image/accuracy@1']:.3f}")
    assert got["image_to_text/recall@1"] > 0.3  # above the 0.2 of chance among 5 captions
