"""Text views for training: augmented copies of each record's texts (SimCSE, CLEAR, ESimCSE).

Each record's view is drawn from its own RNG, keyed by (seed, epoch, batch, position, view), so
a resumed run draws exactly the views an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from contralign.data import Record
from contralign.data.views import make_view, view_rng

View = Callable[..., str]


def build_views(configs: Sequence[dict[str, Any]]) -> list[View]:
    """``[{name: word_deletion, ratio: 0.1}, …]`` -> view functions.

    Raises:
        ValueError: an unknown view or parameter (the message names it).
    """
    views = []
    for config in configs:
        params = {k: v for k, v in config.items() if k != "name"}
        views.append(make_view(str(config.get("name")), **params))
    return views


def view_batch(
    records: Sequence[Record], views: Sequence[View], tokenize: Callable[[list[str]], Any],
    position: tuple[int, int, int], views_only: bool = False,
) -> dict[str, Any]:
    """Tokenized views of a batch: ``{"views": [V tokenized], "anchor": …, "positive": …}``.

    View 0 is drawn from the anchor and the others from the positive (the anchor when there is
    none); with ``views_only`` (1-to-K) every view is drawn from the positive and the anchor
    stays as it is.

    Args:
        position: (seed, epoch, batch index) of this batch.
    """
    texts: list[list[str]] = []
    for v, view in enumerate(views):
        from_anchor = v == 0 and not views_only
        texts.append([
            view(r.anchor if from_anchor or r.positive is None else r.positive,
                 view_rng(*position, i, v))
            for i, r in enumerate(records)
        ])
    tokenized: list[dict[str, Tensor]] = [tokenize(t) for t in texts]
    out: dict[str, Any] = {"views": tokenized}
    if not views_only:
        out["anchor"], out["positive"] = tokenized[0], tokenized[1]
    return out
