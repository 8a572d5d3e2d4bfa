"""Batches made in DataLoader worker processes, in order, the same as in-process.

``BatchLoader`` yields the collated batches of ``PairBatcher.batches(epoch, start)`` through a
``torch.utils.data.DataLoader`` (``batch_size=None``): each batch is one item of the loader, made
by a picklable :class:`BatchCollator` (records + preprocessors + the views hook + the batch's
position), so preprocessing (tokenizing, decoding and resizing images) runs in
``num_workers`` worker processes while the training process trains. With ``num_workers=0`` it
runs in-process and gives exactly the same batches. Order is preserved (the DataLoader returns
the items of a map-style dataset in sampler order), which resume exactness depends on.

What a batch holds depends only on its records and its position (seed, epoch, batch index):
captions and views draw from generators keyed by the position (``data.views.view_rng``), never
from a worker's random state, so the batches do not depend on the number of workers. The
loader's own base-seed draw uses its own generator, so iterating it leaves torch's global random
state (dropout) untouched.

A ``ContralignError`` raised while a batch is made (a preprocessor that cannot decode an image)
is raised again in the training process as the same one-line error, not as the DataLoader's
re-wrapped traceback.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from contralign.core.errors import ContralignError
from contralign.data.batching import (
    PairBatcher,
    Position,
    Preprocess,
    caption_items,
    collate,
    contiguous_rows,
    preprocessor_for,
)
from contralign.data.records import Item, Record
from contralign.data.views import View, view_rng


class BatchExtras(Protocol):
    """A hook that adds entries to each collated batch (e.g. :class:`TextViews`): called with
    the batch's records, the preprocessors, its position and the rows this process
    preprocesses (None: all); what it returns updates the batch. Must be picklable."""

    def __call__(self, records: Sequence[Record], preprocess: Preprocess, position: Position,
                 rows: slice | None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BatchCollator:
    """``(records, position) -> batch``: :func:`~contralign.data.batching.collate` with
    captions drawn for the position, plus the ``extras`` hook; picklable, so it runs in
    DataLoader workers.

    Attributes:
        preprocess: one preprocessor for every role, or one per role (tower preprocessors).
        extras: adds entries to each batch (views); None: nothing.
        shard: ``(rank, world)``: preprocess only this process's contiguous rows
            (:func:`~contralign.data.batching.contiguous_rows`); ids stay whole-batch. None,
            or a world of 1: every row.
    """

    preprocess: Preprocess
    extras: BatchExtras | None = None
    shard: tuple[int, int] | None = None

    def rows(self, batch_size: int) -> slice | None:
        """The rows of a batch of ``batch_size`` this process preprocesses (None: all)."""
        if self.shard is None or self.shard[1] == 1:
            return None
        return contiguous_rows(batch_size, *self.shard)

    def __call__(self, records: Sequence[Record], position: Position) -> dict[str, Any]:
        rows = self.rows(len(records))
        batch: dict[str, Any] = dict(collate(records, self.preprocess, rows, position=position))
        if self.extras is not None:
            batch.update(self.extras(records, self.preprocess, position, rows))
        return batch


@dataclass(frozen=True)
class TextViews:
    """The views hook: augmented copies of each record's texts (SimCSE, CLEAR, ESimCSE).

    ``{"views": [V preprocessed views]}``, and unless ``views_only``, ``anchor`` and
    ``positive`` replaced by views 0 and 1. View 0 is drawn from the anchor and the others from
    the positive (the anchor when there is none; a caption drawn for the position when the role
    is a caption); with ``views_only`` (1-to-K) every view is drawn from the positive. Record
    ``i`` of the batch draws view ``v`` from ``view_rng(seed, epoch, batch, i, v)``, whichever
    rows this process preprocesses, so a resumed run and every process draw the same views.
    Each view goes through the preprocessor of the tower that embeds it: view 1 (every view
    with ``views_only``) the positive's, the others the anchor's.
    """

    views: tuple[View, ...]
    views_only: bool = False

    def __call__(self, records: Sequence[Record], preprocess: Preprocess, position: Position,
                 rows: slice | None) -> dict[str, Any]:
        start, stop = (0, len(records)) if rows is None else (rows.start, rows.stop)
        anchors = caption_items(records, "anchor", [r.anchor for r in records], position)
        positives = caption_items(records, "positive", [
            r.positive if r.positive is not None else r.anchor for r in records], position)
        preprocessed = []
        for v, view in enumerate(self.views):
            from_anchor = v == 0 and not self.views_only
            sources = anchors if from_anchor else positives
            texts = [view(_text(sources[i], records[i]), view_rng(*position, i, v))
                     for i in range(start, stop)]
            # The tower that embeds it: views 0 and 2+ the anchor's, view 1 (or every view
            # of 1-to-K) the positive's.
            role = "positive" if self.views_only or v == 1 else "anchor"
            preprocessed.append(preprocessor_for(preprocess, role)(texts))
        out: dict[str, Any] = {"views": preprocessed}
        if not self.views_only:
            out["anchor"], out["positive"] = preprocessed[0], preprocessed[1]
        return out


def _text(item: Item, record: Record) -> str:
    if not isinstance(item, str):
        raise ValueError(f"text views need texts, but the record at line {record.line} holds "
                         "an image")
    return item


@dataclass(frozen=True)
class _Raised:
    """A ``ContralignError`` carried out of a worker (its constructor takes other arguments
    than ``args``, so the exception itself does not survive pickling)."""

    kind: type[ContralignError]
    message: str
    state: dict[str, Any]

    def error(self) -> ContralignError:
        error = self.kind.__new__(self.kind)
        Exception.__init__(error, self.message)
        error.__dict__.update(self.state)
        return error


class _Batches(Dataset):
    """Item ``(position, record indices)`` -> the collated batch."""

    def __init__(self, records: Sequence[Record], collator: BatchCollator) -> None:
        self.records = records
        self.collator = collator

    def __getitem__(self, index: tuple[Position, list[int]]) -> Any:  # type: ignore[override]
        position, indices = index
        try:
            return self.collator([self.records[i] for i in indices], position)
        except ContralignError as error:
            return _Raised(type(error), str(error), dict(vars(error)))


class _EpochSampler(Sampler):
    """``(position, record indices)`` of each batch of an epoch from a start, in order."""

    def __init__(self, batcher: PairBatcher) -> None:
        self.batcher = batcher
        self.epoch = 0
        self.start = 0

    def __iter__(self) -> Iterator[tuple[Position, list[int]]]:
        return self._items(self.epoch, self.start)  # read now: the loader may change them

    def _items(self, epoch: int, start: int) -> Iterator[tuple[Position, list[int]]]:
        seed = self.batcher.seed
        for k, indices in enumerate(self.batcher.batch_indices(epoch, start), start):
            yield (seed, epoch, k), indices

    def __len__(self) -> int:
        return len(self.batcher) - self.start


def _as_is(batch: Any) -> Any:
    return batch


class BatchLoader:
    """The collated batches of ``batcher``, made by ``collator`` in ``num_workers`` processes.

    Args:
        batcher: the epochs' batches of records.
        collator: records + position -> batch (picklable).
        num_workers: worker processes; 0: in this process (the same batches).
        prefetch_factor: batches each worker prepares ahead (DataLoader's default: 2).
        persistent_workers: keep the workers between epochs (the records are sent once).
        pin_memory: put batches in pinned memory (faster copies to a GPU).
        multiprocessing_context: ``fork``, ``spawn`` or ``forkserver``; default: the
            platform's.

    Raises:
        ValueError: a negative ``num_workers``.
    """

    def __init__(self, batcher: PairBatcher, collator: BatchCollator, *, num_workers: int = 0,
                 prefetch_factor: int | None = None, persistent_workers: bool = False,
                 pin_memory: bool = False, multiprocessing_context: str | None = None) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be at least 0, got {num_workers}")
        self.batcher = batcher
        self._sampler = _EpochSampler(batcher)
        workers: dict[str, Any] = {}
        if num_workers:
            workers = {"prefetch_factor": prefetch_factor, "persistent_workers":
                       persistent_workers, "multiprocessing_context": multiprocessing_context}
        self._loader = DataLoader(
            _Batches(batcher.records, collator), batch_size=None, sampler=self._sampler,
            num_workers=num_workers, collate_fn=_as_is, pin_memory=pin_memory,
            generator=torch.Generator(), **workers)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.batcher)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, Any]]:
        """The collated batches of ``batcher.batches(epoch, start)``, in order.

        Raises:
            ValueError: ``start`` is negative or past the end of the epoch.
            ContralignError: what making a batch raised (in a worker or here).
        """
        self.batcher.check_start(start)
        self._sampler.epoch, self._sampler.start = epoch, start
        iterator = iter(self._loader)
        try:
            for batch in iterator:
                if isinstance(batch, _Raised):
                    raise batch.error()
                yield batch
        finally:
            del iterator  # a caller that stops early shuts non-persistent workers down now
