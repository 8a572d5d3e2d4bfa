"""Cross-modal retrieval: images -> captions and captions -> images from (image, caption) pairs.

The retrieval metrics of ``evaluation.retrieval`` in both directions, from one embedding of each
distinct image (by the image tower) and each distinct caption (by the text tower). Keys are
``image_to_text/<metric>`` and ``text_to_image/<metric>``.

A note on names: the image–text literature's "R@K" (CLIP, arXiv:2103.00020; the COCO/Flickr30k
protocol) counts a query as found when *any* of its relevant items is in the top K. That is
``accuracy@k`` here; ``recall@k`` is the fraction of the relevant items found. The two agree when
each query has one relevant item (a caption's one image), and differ for an image with several
captions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contralign.core.items import ImageItem
from contralign.evaluation.bootstrap import Resampling, mean_resampling
from contralign.evaluation.protocol import (
    Encoder,
    Item,
    PairRecord,
    Sides,
    encode_unique,
    record_pairs,
)
from contralign.evaluation.retrieval import RetrievalEvaluator

DIRECTIONS = ("image_to_text", "text_to_image")


class CrossModalRetrievalEvaluator:
    """Image -> text and text -> image retrieval over pairs; primary ``text_to_image/ndcg@10``.

    An image paired with several captions is one query whose relevant documents are all its
    captions (and the same for a caption shared by several images, as class captions are).
    Images are embedded by ``sides.image``, captions by ``sides.text``, whichever side each is.

    Args:
        images: ``N`` images (``ImageItem``s), ``images[i]`` paired with ``captions[i]``.
        captions: ``N`` texts.
        name: prefix for ``evaluate_all`` (``cross_modal/text_to_image/recall@1``).
        batch_size: passed to each tower's ``encode``.
        ks: cutoffs for ``recall@k`` and ``accuracy@k``.

    Raises:
        ValueError: lengths differ or there are no pairs, or a cutoff below 1.
    """

    primary = "text_to_image/ndcg@10"

    def __init__(
        self,
        images: Sequence[Item],
        captions: Sequence[Item],
        name: str = "cross_modal",
        batch_size: int = 32,
        ks: Sequence[int] = (1, 5, 10),
    ) -> None:
        if len(images) != len(captions) or not images:
            raise ValueError(f"images ({len(images)}) and captions ({len(captions)}) must be "
                             f"equal in number, > 0")
        self.image_to_text = RetrievalEvaluator.from_pairs(
            images, captions, name=f"{name}/image_to_text", batch_size=batch_size, ks=ks
        )
        # The reverse direction over the same distinct items, so each is embedded once.
        found_by: list[set[int]] = [set() for _ in self.image_to_text.corpus]
        for image_row, caption_rows in enumerate(self.image_to_text.relevant):
            for caption_row in caption_rows:
                found_by[caption_row].add(image_row)
        self.text_to_image = RetrievalEvaluator(
            self.image_to_text.corpus, self.image_to_text.queries, found_by,
            name=f"{name}/text_to_image", batch_size=batch_size, ks=ks,
        )
        self.name = name
        self.batch_size = batch_size

    @property
    def images(self) -> list[Item]:
        """The distinct images, in first-seen order."""
        return self.image_to_text.queries

    @property
    def captions(self) -> list[Item]:
        """The distinct captions, in first-seen order."""
        return self.image_to_text.corpus

    def __call__(self, sides: Encoder | Sides) -> dict[str, float]:
        """Embed the images and captions once and return both directions' metrics.

        Raises:
            ModalityError: the model has no image tower or no text tower.
        """
        images, captions = self._embed(sides)
        metrics = {}
        for direction, scores in (
            ("image_to_text", self.image_to_text.score(images, captions)),
            ("text_to_image", self.text_to_image.score(captions, images)),
        ):
            metrics.update({f"{direction}/{key}": value for key, value in scores.items()})
        return metrics

    def resampling(self, sides: Encoder | Sides) -> tuple[dict[str, float], list[Resampling]]:
        """The metrics and their bootstrap (``evaluation.bootstrap``): each direction resamples
        its own queries (images for image -> text, captions for text -> image)."""
        images, captions = self._embed(sides)
        metrics: dict[str, float] = {}
        groups = []
        for direction, per_query in (
            ("image_to_text", self.image_to_text.query_scores(images, captions)),
            ("text_to_image", self.text_to_image.query_scores(captions, images)),
        ):
            named = {f"{direction}/{key}": values for key, values in per_query.items()}
            metrics.update({key: float(np.mean(values)) for key, values in named.items()})
            groups.append(mean_resampling(named))
        return metrics, groups

    def _embed(self, sides: Encoder | Sides) -> tuple[np.ndarray, np.ndarray]:
        """``(I, D)`` distinct images and ``(T, D)`` distinct captions, each embedded once."""
        sides = Sides.of(sides)
        image_tower, text_tower = sides.image, sides.text
        images, image_rows = encode_unique(image_tower, self.images, self.batch_size)
        captions, caption_rows = encode_unique(text_tower, self.captions, self.batch_size)
        return images[image_rows], captions[caption_rows]


def cross_modal_from_records(
    records: Sequence[PairRecord], name: str = "cross_modal", batch_size: int = 32
) -> CrossModalRetrievalEvaluator:
    """A ``CrossModalRetrievalEvaluator`` over records pairing an image with a text, in either
    role (anchor image and positive caption, or the reverse).

    Raises:
        ValueError: a record lacks a positive (the message names its line), or the records do
            not pair images (on one side) with texts (on the other).
    """
    anchors, positives, _ = record_pairs(records)
    if all(isinstance(a, ImageItem) for a in anchors) and all(
            isinstance(p, str) for p in positives):
        return CrossModalRetrievalEvaluator(anchors, positives, name=name, batch_size=batch_size)
    if all(isinstance(a, str) for a in anchors) and all(
            isinstance(p, ImageItem) for p in positives):
        return CrossModalRetrievalEvaluator(positives, anchors, name=name, batch_size=batch_size)
    raise ValueError("cross-modal retrieval needs records that pair an image with a text "
                     "(images in one role, texts in the other)")
