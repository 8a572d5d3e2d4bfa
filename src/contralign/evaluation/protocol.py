"""What evaluators need: a tower per side, duck-typed records, and the evaluator shape itself.

Every evaluator is called as ``evaluator(sides_or_encoder)``: ``Sides`` names the tower that
embeds each side of a pair (``query``: anchors, queries, images, first sentences; ``document``:
positives, documents, captions, second sentences). One encoder stands for both sides, so
one-tower callers pass it as before. Items are texts (``str``) or ``core.items.ImageItem``s;
nothing here reads them, it only names them (``core.items.item_key``) to embed each once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias

import numpy as np

from contralign.core.errors import ContralignError, DataError
from contralign.core.items import ImageItem, item_key
from contralign.core.towers import Encoder, modality_of

if TYPE_CHECKING:
    from contralign.data import DataConfig, Record

Item: TypeAlias = str | ImageItem


class ModalityError(ContralignError, ValueError):
    """An evaluator needs a tower of a modality the model does not have (zero-shot
    classification of a text-only model). One line for the CLI; a ``ValueError`` for library
    callers."""


@dataclass(frozen=True)
class Sides:
    """The tower that embeds each side of the evaluation pairs.

    Attributes:
        query: embeds anchors (queries, images, STS ``sentence1``).
        document: embeds positives (documents, captions, STS ``sentence2``).

    Raises:
        TypeError: a side has no ``encode``.
    """

    query: Encoder
    document: Encoder

    def __post_init__(self) -> None:
        for side in ("query", "document"):
            tower = getattr(self, side)
            # A str has an ``encode`` method too: a model name passed for a model.
            if isinstance(tower, str | bytes) or not isinstance(tower, Encoder):
                raise TypeError(f"Sides.{side}: expected an encoder (with encode), got "
                                f"{type(tower).__name__}")

    @classmethod
    def of(cls, encoder: Encoder | Sides) -> Sides:
        """``encoder`` itself when it is a ``Sides``; else one encoder on both sides.

        Raises:
            TypeError: neither a ``Sides`` nor an encoder.
        """
        if isinstance(encoder, Sides):
            return encoder
        return cls(encoder, encoder)

    @classmethod
    def from_roles(cls, towers: Mapping[str, Encoder], roles: Mapping[str, str]) -> Sides:
        """The sides of a model of named towers and a role -> tower map: ``query`` is the
        anchor's tower, ``document`` the positive's (the anchor's when no positive is mapped).

        Raises:
            KeyError: no ``anchor`` role, or a role names a tower that is not in ``towers``.
        """
        anchor = towers[roles["anchor"]]
        return cls(anchor, towers[roles["positive"]] if "positive" in roles else anchor)

    @property
    def shared(self) -> bool:
        """Whether one tower embeds both sides (a one-tower model)."""
        return self.query is self.document

    @property
    def image(self) -> Encoder:
        """The side whose tower embeds images (the query side when both do).

        Raises:
            ModalityError: neither tower embeds images.
        """
        return self._of_modality("image")

    @property
    def text(self) -> Encoder:
        """The side whose tower embeds texts (the query side when both do).

        Raises:
            ModalityError: neither tower embeds texts.
        """
        return self._of_modality("text")

    def _of_modality(self, modality: str) -> Encoder:
        for side in (self.query, self.document):
            if modality_of(side) == modality:
                return side
        raise ModalityError(
            f"this evaluation needs {'an' if modality == 'image' else 'a'} {modality} tower; "
            f"the model has "
            f"{modality_of(self.query)} (query side) and {modality_of(self.document)} "
            f"(document side)"
        )


class Evaluator(Protocol):
    """``evaluator(sides_or_encoder) -> {metric: value}``; ``primary`` names the metric to select
    on."""

    name: str
    primary: str

    def __call__(self, sides: Encoder | Sides) -> dict[str, float]: ...


class PairRecord(Protocol):
    """The record attributes evaluators read (``contralign.data.records.Record`` has them)."""

    @property
    def anchor(self) -> Item: ...

    @property
    def positive(self) -> Item | None: ...

    @property
    def score(self) -> float | None: ...


def read_pairs(config: DataConfig, *, scored: bool = False, rejects_dir: Path | None = None,
               key: str = "eval") -> list[Record]:
    """Read an evaluation file of pairs (with scores when ``scored``), checked where it enters;
    ``key`` is where ``config`` sits in the user's config (``eval.sts``), for messages.

    Raises:
        DataError: the file maps no positive (or score) column; for scored pairs, fewer than
            two pairs or scores that are all equal (no correlation is defined).
    """
    from contralign.data import load_records  # torch, for batching: not at import time

    records = load_records(config, rejects_dir, key=key)
    needed = ("positive", "score") if scored else ("positive",)
    for role in needed:
        if role not in records.roles:
            raise DataError(config.path, None, "columns", f"evaluation needs a {role} column; "
                            f"map one (columns found as roles: {', '.join(records.roles)})")
    if scored:
        if len(records.records) < 2:
            raise DataError(config.path, None, None, f"STS needs at least 2 scored pairs, got "
                            f"{len(records.records)}")
        if len({record.score for record in records.records}) < 2:
            raise DataError(config.path, None, "score", "all scores are equal, so no "
                            "correlation is defined")
    return records.records


def record_pairs(
    records: Sequence[PairRecord], *, with_score: bool = False
) -> tuple[list[Item], list[Item], list[float]]:
    """Split records into ``(anchors, positives, scores)``; ``scores`` is empty unless asked for.

    Raises:
        ValueError: no records, or a record without a positive (or score, when asked for);
            the message names the record's line (``record.line`` when it has one).
    """
    if not records:
        raise ValueError("no records to evaluate on")
    anchors: list[Item] = []
    positives: list[Item] = []
    scores: list[float] = []
    for number, record in enumerate(records, start=1):
        where = f"record at line {getattr(record, 'line', number)}"
        if record.positive is None:
            raise ValueError(f"{where}: positive: missing (evaluation needs pairs)")
        if with_score:
            if record.score is None:
                raise ValueError(f"{where}: score: missing (STS evaluation needs scores)")
            scores.append(float(record.score))
        anchors.append(record.anchor)
        positives.append(record.positive)
    return anchors, positives, scores


def encode_unique(
    encoder: Encoder, items: Sequence[Item], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Embed each distinct item once with one tower.

    Args:
        encoder: anything with ``encode(items, batch_size) -> (N, D)``.
        items: ``N`` texts or images, possibly repeated (equal ``item_key``).
        batch_size: passed to ``encoder.encode``.

    Returns:
        ``(embeddings, index)``: ``embeddings`` is ``(U, D)`` float32 for the ``U`` distinct items
        in first-seen order, and ``index`` ``(N,)`` int64 maps ``items[i]`` to its row.

    Raises:
        ValueError: the encoder returned something other than ``U`` rows of vectors.
        TypeError: an item is neither a text nor an ``ImageItem``.
    """
    position: dict[str, int] = {}
    distinct: list[Item] = []
    rows = []
    for item in items:
        key = item_key(item)
        if key not in position:
            position[key] = len(distinct)
            distinct.append(item)
        rows.append(position[key])
    index = np.asarray(rows, dtype=np.int64)
    embeddings = np.asarray(encoder.encode(distinct, batch_size=batch_size), np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(distinct):
        raise ValueError(
            f"encoder returned shape {embeddings.shape} for {len(distinct)} items; "
            f"expected ({len(distinct)}, D)"
        )
    return embeddings, index


def encode_sides(
    sides: Sides, queries: Sequence[Item], documents: Sequence[Item], batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embed ``queries`` with ``sides.query`` and ``documents`` with ``sides.document``, each
    distinct item once per tower.

    With one shared tower an item on both sides is one row, embedded once, in one ``encode``
    call; with two towers it is embedded by each (two rows), the query tower's rows first.

    Returns:
        ``(embeddings, query_index, document_index)``: ``(U, D)`` float32 rows, ``(Nq,)`` and
        ``(Nd,)`` int64 row numbers of ``queries`` and ``documents``.

    Raises:
        ValueError: a tower returned the wrong number of rows, or the two towers' dimensions
            differ (the sides must share one embedding space).
    """
    n = len(queries)
    if sides.shared:
        embeddings, index = encode_unique(sides.query, [*queries, *documents], batch_size)
        return embeddings, index[:n], index[n:]
    query_embeddings, query_index = encode_unique(sides.query, queries, batch_size)
    document_embeddings, document_index = encode_unique(sides.document, documents, batch_size)
    check_same_space(query_embeddings, document_embeddings)
    embeddings = np.concatenate([query_embeddings, document_embeddings])
    return embeddings, query_index, document_index + len(query_embeddings)


def check_same_space(queries: np.ndarray, documents: np.ndarray) -> None:
    """Check two sides' ``(N, D)`` embeddings have the same ``D``.

    Raises:
        ValueError: they differ (towers without a projection to a shared dimension).
    """
    if queries.shape[1] != documents.shape[1]:
        raise ValueError(
            f"the query tower gives {queries.shape[1]}-d embeddings and the document tower "
            f"{documents.shape[1]}-d; evaluation needs both in one space (a projection head)"
        )


def check_distinct_names(evaluators: Sequence[Evaluator]) -> None:
    """Evaluator names prefix their metrics' keys, so they must differ.

    Raises:
        ValueError: two evaluators share a name (their keys would collide).
    """
    names = [evaluator.name for evaluator in evaluators]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"evaluator names must be distinct; repeated: {repeated}")
