"""Deterministic, resumable batches of records, and the collator that preprocesses them.

The order of an epoch depends only on ``seed + epoch``, so a run killed after batch ``k`` resumes
exactly with ``batches(epoch, start=k)``. The collator receives one preprocessor per role (a
tower's picklable ``preprocessor``); it never imports an encoder (DESIGN.md, layers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypedDict

import torch
from torch import Tensor

from contralign.core.items import item_key
from contralign.core.towers import Preprocessor
from contralign.data.captions import draw_caption
from contralign.data.dataset import text_id
from contralign.data.records import Item, Record

Tokenize = Callable[[list[str]], dict[str, Tensor]]
# One preprocessor for every role, or one per role: ``anchor``, ``positive``, ``negative``.
Preprocess: TypeAlias = Preprocessor | Mapping[str, Preprocessor]
# Where a batch sits in a run: (seed, epoch, batch index in the epoch).
Position: TypeAlias = tuple[int, int, int]
# Label ids live in their own namespace, so a label never collides with a text that spells it.
_LABEL_PREFIX = "\x00label\x00"


class CollatedBatch(TypedDict):
    """What :func:`collate` returns; ``B`` records, ``K`` hard negatives each, ``R`` rows
    preprocessed (``R = B`` unless ``rows`` is given: ``R = stop - start``)."""

    anchor: dict[str, Tensor]  # the anchor preprocessor's tensors, first dimension R
    positive: dict[str, Tensor]  # first dimension R
    negatives: list[dict[str, Tensor]]  # K preprocessed columns (first dimension R), [] if K == 0
    anchor_ids: Tensor  # (B,) int64
    positive_ids: Tensor  # (B,) int64
    negative_ids: Tensor | None  # (B, K) int64, None when K == 0
    scores: Tensor | None  # (B,) float32, None without scores
    labels: Tensor | None  # (B,) int64 label ids (equal labels, equal ids), None without labels
    rows: tuple[int, int] | None  # (start, stop): the rows the item tensors hold; None: all B


@dataclass
class PairBatcher:
    """Shuffled batches of records, the same for the same ``seed`` and epoch.

    Args:
        records: the records to batch.
        batch_size: records per batch (the last batch may be smaller unless ``drop_last``).
        seed: base seed; epoch ``e`` is shuffled with a ``torch.Generator`` seeded ``seed + e``.
        drop_last: drop a final batch smaller than ``batch_size``.
        shuffle: shuffle each epoch; False keeps file order.

    Raises:
        ValueError: ``batch_size`` below 1.
    """

    records: Sequence[Record]
    batch_size: int
    seed: int = 0
    drop_last: bool = False
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(len(self.records), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def order(self, epoch: int) -> list[int]:
        """The record indices of ``epoch`` in batch order (a permutation of ``range(N)``)."""
        if not self.shuffle:
            return list(range(len(self.records)))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.records), generator=generator).tolist()

    def batches(self, epoch: int, start: int = 0) -> Iterator[list[Record]]:
        """Yield the batches of ``epoch`` from batch index ``start`` on.

        ``batches(e, start=k)`` yields exactly what an uninterrupted ``batches(e)`` yields from
        its ``k``-th batch on: the resume point of a killed run.

        Raises:
            ValueError: ``start`` is negative or past the end of the epoch.
        """
        for indices in self.batch_indices(epoch, start):
            yield [self.records[i] for i in indices]

    def batch_indices(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        """The record indices of each batch :meth:`batches` yields.

        Raises:
            ValueError: ``start`` is negative or past the end of the epoch.
        """
        self.check_start(start)
        order = self.order(epoch)
        for index in range(start, len(self)):
            yield order[index * self.batch_size : (index + 1) * self.batch_size]

    def check_start(self, start: int) -> None:
        """Raises ``ValueError`` when ``start`` is not a batch index of an epoch (or its end)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")


