"""Text views: augmentations that make a second view of a text for contrastive learning.

Each view is a pure function ``(text, rng, **params) -> str`` on whitespace tokens: the same text,
parameters and ``random.Random`` state give the same view. The output tokens are joined by single
spaces. A view never returns an empty string from a text with tokens: at least one token is kept.
A text without tokens (empty or blank) is returned unchanged.

* ``identity``: the text itself. With the tower's dropout active, an identity view is SimCSE's
  unsupervised positive (Gao et al. 2021, arXiv:2104.08821): the noise is the model's own.
* ``word_deletion``, ``span_deletion`` (with ``mask_token``: span masking), ``span_swap`` (CLEAR's
  reordering) and ``word_shuffle``: CLEAR (Wu et al. 2020, arXiv:2012.15466).
* ``token_cutoff``: drop one contiguous span, the text-level form of ConSERT's token cutoff
  (Yan et al. 2021, arXiv:2105.11741).
* ``word_repetition``: duplicate a random subset of words in place, ESimCSE
  (Wu et al. 2021, arXiv:2109.04380).

Synonym substitution is out of scope. Choose views by name with :func:`make_view`::

    view = make_view("word_deletion", ratio=0.2)
    view("a cat sits on the mat", view_rng(seed, epoch, index))
"""

from __future__ import annotations

import functools
import inspect
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

View = Callable[[str, random.Random], str]


def view_rng(*keys: int | str) -> random.Random:
    """A generator seeded by ``keys`` (e.g. seed, epoch, record index): the same keys give the same
    stream in every process, whatever order records are visited in (string seeds are hashed
    with SHA-512 by ``random``, not with Python's salted ``hash``)."""
    return random.Random(":".join(str(key) for key in keys))


# --- views ------------------------------------------------------------------------------------


def identity(text: str, rng: random.Random) -> str:
    """The text unchanged (SimCSE: the second view differs by the tower's dropout only)."""
    return text


def word_deletion(text: str, rng: random.Random, ratio: float = 0.1) -> str:
    """Delete ``round(ratio * n)`` tokens chosen at random; the rest keep their order.

    Raises:
        ValueError: ``ratio`` outside [0, 1].
    """
    _check("word_deletion", ratio=ratio)
    tokens = text.split()
    k = _count(ratio, len(tokens))
    if not tokens or k == 0:
        return _join(tokens, text)
    dropped = set(rng.sample(range(len(tokens)), k))
    return " ".join(t for i, t in enumerate(tokens) if i not in dropped)


def span_deletion(
    text: str, rng: random.Random, ratio: float = 0.1, max_span: int = 5,
    mask_token: str | None = None,
) -> str:
    """Delete (or mask) ``round(ratio * n)`` tokens in spans of 1 to ``max_span`` tokens.

    Spans are drawn one after another at random places until enough tokens are covered; they
    may touch or overlap. With ``mask_token`` each covered token is replaced by it (span masking,
    the length is kept) instead of deleted.

    Raises:
        ValueError: ``ratio`` outside [0, 1], ``max_span`` below 1, or a ``mask_token`` that is
            empty or contains whitespace.
    """
    _check("span_deletion", ratio=ratio, max_span=max_span, mask_token=mask_token)
    tokens = text.split()
    k = _count(ratio, len(tokens))
    if not tokens or k == 0:
        return _join(tokens, text)
    covered: set[int] = set()
    while len(covered) < k:
        # A span adds at most its length, so the total never passes k.
        length = rng.randint(1, min(max_span, k - len(covered)))
        start = rng.randrange(len(tokens) - length + 1)
        covered.update(range(start, start + length))
    if mask_token is not None:
        return " ".join(mask_token if i in covered else t for i, t in enumerate(tokens))
    return " ".join(t for i, t in enumerate(tokens) if i not in covered)


def token_cutoff(text: str, rng: random.Random, ratio: float = 0.1) -> str:
    """Delete one contiguous span of ``round(ratio * n)`` tokens at a random place (ConSERT).

    Raises:
        ValueError: ``ratio`` outside [0, 1].
    """
    _check("token_cutoff", ratio=ratio)
    tokens = text.split()
    k = _count(ratio, len(tokens))
    if not tokens or k == 0:
        return _join(tokens, text)
    start = rng.randrange(len(tokens) - k + 1)
    return " ".join(tokens[:start] + tokens[start + k :])


