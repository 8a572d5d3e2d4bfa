"""What evaluators need: an encoder, duck-typed records, and the evaluator shape itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from contralign.core.errors import DataError

if TYPE_CHECKING:
    from contralign.data import DataConfig, Record


@runtime_checkable
class Encoder(Protocol):
    """Anything that embeds texts: ``TextEncoder``, a sentence-transformers wrapper, a mock."""

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Embed ``texts`` as a float array ``(N, D)`` in input order."""
        ...


class Evaluator(Protocol):
    """``evaluator(encoder) -> {metric: value}``; ``primary`` names the metric to select on."""

    name: str
    primary: str

    def __call__(self, encoder: Encoder) -> dict[str, float]: ...


class PairRecord(Protocol):
    """The record attributes evaluators read (``contralign.data.records.Record`` has them)."""

    @property
    def anchor(self) -> str: ...

    @property
    def positive(self) -> str | None: ...

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
) -> tuple[list[str], list[str], list[float]]:
    """Split records into ``(anchors, positives, scores)``; ``scores`` is empty unless asked for.

    Raises:
        ValueError: no records, or a record without a positive (or score, when asked for);
            the message names the record's line (``record.line`` when it has one).
    """
    if not records:
        raise ValueError("no records to evaluate on")
    anchors: list[str] = []
    positives: list[str] = []
    scores: list[float] = []
    for number, record in enumerate(records, start=1):
        where = f"record at line {getattr(record, 'line', number)}"
        if record.positive is None:
            raise ValueError(f"{where}: positive: missing (evaluation needs text pairs)")
        if with_score:
            if record.score is None:
                raise ValueError(f"{where}: score: missing (STS evaluation needs scores)")
            scores.append(float(record.score))
        anchors.append(record.anchor)
        positives.append(record.positive)
    return anchors, positives, scores


def encode_unique(
    encoder: Encoder, texts: Sequence[str], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Embed each distinct text once.

    Args:
        encoder: anything with ``encode(texts, batch_size) -> (N, D)``.
        texts: ``N`` texts, possibly repeated.
        batch_size: passed to ``encoder.encode``.

    Returns:
        ``(embeddings, index)``: ``embeddings`` is ``(U, D)`` float32 for the ``U`` distinct texts
        in first-seen order, and ``index`` ``(N,)`` int64 maps ``texts[i]`` to its row.

    Raises:
        ValueError: the encoder returned something other than ``U`` rows of vectors.
    """
    position: dict[str, int] = {}
    index = np.fromiter(
        (position.setdefault(text, len(position)) for text in texts), dtype=np.int64,
        count=len(texts),
    )
    embeddings = np.asarray(encoder.encode(list(position), batch_size=batch_size), np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(position):
        raise ValueError(
            f"encoder returned shape {embeddings.shape} for {len(position)} texts; "
            f"expected ({len(position)}, D)"
        )
    return embeddings, index