def contiguous_rows(batch_size: int, rank: int, world: int) -> slice:
    """The rows of ``rank`` when ``batch_size`` rows are split over ``world`` processes in
    contiguous shards, the first ``batch_size mod world`` one row longer (the split of
    ``training.distributed.shard_of``).

    Raises:
        ValueError: fewer rows than processes, or a rank outside ``[0, world)``.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    if batch_size < world:
        raise ValueError(f"a batch of {batch_size} rows cannot be split over {world} processes")
    base, extra = divmod(batch_size, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def _ids(items: Sequence[Item]) -> Tensor:
    return torch.tensor([text_id(item_key(item)) for item in items], dtype=torch.long)


def _all_or_none(records: Sequence[Record], what: str, present: Sequence[bool]) -> bool:
    if all(present):
        return True
    if any(present):
        lines = [r.line for r, has in zip(records, present, strict=True) if not has][:5]
        raise ValueError(f"some records in the batch have a {what} and some do not "
                         f"(without one: lines {lines})")
    return False


def _row_range(rows: slice | None, size: int) -> tuple[int, int]:
    if rows is None:
        return 0, size
    start = 0 if rows.start is None else rows.start
    stop = size if rows.stop is None else rows.stop
    if rows.step not in (None, 1) or not 0 <= start < stop <= size:
        raise ValueError(f"rows must be a slice(start, stop) with 0 <= start < stop <= {size} "
                         f"(the batch size), got {rows}")
    return start, stop


def preprocessor_for(preprocess: Preprocess, role: str) -> Preprocessor:
    """The preprocessor of ``role`` (``anchor``, ``positive`` or ``negative``).

    A single preprocessor serves every role. In a mapping, ``negative`` falls back to the
    positive's (hard negatives go through the positive's tower) and ``positive`` to the anchor's
    (a positive that is the anchor itself, SimCSE).

    Raises:
        ValueError: the mapping has no preprocessor for the role or its fallbacks.
    """
    if not isinstance(preprocess, Mapping):
        return preprocess
    for name in {"anchor": ("anchor",), "positive": ("positive", "anchor"),
                 "negative": ("negative", "positive", "anchor")}[role]:
        if name in preprocess:
            return preprocess[name]
    raise ValueError(f"no preprocessor for the {role} role (given: {', '.join(preprocess)})")


def caption_items(records: Sequence[Record], role: str, items: Sequence[Item],
                  position: Position | None) -> list[Item]:
    """``items`` of ``role`` with each caption record's caption drawn for ``position``'s seed
    and epoch (:func:`~contralign.data.captions.draw_caption`); unchanged without a position
    (the first template's captions, as the records hold them)."""
    if position is None:
        return list(items)
    seed, epoch = position[0], position[1]
    return [draw_caption(r.captions, seed, epoch, r.line)
            if r.captions is not None and r.captions.role == role else item
            for r, item in zip(records, items, strict=True)]


def collate(
    records: Sequence[Record], preprocess: Preprocess, rows: slice | None = None, *,
    position: Position | None = None,
) -> CollatedBatch:
    """Preprocess a batch of records and give each item an id for duplicate masking.

    ``positive`` is the record's positive, or its anchor when it has none (SimCSE: the second
    view differs by dropout). Ids are :func:`text_id` of :func:`~contralign.core.items.item_key`
    (a text's id is the text's, an image's is its key's), so equal items get equal ids in every
    process. ``positive_ids`` are the positives' ids; but when every record has a label they are
    label ids, so items with the same label are never used as each other's negatives (SupCon).
    Label ids never equal item ids. ``negative_ids`` are the ids of the hard negatives.

    With ``rows=slice(start, stop)`` only those rows' items are preprocessed (under torchrun
    each process preprocesses its own share): ``anchor``, ``positive`` and every ``negatives``
    column hold ``stop - start`` rows, padded to the longest text of those rows only, while
    ``anchor_ids``, ``positive_ids``, ``negative_ids``, ``labels`` and ``scores`` stay those of
    the whole batch (``B`` rows), and ``rows`` says ``(start, stop)``.

    Args:
        records: ``B`` records; each has the same number ``K`` of hard negatives.
        preprocess: items -> tensors: one preprocessor for every role (e.g. a tokenizer), or
            ``{anchor: …, positive: …, negative: …}`` (see :func:`preprocessor_for`); called
            once for the anchors, once for the positives and once per negative column.
        rows: the rows to preprocess; None: all.
        position: (seed, epoch, batch index): caption records draw their caption for this
            seed and epoch; None: the captions the records hold (the first template's).

    Returns:
        The :class:`CollatedBatch`.

    Raises:
        ValueError: no records; records with different numbers of negatives; labels or scores on
            some records of the batch but not all; a bad ``rows``; a missing preprocessor.
    """
    if not records:
        raise ValueError("cannot collate an empty batch")
    k = len(records[0].negatives)
    uneven = [r.line for r in records if len(r.negatives) != k]
    if uneven:
        raise ValueError(f"every record in a batch needs the same number of negatives: the first "
                         f"has {k}, the records at lines {uneven[:5]} differ")
    start, stop = _row_range(rows, len(records))
    anchors = caption_items(records, "anchor", [r.anchor for r in records], position)
    positives = caption_items(
        records, "positive", [r.positive if r.positive is not None else r.anchor
                              for r in records], position)
    labels = None
    if _all_or_none(records, "label", [r.label is not None for r in records]):
        labels = torch.tensor([text_id(_LABEL_PREFIX + str(r.label)) for r in records],
                              dtype=torch.long)  # (B,)
    positive_ids = labels if labels is not None else _ids(positives)
    scores = None
    if _all_or_none(records, "score", [r.score is not None for r in records]):
        scores = torch.tensor([r.score for r in records], dtype=torch.float32)  # (B,)
    columns = [[r.negatives[j] for r in records] for j in range(k)]  # K lists of B items
    negative_ids = None
    if k:
        negative_ids = torch.stack([_ids(column) for column in columns], dim=1)  # (B, K)
    negative = preprocessor_for(preprocess, "negative") if k else None
    return CollatedBatch(
        anchor=preprocessor_for(preprocess, "anchor")(anchors[start:stop]),
        positive=preprocessor_for(preprocess, "positive")(positives[start:stop]),
        negatives=[negative(column[start:stop]) for column in columns] if negative else [],
        anchor_ids=_ids(anchors),
        positive_ids=positive_ids,
        negative_ids=negative_ids,
        scores=scores,
        labels=labels,
        rows=None if rows is None else (start, stop),
    )