def span_swap(text: str, rng: random.Random, ratio: float = 0.2) -> str:
    """Swap two non-overlapping spans of ``max(1, round(ratio * n))`` tokens each (CLEAR
    reordering); the span length shrinks to ``n // 2`` when two would not fit.

    Raises:
        ValueError: ``ratio`` outside [0, 1].
    """
    _check("span_swap", ratio=ratio)
    tokens = text.split()
    n = len(tokens)
    if n < 2 or ratio == 0:
        return _join(tokens, text)
    length = min(max(1, _round(ratio * n)), n // 2)
    first = rng.randrange(n - 2 * length + 1)
    second = rng.randrange(first + length, n - length + 1)
    a, b = tokens[first : first + length], tokens[second : second + length]
    return " ".join(tokens[:first] + b + tokens[first + length : second] + a
                    + tokens[second + length :])


def word_shuffle(text: str, rng: random.Random, ratio: float = 1.0) -> str:
    """Shuffle ``round(ratio * n)`` tokens chosen at random among their own positions; the other
    tokens stay where they are (``ratio=1``: shuffle the whole text).

    Raises:
        ValueError: ``ratio`` outside [0, 1].
    """
    _check("word_shuffle", ratio=ratio)
    tokens = text.split()
    n = len(tokens)
    k = min(_round(ratio * n), n)
    if k < 2:
        return _join(tokens, text)
    positions = sorted(rng.sample(range(n), k))
    moved = [tokens[i] for i in positions]
    rng.shuffle(moved)
    for position, token in zip(positions, moved, strict=True):
        tokens[position] = token
    return " ".join(tokens)


def word_repetition(text: str, rng: random.Random, dup_rate: float = 0.32) -> str:
    """Repeat a random subset of words in place: ``w`` becomes ``w w`` (ESimCSE).

    As in ESimCSE, the number of repeated words is drawn uniformly from
    ``[0, max(2, int(dup_rate * n))]`` (at most ``n``); 0.32 is the paper's best ``dup_rate``.

    Raises:
        ValueError: ``dup_rate`` outside [0, 1].
    """
    _check("word_repetition", dup_rate=dup_rate)
    tokens = text.split()
    if not tokens:
        return text
    k = min(rng.randint(0, max(2, int(dup_rate * len(tokens)))), len(tokens))
    repeated = set(rng.sample(range(len(tokens)), k))
    return " ".join(t for i, t in enumerate(tokens) for _ in range(2 if i in repeated else 1))


# Explicit registry: name -> view function.
VIEWS: dict[str, Callable[..., str]] = {
    "identity": identity,
    "word_deletion": word_deletion,
    "span_deletion": span_deletion,
    "token_cutoff": token_cutoff,
    "span_swap": span_swap,
    "word_shuffle": word_shuffle,
    "word_repetition": word_repetition,
}


def build_views(configs: Sequence[dict[str, Any]]) -> list[View]:
    """A config's ``views: [{name: word_deletion, ratio: 0.1}, …]`` -> view functions.

    Raises:
        ValueError: an unknown view or parameter (the message names it).
    """
    views = []
    for config in configs:
        params = {k: v for k, v in config.items() if k != "name"}
        views.append(make_view(str(config.get("name")), **params))
    return views


def make_view(name: str, **params: Any) -> View:
    """The view ``name`` with ``params`` bound: ``view(text, rng) -> str``.

    Raises:
        ValueError: an unknown view, an unknown parameter for it, or a bad parameter value,
            naming the view and the parameter.
    """
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; choose from {', '.join(sorted(VIEWS))}")
    function = VIEWS[name]
    accepted = [p for p in inspect.signature(function).parameters if p not in ("text", "rng")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"view {name}: unknown parameter(s) {', '.join(unknown)} "
                         f"(accepted: {', '.join(accepted) or 'none'})")
    _check(name, **params)
    return functools.partial(function, **params)


# --- helpers ----------------------------------------------------------------------------------


def _check(view: str, **params: Any) -> None:
    for key, value in params.items():
        match key:
            case "ratio" | "dup_rate":
                if isinstance(value, bool) or not isinstance(value, int | float) \
                        or not 0.0 <= value <= 1.0:
                    raise ValueError(f"view {view}: {key} must be a number in [0, 1], "
                                     f"got {value!r}")
            case "max_span":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"view {view}: max_span must be an integer >= 1, "
                                     f"got {value!r}")
            case "mask_token":
                if value is not None and (not isinstance(value, str) or value.split() != [value]):
                    raise ValueError(f"view {view}: mask_token must be one non-empty token "
                                     f"without whitespace, or None, got {value!r}")


def _round(x: float) -> int:
    """Round half up (``round`` rounds half to even: 0.5 -> 0)."""
    return math.floor(x + 0.5 + 1e-9)  # 1e-9: 0.7 * 5 is 3.4999999999999996


def _count(ratio: float, n: int) -> int:
    """How many of ``n`` tokens a ``ratio`` removes: ``round(ratio * n)``, leaving at least one."""
    return min(_round(ratio * n), max(n - 1, 0))


def _join(tokens: list[str], text: str) -> str:
    """The unchanged view: whitespace-normalised, or ``text`` itself when it has no tokens."""
    return " ".join(tokens) if tokens else text
