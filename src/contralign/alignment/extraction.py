"""Alignment extraction: a similarity matrix between two token sequences -> aligned pairs.

Each method takes an ``(m, n)`` matrix (rows: source tokens, columns: target tokens) and returns
an ``(m, n)`` boolean matrix of links. The SimAlign methods (Jalili Sabet et al. 2020,
arXiv:2004.08728) read a similarity; the aligner hands them ``(cos + 1) / 2`` (in ``[0, 1]``, as
SimAlign does, so that IterMax's zeroed entries rank below every real one). awesome-align's
extraction (Dou & Neubig 2021, arXiv:2101.08231) reads raw dot products of hidden states, which
its softmaxes turn into alignment probabilities.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Method = Literal["argmax", "itermax", "match", "softmax"]
METHODS: tuple[str, ...] = get_args(Method)

# SimAlign's IterMax settings: at most 2 rounds of argmax, and a pair whose source or target
# word is already aligned competes with its similarity scaled by 0.9.
ITERMAX_ROUNDS = 2
ITERMAX_ALPHA = 0.9
# awesome-align's threshold on both softmax probabilities.
SOFTMAX_THRESHOLD = 1e-3


def argmax_links(sim: np.ndarray) -> np.ndarray:
    """SimAlign's ArgMax: ``(i, j)`` is linked when ``j`` is row ``i``'s best column and ``i``
    is column ``j``'s best row (the intersection of the forward and backward argmax).

    Args:
        sim: ``(m, n)`` similarities.

    Returns:
        ``(m, n)`` bool.
    """
    m, n = sim.shape
    links = np.zeros((m, n), dtype=bool)
    if m == 0 or n == 0:
        return links
    forward = np.zeros((m, n), dtype=bool)
    forward[np.arange(m), sim.argmax(axis=1)] = True  # each source token's best target
    links[sim.argmax(axis=0), np.arange(n)] = True  # each target token's best source
    return links & forward


def itermax_links(sim: np.ndarray, rounds: int = ITERMAX_ROUNDS,
                  alpha: float = ITERMAX_ALPHA) -> np.ndarray:
    """SimAlign's IterMax: ArgMax, then further rounds of ArgMax that let tokens left unaligned
    find a partner.

    Each later round scores pair ``(i, j)`` as ``sim[i, j]`` when neither token is aligned yet,
    ``alpha * sim[i, j]`` when exactly one of them is, and leaves out pairs whose two tokens
    are both aligned; the mutual argmaxes of that matrix among the pairs not left out are added.
    It stops after ``rounds`` rounds in all, when a round adds nothing, or when every source or
    every target token is aligned. Matrices with 2 rows or columns or fewer get ArgMax alone
    (as in SimAlign).

    Args:
        sim: ``(m, n)`` similarities in ``[0, 1]`` (a left-out pair scores 0).
        rounds: the number of argmax rounds, the first included (SimAlign: 2).
        alpha: the factor for pairs with one token aligned (SimAlign: 0.9).

    Returns:
        ``(m, n)`` bool.
    """
    links = argmax_links(sim)
    m, n = sim.shape
    if min(m, n) <= 2:
        return links
    for _ in range(rounds - 1):
        row_free = links.sum(axis=1) == 0  # (m,) source tokens without a link
        col_free = links.sum(axis=0) == 0  # (n,) target tokens without a link
        if not row_free.any() or not col_free.any():
            break
        free = row_free[:, None].astype(float) + col_free[None, :]  # (m, n): 0, 1 or 2
        weight = np.minimum(alpha * free, 1.0)  # both free: 1; one free: alpha; none: 0
        added = argmax_links(sim * weight) & (free > 0)
        if not (added & ~links).any():
            break
        links |= added
    return links


def match_links(sim: np.ndarray) -> np.ndarray:
    """SimAlign's Match: the one-to-one alignment of maximal total similarity (Hungarian
    method, ``scipy.optimize.linear_sum_assignment``); ``min(m, n)`` links.

    Args:
        sim: ``(m, n)`` similarities.

    Returns:
        ``(m, n)`` bool.
    """
    from scipy.optimize import linear_sum_assignment

    links = np.zeros(sim.shape, dtype=bool)
    if links.size == 0:
        return links
    rows, cols = linear_sum_assignment(sim, maximize=True)
    links[rows, cols] = True
    return links


def softmax_links(scores: np.ndarray, threshold: float = SOFTMAX_THRESHOLD) -> np.ndarray:
    """awesome-align's extraction: softmax each row (source -> target probabilities) and each
    column (target -> source); link ``(i, j)`` when both probabilities exceed ``threshold``.

    Args:
        scores: ``(m, n)`` dot products of the two sides' hidden states.
        threshold: awesome-align's ``softmax_threshold`` (1e-3).

    Returns:
        ``(m, n)`` bool.
    """
    if scores.size == 0:
        return np.zeros(scores.shape, dtype=bool)
    scores = scores.astype(np.float64)
    forward = _softmax(scores, axis=1)  # (m, n): each row sums to 1
    backward = _softmax(scores, axis=0)  # (m, n): each column sums to 1
    return (forward > threshold) & (backward > threshold)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def extract(scores: np.ndarray, method: Method) -> np.ndarray:
    """``method``'s links on ``scores`` (similarities in ``[0, 1]`` for the SimAlign methods,
    dot products for ``softmax``).

    Raises:
        ValueError: an unknown method.
    """
    match method:
        case "argmax":
            return argmax_links(scores)
        case "itermax":
            return itermax_links(scores)
        case "match":
            return match_links(scores)
        case "softmax":
            return softmax_links(scores)
    raise ValueError(f"alignment method {method!r}: expected one of {', '.join(METHODS)}")
