"""Deterministic, resumable batches of records, and the collator that tokenizes them.

The order of an epoch depends only on ``seed + epoch``, so a run killed after batch ``k`` resumes
exactly with ``batches(epoch, start=k)``. The collator receives a tokenize function; it never
imports an encoder (DESIGN.md, layers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch
from torch import Tensor

from contralign.data.dataset import text_id
from contralign.data.records import Record

Tokenize = Callable[[list[str]], dict[str, Tensor]]
# Label ids live in their own namespace, so a label never collides with a text that spells it.
_LABEL_PREFIX = "\x00label\x00"


class CollatedBatch(TypedDict):
    """What :func:`collate` returns; ``B`` records, ``K`` hard negatives each."""

    anchor: dict[str, Tensor]
    positive: dict[str, Tensor]
    negatives: list[dict[str, Tensor]]  # K tokenized columns, [] when K == 0
    anchor_ids: Tensor  # (B,) int64
    positive_ids: Tensor  # (B,) int64
    negative_ids: Tensor | None  # (B, K) int64, None when K == 0
    scores: Tensor | None  # (B,) float32, None without scores
    labels: Tensor | None  # (B,) int64 label ids (equal labels, equal ids), None without labels


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
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        order = self.order(epoch)
        for index in range(start, len(self)):
            chunk = order[index * self.batch_size : (index + 1) * self.batch_size]
            yield [self.records[i] for i in chunk]


def _ids(texts: Sequence[str]) -> Tensor:
    return torch.tensor([text_id(text) for text in texts], dtype=torch.long)


def _all_or_none(records: Sequence[Record], what: str, present: Sequence[bool]) -> bool:
    if all(present):
        return True
    if any(present):
        lines = [r.line for r, has in zip(records, present, strict=True) if not has][:5]
        raise ValueError(f"some records in the batch have a {what} and some do not "
                         f"(without one: lines {lines})")
    return False


def collate(records: Sequence[Record], tokenize: Tokenize) -> CollatedBatch:
    """Tokenize a batch of records and give each text an id for duplicate masking.

    ``positive`` is the record's positive, or its anchor when it has none (SimCSE: the second
    view differs by dropout). ``anchor_ids`` are :func:`text_id` of the anchors. ``positive_ids``
    are :func:`text_id` of the positive texts; but when every record has a label they are label
    ids, so items with the same label are never used as each other's negatives (SupCon). Label
    ids never equal text ids. ``negative_ids`` are the text ids of the hard negatives.

    Args:
        records: ``B`` records; each has the same number ``K`` of hard negatives.
        tokenize: texts -> tensors (e.g. ``input_ids``, ``attention_mask``), called once for the
            anchors, once for the positives and once per negative column.

    Returns:
        The :class:`CollatedBatch`.

    Raises:
        ValueError: no records; records with different numbers of negatives; labels or scores on
            some records of the batch but not all.
    """
    if not records:
        raise ValueError("cannot collate an empty batch")
    k = len(records[0].negatives)
    uneven = [r.line for r in records if len(r.negatives) != k]
    if uneven:
        raise ValueError(f"every record in a batch needs the same number of negatives: the first "
                         f"has {k}, the records at lines {uneven[:5]} differ")
    anchors = [r.anchor for r in records]
    positives = [r.positive if r.positive is not None else r.anchor for r in records]
    labels = None
    if _all_or_none(records, "label", [r.label is not None for r in records]):
        labels = _ids([_LABEL_PREFIX + str(r.label) for r in records])  # (B,)
    positive_ids = labels if labels is not None else _ids(positives)
    scores = None
    if _all_or_none(records, "score", [r.score is not None for r in records]):
        scores = torch.tensor([r.score for r in records], dtype=torch.float32)  # (B,)
    columns = [[r.negatives[j] for r in records] for j in range(k)]  # K lists of B texts
    negative_ids = None
    if k:
        negative_ids = torch.stack([_ids(column) for column in columns], dim=1)  # (B, K)
    return CollatedBatch(
        anchor=tokenize(anchors),
        positive=tokenize(positives),
        negatives=[tokenize(column) for column in columns],
        anchor_ids=_ids(anchors),
        positive_ids=positive_ids,
        negative_ids=negative_ids,
        scores=scores,
        labels=labels,
    )
