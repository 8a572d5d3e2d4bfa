"""Text views: determinism under a seed, each view's invariants, and validation of names/params."""

from __future__ import annotations

import inspect
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contralign.data.views import (
    VIEWS,
    identity,
    make_view,
    span_deletion,
    span_swap,
    token_cutoff,
    view_rng,
    word_deletion,
    word_repetition,
    word_shuffle,
)

SENTENCE = "the quick brown fox jumps over the lazy dog near the old river bank"
# Distinct tokens, so a token's position in the output says where it came from.
distinct_texts = st.integers(min_value=1, max_value=40).map(
    lambda n: " ".join(f"w{i}" for i in range(n)))
ratios = st.floats(min_value=0.0, max_value=1.0)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(token in it for token in short)


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_same_seed_same_view_and_seeds_differ(name):
    view = make_view(name)
    first = [view(SENTENCE, random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng = random.Random(7)
    stream = [view(SENTENCE, rng) for _ in range(20)]
    again = random.Random(7)
    assert stream == [view(SENTENCE, again) for _ in range(20)]
    if name != "identity":
        assert len(set(stream)) > 1, f"{name} gave the same view 20 times"


def test_view_rng_depends_on_keys_only():
    assert view_rng(0, 1, 5).random() == view_rng(0, 1, 5).random()
    assert view_rng(0, 1, 5).random() != view_rng(0, 1, 6).random()
    assert view_rng(0, 1, 5).random() != view_rng(0, 15).random()


def test_identity_is_the_text():
    assert identity("  odd   spacing ", random.Random(0)) == "  odd   spacing "


@settings(max_examples=60, deadline=None)
@given(text=distinct_texts, ratio=ratios, seed=seeds)
def test_word_deletion_keeps_an_ordered_subset(text, ratio, seed):
    tokens = text.split()
    out = word_deletion(text, random.Random(seed), ratio=ratio).split()
    assert out and _is_subsequence(out, tokens)
    removed = len(tokens) - len(out)
    assert abs(removed - min(ratio * len(tokens), len(tokens) - 1)) <= 0.5 + 1e-9


def test_word_deletion_exact_count():
    out = word_deletion(SENTENCE, random.Random(3), ratio=0.5).split()
    assert len(out) == 14 - 7 and _is_subsequence(out, SENTENCE.split())
    assert word_deletion("one two", random.Random(0), ratio=1.0) in ("one", "two")


@settings(max_examples=60, deadline=None)
@given(text=distinct_texts, ratio=ratios, seed=seeds, max_span=st.integers(1, 6))
def test_span_deletion_keeps_an_ordered_subset_and_masking_keeps_length(
    text, ratio, seed, max_span
):
    tokens = text.split()
    out = span_deletion(text, random.Random(seed), ratio=ratio, max_span=max_span).split()
    assert out and _is_subsequence(out, tokens)
    masked = span_deletion(text, random.Random(seed), ratio=ratio, max_span=max_span,
                           mask_token="[MASK]").split()
    assert len(masked) == len(tokens)
    kept = [m for m in masked if m != "[MASK]"]
    # Same seed: masking hides exactly the tokens that deletion removes.
    assert kept == out
    assert all(m in ("[MASK]", t) for m, t in zip(masked, tokens, strict=True))


class LongestSpans(random.Random):
    """Always draws the longest span allowed, so the spans' shape is known."""

    def randint(self, a: int, b: int) -> int:
        return b


def test_span_deletion_removes_contiguous_spans():
    tokens = [f"w{i}" for i in range(30)]
    text = " ".join(tokens)
    # k = 6 tokens, spans up to 6 long: one span of 6 adjacent tokens.
    out = span_deletion(text, LongestSpans(4), ratio=0.2, max_span=6).split()
    removed = [i for i, t in enumerate(tokens) if t not in out]
    assert len(removed) == 6 and removed == list(range(removed[0], removed[0] + 6))


@settings(max_examples=60, deadline=None)
@given(text=distinct_texts, ratio=ratios, seed=seeds)
def test_token_cutoff_removes_one_contiguous_span(text, ratio, seed):
    tokens = text.split()
    out = token_cutoff(text, random.Random(seed), ratio=ratio).split()
    assert out
    cut = len(tokens) - len(out)
    assert abs(cut - min(ratio * len(tokens), len(tokens) - 1)) <= 0.5 + 1e-9
    # out is tokens with tokens[s : s + cut] removed, for some s.
    assert any(tokens[:s] + tokens[s + cut :] == out for s in range(len(tokens) - cut + 1))


@settings(max_examples=60, deadline=None)
@given(text=distinct_texts, ratio=ratios, seed=seeds)
def test_shuffle_and_swap_keep_the_multiset(text, ratio, seed):
    tokens = text.split()
    shuffled = word_shuffle(text, random.Random(seed), ratio=ratio).split()
    assert Counter(shuffled) == Counter(tokens)
    moved = sum(a != b for a, b in zip(shuffled, tokens, strict=True))
    assert moved <= int(ratio * len(tokens) + 0.5)
    swapped = span_swap(text, random.Random(seed), ratio=ratio).split()
    assert Counter(swapped) == Counter(tokens)


def test_span_swap_swaps_two_equal_spans():
    tokens = [f"w{i}" for i in range(10)]
    out = span_swap(" ".join(tokens), random.Random(0), ratio=0.2).split()
    changed = [i for i in range(10) if out[i] != tokens[i]]
    assert len(changed) == 4  # two spans of round(0.2 * 10) = 2 tokens
    first, second = changed[:2], changed[2:]
    assert first[1] == first[0] + 1 and second[1] == second[0] + 1
    assert out[first[0] : first[0] + 2] == tokens[second[0] : second[0] + 2]
    assert out[second[0] : second[0] + 2] == tokens[first[0] : first[0] + 2]


@settings(max_examples=60, deadline=None)
@given(text=distinct_texts, dup_rate=ratios, seed=seeds)
def test_word_repetition_only_adds_adjacent_copies(text, dup_rate, seed):
    tokens = text.split()
    out = word_repetition(text, random.Random(seed), dup_rate=dup_rate).split()
    collapsed, runs = [], []
    for token in out:
        if collapsed and collapsed[-1] == token:
            runs[-1] += 1
        else:
            collapsed.append(token)
            runs.append(1)
    assert collapsed == tokens and max(runs) <= 2
    assert len(out) - len(tokens) <= min(max(2, int(dup_rate * len(tokens))), len(tokens))


def test_word_repetition_follows_esimcse_range():
    tokens = [f"w{i}" for i in range(50)]
    added = {len(word_repetition(" ".join(tokens), random.Random(s)).split()) - 50
             for s in range(300)}
    assert added == set(range(0, int(0.32 * 50) + 1))  # uniform on [0, 16]


@pytest.mark.parametrize("name", sorted(VIEWS))
@pytest.mark.parametrize("text", ["word", "two words", "   ", ""])
def test_never_empty_and_blank_text_unchanged(name, text):
    accepted = inspect.signature(VIEWS[name]).parameters
    params = {key: 1.0 for key in ("ratio", "dup_rate") if key in accepted}  # the most drastic
    view = make_view(name, **params)
    for seed in range(5):
        out = view(text, random.Random(seed))
        if text.split():
            assert out.split() and set(out.split()) <= set(text.split())
        else:
            assert out == text


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("word_dropout", {}, "unknown view 'word_dropout'; choose from identity"),
        ("word_deletion", {"rate": 0.1}, "view word_deletion: unknown parameter.*rate.*ratio"),
        ("identity", {"ratio": 0.1}, "view identity: unknown parameter.*ratio.*none"),
        ("word_deletion", {"ratio": 1.5}, "view word_deletion: ratio must be .* got 1.5"),
        ("token_cutoff", {"ratio": -0.1}, "view token_cutoff: ratio"),
        ("word_shuffle", {"ratio": "half"}, "view word_shuffle: ratio .* got 'half'"),
        ("span_deletion", {"max_span": 0}, "view span_deletion: max_span"),
        ("span_deletion", {"mask_token": "[M] x"}, "view span_deletion: mask_token"),
        ("span_deletion", {"mask_token": ""}, "view span_deletion: mask_token"),
        ("word_repetition", {"dup_rate": 2}, "view word_repetition: dup_rate"),
    ],
)
def test_bad_names_and_params_raise(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_view(name, **params)


def test_direct_calls_validate_too():
    with pytest.raises(ValueError, match="view word_deletion: ratio"):
        word_deletion(SENTENCE, random.Random(0), ratio=3.0)
