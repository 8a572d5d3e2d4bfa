"""Align the words of sentence pairs with a text tower's contextual subword vectors.

The SimAlign recipe (arXiv:2004.08728), batched: tokenize each sentence's words into subwords,
run the tower's transformer once per batch (source and target sentences of the batch together,
sorted by length so that rows pad little), take the hidden states of one layer, score every
source unit against every target unit, extract links with the chosen method (``extraction``),
and map them to words. Units are subwords (a word pair is aligned when any of their subwords
are: SimAlign's ``token_type="bpe"``) or words (each the mean of its subword vectors: SimAlign's
``token_type="word"``).

Centering (``center``): the pair's mean subword vector is subtracted from every vector of the
pair before scoring. Hidden states of transformer encoders share a large common component
(a few "rogue" dimensions dominate every vector: Timkey & van Schijndel 2021,
arXiv:2109.04404) and each language has its own mean (Libovický et al. 2020, arXiv:2004.05160,
who subtract a language's mean for cross-lingual tasks); both inflate the cosine of unrelated
tokens. The pair's own mean removes them without corpus statistics, so a pair aligns the same
alone or in any corpus.

Scores: the SimAlign methods (argmax, itermax, match) read cosine similarity mapped to
``[0, 1]`` as ``(cos + 1) / 2``; awesome-align's ``softmax`` (arXiv:2101.08231) reads the raw
dot products of the vectors, as awesome-align does (on cosines in ``[-1, 1]`` its softmaxes
would be nearly flat and its 1e-3 threshold would keep almost every pair).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from contralign.alignment.embeddings import WordPieces, piece_states, tokenize_words
from contralign.alignment.extraction import METHODS, Method, extract
from contralign.alignment.pharaoh import Link, ParallelCorpus
from contralign.core.errors import ConfigError
from contralign.encoders.text import TextEncoder

Level = Literal["subword", "word"]
LEVELS: tuple[str, ...] = get_args(Level)

# The best configuration measured with multilingual-e5-small on en-fr and ro-en
# (benchmarks/word_alignment.py, docs/multilingual.md): the default method, level and
# centering, and the default layer of a 12-layer model.
DEFAULT_METHOD: Method = "argmax"
DEFAULT_LEVEL: Level = "subword"
DEFAULT_CENTER = True
DEFAULT_LAYER = 7
# Models of another depth take the layer at the same relative depth.
REFERENCE_DEPTH = 12

Alignments = list[set[Link]]


@dataclass(frozen=True)
class AlignSetting:
    """One way of aligning (see the module docstring).

    Attributes:
        method: ``argmax``, ``itermax``, ``match`` or ``softmax``.
        layer: the hidden state to read (0: the embedding layer's output).
        level: ``subword`` or ``word``.
        center: subtract the pair's mean subword vector first.
    """

    method: Method = DEFAULT_METHOD
    layer: int = DEFAULT_LAYER
    level: Level = DEFAULT_LEVEL
    center: bool = DEFAULT_CENTER

    def __str__(self) -> str:
        return (f"{self.method}, layer {self.layer}, {self.level} level"
                f"{', centered' if self.center else ''}")


def transformer_of(tower: Any) -> tuple[Any, Any]:
    """The transformers model and fast tokenizer of a text tower.

    Raises:
        ConfigError: the tower is not a transformer text tower (a static or image tower has
            no contextual subword vectors), or its tokenizer is not a fast one.
    """
    if not isinstance(tower, TextEncoder):
        raise ConfigError(f"model: word alignment needs a transformer text tower; this model's "
                          f"tower is a {type(tower).__name__}")
    if not tower.tokenizer.is_fast:
        raise ConfigError("model: word alignment needs a fast tokenizer (it maps subwords to "
                          "words with word_ids()); this model has a slow one")
    return tower.model, tower.tokenizer


def num_layers(tower: Any) -> int:
    """The number of transformer layers of ``tower`` (valid ``layer`` values: 0 .. that)."""
    model, _ = transformer_of(tower)
    return int(model.config.num_hidden_layers)


def default_layer(tower: Any) -> int:
    """``DEFAULT_LAYER`` for a 12-layer model; the layer at the same relative depth for others
    (layer 4 of 6 for all-MiniLM-L6-v2)."""
    depth = num_layers(tower)
    return max(1, min(depth, round(DEFAULT_LAYER * depth / REFERENCE_DEPTH)))


def check_layer(tower: Any, layer: int, key: str = "layer") -> int:
    """``layer`` when ``tower`` has it (0: the embedding layer's output).

    Raises:
        ConfigError: naming ``key``, when the layer is out of range.
    """
    depth = num_layers(tower)
    if not 0 <= layer <= depth:
        raise ConfigError(f"{key}: layer {layer} is out of range: the model has layers 0 "
                          f"(embeddings) to {depth}")
    return layer


def check_setting(tower: Any, setting: AlignSetting, *, layer_key: str = "layer",
                  method_key: str = "method", level_key: str = "level") -> AlignSetting:
    """``setting`` when ``tower`` can align with it.

    Raises:
        ConfigError: an unknown method or level, or a layer the model lacks (naming the key).
    """
    if setting.method not in METHODS:
        raise ConfigError(f"{method_key}: {setting.method!r} is not an alignment method; "
                          f"choose one of {', '.join(METHODS)}")
    if setting.level not in LEVELS:
        raise ConfigError(f"{level_key}: {setting.level!r} is not an alignment level; choose "
                          f"{' or '.join(LEVELS)}")
    check_layer(tower, setting.layer, layer_key)
    return setting


def all_settings(methods: Iterable[str], layers: Iterable[int], levels: Iterable[str] = LEVELS,
                 centers: Iterable[bool] = (False, True)) -> list[AlignSetting]:
    """Every combination, for ``align_grid``."""
    return [AlignSetting(m, layer, v, c)  # type: ignore[arg-type]
            for m, layer, v, c in itertools.product(methods, layers, levels, centers)]


def align_corpus(tower: Any, corpus: ParallelCorpus, setting: AlignSetting | None = None, *,
                 batch_size: int = 32, progress: Callable[[int], None] | None = None
                 ) -> Alignments:
    """Align every sentence pair of ``corpus``: 0-indexed ``(source word, target word)`` links.

    Args:
        tower: a transformer text tower (``TextEncoder``).
        corpus: the sentence pairs (words).
        setting: method, layer, level and centering; None: the defaults, at
            ``default_layer(tower)``.
        batch_size: sentence pairs per forward pass (each pass embeds ``2 × batch_size``
            sentences).
        progress: called with the number of pairs done after each batch.

    Raises:
        ConfigError: an unknown method or level, a layer the model lacks, or a tower without a
            transformer.
        DataError: a sentence longer than the model reads (file and line named).
    """
    setting = setting or AlignSetting(layer=default_layer(tower))
    return align_grid(tower, corpus, [setting], batch_size=batch_size, progress=progress)[setting]


def align_grid(tower: Any, corpus: ParallelCorpus, settings: Sequence[AlignSetting], *,
               batch_size: int = 32, progress: Callable[[int], None] | None = None
               ) -> dict[AlignSetting, Alignments]:
    """The alignments of ``corpus`` under each setting, from one forward pass per batch.

    Raises:
        As ``align_corpus``.
    """
    model, tokenizer = transformer_of(tower)
    settings = [check_setting(tower, s) for s in settings]
    max_length = min(tower.config.max_length,
                     getattr(model.config, "max_position_embeddings", tower.config.max_length))
    source = tokenize_words(tokenizer, corpus.source, max_length=max_length,
                            path=corpus.source_path, side="source")
    target = tokenize_words(tokenizer, corpus.target, max_length=max_length,
                            path=corpus.target_path, side="target")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: dict[AlignSetting, Alignments] = {s: [set() for _ in range(len(corpus))]
                                               for s in settings}
    lengths = [len(s.input_ids) + len(t.input_ids) for s, t in zip(source, target, strict=True)]
    order = np.argsort([-n for n in lengths], kind="stable")  # longest pairs first
    layers = sorted({s.layer for s in settings})
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            states = piece_states(model, [source[i] for i in rows] + [target[i] for i in rows],
                                  layers, pad_id=pad_id)
            for k, i in enumerate(rows):  # states: (L', n, H) source, (L', m, H) target
                by_layer = {layer: (states[k][li], states[len(rows) + k][li])
                            for li, layer in enumerate(layers)}
                for setting in settings:
                    results[setting][i] = align_pair(*by_layer[setting.layer], source[i],
                                                     target[i], setting)
            if progress is not None:
                progress(min(start + batch_size, len(order)))
    finally:
        model.train(was_training)
    return results


def align_pair(source: Tensor, target: Tensor, source_pieces: WordPieces,
               target_pieces: WordPieces, setting: AlignSetting) -> set[Link]:
    """One sentence pair's word links.

    Args:
        source, target: subword vectors at ``setting.layer``, ``(n, H)`` and ``(m, H)``.
        source_pieces, target_pieces: their subword -> word maps.
        setting: method, level and centering (its layer is already chosen).
    """
    if len(source) == 0 or len(target) == 0:
        return set()
    if setting.center:
        mean = torch.cat([source, target]).mean(dim=0)  # (H,)
        source, target = source - mean, target - mean
    src, src_words = unit_vectors(source, source_pieces, setting.level)
    tgt, tgt_words = unit_vectors(target, target_pieces, setting.level)
    links = extract(pair_scores(src, tgt, setting.method), setting.method)
    return word_links(links, src_words, tgt_words)


def unit_vectors(states: Tensor, pieces: WordPieces, level: str) -> tuple[Tensor, np.ndarray]:
    """The vectors alignment compares and the word of each.

    Returns:
        ``subword``: the subword vectors ``(n, H)`` and ``word_of_piece`` ``(n,)``; ``word``:
        the mean subword vector of each word that has subwords ``(w, H)``, and those words'
        indices ``(w,)`` (a word without subwords has no vector and is never aligned).
    """
    if level == "subword":
        return states, pieces.word_of_piece
    words, index = np.unique(pieces.word_of_piece, return_inverse=True)  # (w,), (n,)
    index_t = torch.as_tensor(index, device=states.device)
    sums = torch.zeros(len(words), states.shape[-1], dtype=states.dtype, device=states.device)
    sums.index_add_(0, index_t, states)  # (w, H)
    counts = torch.bincount(index_t, minlength=len(words)).to(states.dtype)  # (w,)
    return sums / counts[:, None], words


def pair_scores(source: Tensor, target: Tensor, method: str) -> np.ndarray:
    """The ``(n, m)`` float64 matrix ``method`` reads from vectors ``(n, H)`` and ``(m, H)``:
    ``(cos + 1) / 2`` for the SimAlign methods, dot products for ``softmax``."""
    if method == "softmax":
        return (source.double() @ target.double().T).cpu().numpy()
    cos = _normalize(source.double()) @ _normalize(target.double()).T  # (n, m)
    return ((cos + 1.0) / 2.0).cpu().numpy()


def _normalize(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def word_links(unit_links: np.ndarray, source_words: np.ndarray,
               target_words: np.ndarray) -> set[Link]:
    """Links between units (subwords or words) -> word links: words ``(a, b)`` are aligned when
    any unit of ``a`` is linked to any unit of ``b``.

    Args:
        unit_links: ``(n, m)`` bool.
        source_words, target_words: the word of each unit, ``(n,)`` and ``(m,)`` int.
    """
    rows, cols = np.nonzero(unit_links)
    return set(zip(source_words[rows].tolist(), target_words[cols].tolist(), strict=True))
