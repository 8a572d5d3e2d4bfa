"""Contextual subword vectors of pre-tokenised sentences, each subword mapped to its word.

Word aligners built on a transformer (SimAlign, awesome-align) tokenize each word of a
pre-tokenised sentence into subwords, run the model once per sentence, take one layer's hidden
states, drop the special tokens (``[CLS]``/``<s>``, ``[SEP]``/``</s>``) and remember which word
each subword came from; alignment happens between subwords and is mapped back to words (a word
pair is aligned when any of their subwords are). This module does the tokenization and the
forward pass, batched, with no prompt prefix (raw words) and no gradient.

Tokenization uses the fast tokenizer's ``is_split_into_words=True`` and its ``word_ids()``:
each word is tokenized on its own, as SimAlign's ``tokenizer.tokenize(word)`` does. A word that
yields no subword at all (an empty string, a character the tokenizer's normaliser removes)
has no vector and is never aligned; a word whose only piece is SentencePiece's lone ``▁``
keeps that piece as its vector. A sentence longer than the model may read is refused, never
truncated (a truncated sentence would silently lose its last words' links).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contralign.core.errors import DataError


@dataclass(frozen=True)
class WordPieces:
    """One tokenized sentence.

    Attributes:
        input_ids: the model's input, special tokens included: ``(T,)`` int.
        positions: the positions in ``input_ids`` of the subwords that belong to a word (all
            but the special tokens), ``(n,)`` int64, increasing.
        word_of_piece: the index of the word of each of those subwords, ``(n,)`` int64,
            non-decreasing.
        n_words: the number of words in the sentence (some may have no piece).
    """

    input_ids: list[int]
    positions: np.ndarray
    word_of_piece: np.ndarray
    n_words: int

    @property
    def n_pieces(self) -> int:
        return len(self.word_of_piece)


def tokenize_words(tokenizer: Any, sentences: Sequence[Sequence[str]], *, max_length: int,
                   path: str = "<input>", side: str | None = None) -> list[WordPieces]:
    """Tokenize pre-split sentences, one word at a time, keeping each subword's word.

    Args:
        tokenizer: a transformers fast tokenizer (``word_ids`` needs one).
        sentences: the words of each sentence.
        max_length: the most positions the model reads, special tokens included.
        path, side: name the file and side (``source``/``target``) in messages; sentence ``k``
            is line ``k + 1`` of ``path``.

    Returns:
        One ``WordPieces`` per sentence.

    Raises:
        DataError: a sentence needs more than ``max_length`` positions (file and line named).
    """
    if not sentences:
        return []
    encoded = tokenizer([list(words) for words in sentences], is_split_into_words=True,
                        add_special_tokens=True, truncation=False)
    out = []
    for k, words in enumerate(sentences):
        ids = list(encoded["input_ids"][k])
        if len(ids) > max_length:
            raise DataError(path, k + 1, side, f"{len(ids)} subword tokens (special tokens "
                            f"included) exceed the model's maximum of {max_length}; split the "
                            "sentence or align with a model that reads longer inputs")
        # word_ids(): the word of each position, None for special tokens (an unknown-word
        # token such as [UNK] is a word's piece, though its id is a special one).
        word_ids = encoded.word_ids(k)
        positions = np.array([t for t, w in enumerate(word_ids) if w is not None],
                             dtype=np.int64)
        pieces = np.array([w for w in word_ids if w is not None], dtype=np.int64)
        out.append(WordPieces(ids, positions, pieces, len(words)))
    return out


def model_inputs(batch: Sequence[WordPieces], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``, ``(B, T)`` int64."""
    width = max(len(p.input_ids) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, pieces in enumerate(batch):
        ids[row, : len(pieces.input_ids)] = torch.tensor(pieces.input_ids)
        mask[row, : len(pieces.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.inference_mode()
def piece_states(model: Any, batch: Sequence[WordPieces], layers: Sequence[int], *,
                 pad_id: int) -> list[Tensor]:
    """Run ``model`` once over ``batch`` and keep each sentence's subword vectors at ``layers``.

    The caller puts the model in eval mode (dropout off).

    Args:
        model: a transformers encoder that returns ``hidden_states`` (index 0: the embedding
            layer's output, ``i``: the output of layer ``i``).
        batch: tokenized sentences.
        layers: hidden-state indices to keep (0 .. number of layers).
        pad_id: the padding token id.

    Returns:
        Per sentence, a float32 ``(len(layers), n_pieces, H)`` tensor on the model's device,
        special tokens and padding dropped.
    """
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in model_inputs(batch, pad_id).items()}
    hidden = model(**inputs, output_hidden_states=True).hidden_states  # L+1 × (B, T, H)
    stacked = torch.stack([hidden[layer] for layer in layers], dim=1).float()  # (B, L', T, H)
    return [stacked[row][:, torch.as_tensor(pieces.positions, device=device)]  # (L', n, H)
            for row, pieces in enumerate(batch)]
