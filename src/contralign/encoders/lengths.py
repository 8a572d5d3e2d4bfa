"""Length groups: embed the rows of a padded batch in groups of similar length.

A collated batch is padded to its longest text, so one long text makes every row pay for its
length; in short-sentence batches (SICK, STS-B) more than half of the tokens are padding. A
transformer embeds each row independently of the others and of its padding (the attention mask
hides padded keys, and pooling ignores padded positions), so embedding length-sorted groups, each
trimmed to its own longest row, gives the same embeddings with fewer token positions computed.
Only the random draws differ: dropout masks are drawn for the trimmed shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

# Below this share of the padded positions saved, one forward pass is kept (no extra calls).
MIN_SAVING = 0.1


def longest_first(attention_mask: Tensor) -> Tensor:
    """``(B,)`` row indices of a ``(B, T)`` mask, longest text first (ties in batch order)."""
    return attention_mask.sum(dim=1).argsort(descending=True, stable=True)


def length_groups(attention_mask: Tensor, tokens_per_group: int) -> list[Tensor] | None:
    """Row indices of length-sorted groups of at most ``tokens_per_group`` padded positions.

    Args:
        attention_mask: ``(B, T)`` right-padded mask (1 on tokens, 0 on padding).
        tokens_per_group: the largest ``rows x longest row`` of a group; a text longer than
            this forms a group of its own.

    Returns:
        A list of ``(n_g,)`` int64 index tensors that together hold every row once, longest
        first; or None when grouping would save less than ``MIN_SAVING`` of the positions.
    """
    batch, width = attention_mask.shape
    order = longest_first(attention_mask)
    sorted_lengths = attention_mask.sum(dim=1)[order].tolist()
    groups, start, padded = [], 0, 0
    while start < batch:
        longest = max(int(sorted_lengths[start]), 1)
        size = max(1, tokens_per_group // longest)
        groups.append(order[start:start + size])
        padded += longest * len(groups[-1])
        start += size
    if padded > (1 - MIN_SAVING) * batch * width:
        return None
    return groups


def take_rows(batch: dict[str, Tensor], rows: Tensor | slice, width: int) -> dict[str, Tensor]:
    """``rows`` of a tokenized batch, token-level tensors trimmed to the first ``width``
    positions (right padding); other tensors keep their trailing dimensions."""
    full_width = batch["attention_mask"].shape[1]
    return {name: value[rows, :width] if value.dim() >= 2 and value.shape[1] == full_width
            else value[rows] for name, value in batch.items()}


def trim_padding(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """A right-padded batch without the padding columns that no row uses (the batch itself when
    there are none)."""
    mask = batch["attention_mask"]  # (B, T)
    width = max(int(mask.sum(dim=1).max()), 1) if mask.numel() else mask.shape[1]
    if width >= mask.shape[1]:
        return batch
    return take_rows(batch, slice(None), width)


def pad_rows(rows: Sequence[Sequence[int]], width: int, fill: int, left: bool = False
             ) -> np.ndarray:
    """Rows of ints (token ids, type ids, mask values) as one ``(B, width)`` int64 array, each row
    at the right end when ``left`` (padding on the left) and at the left end otherwise, ``fill``
    on the padding."""
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))  # (B,)
    columns = np.arange(width)[None, :]
    filled = columns >= width - lengths[:, None] if left else columns < lengths[:, None]
    out = np.full(filled.shape, fill, dtype=np.int64)
    out[filled] = np.fromiter((t for row in rows for t in row), dtype=np.int64,
                              count=int(lengths.sum()))  # row-major fill = row by row
    return out
