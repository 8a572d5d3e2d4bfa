"""Naive word-alignment references, written from the papers' descriptions with explicit loops.

- ArgMax, IterMax, Match: Jalili Sabet et al. 2020 (SimAlign, arXiv:2004.08728), Sec. 2.3.
- softmax extraction: Dou & Neubig 2021 (awesome-align, arXiv:2101.08231), Sec. 2.1.
- the plain aligner: SimAlign's pipeline as its code runs it, one sentence pair at a time and one
  sentence per forward pass (no batching, no padding), each word tokenized on its own.

Slow on purpose: Python loops over matrix entries, no vectorised argmax or masking.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch


def naive_argmax(sim: np.ndarray) -> set[tuple[int, int]]:
    """Pairs ``(i, j)`` where ``j`` is the first best column of row ``i`` and ``i`` the first
    best row of column ``j``."""
    m, n = sim.shape
    best_col = [max(range(n), key=lambda j, i=i: (sim[i, j], -j)) for i in range(m)]
    best_row = [max(range(m), key=lambda i, j=j: (sim[i, j], -i)) for j in range(n)]
    return {(i, j) for i in range(m) for j in range(n) if best_col[i] == j and best_row[j] == i}


def naive_itermax(sim: np.ndarray, rounds: int = 2, alpha: float = 0.9) -> set[tuple[int, int]]:
    """ArgMax, then rounds where a pair with both words aligned is excluded, a pair with one
    aligned word is scored ``alpha * sim``, and the mutual argmaxes among the rest are added."""
    m, n = sim.shape
    links = naive_argmax(sim)
    if min(m, n) <= 2:
        return links
    for _ in range(rounds - 1):
        rows = {i for i, _ in links}
        cols = {j for _, j in links}
        if len(rows) == m or len(cols) == n:
            break
        scored = np.zeros((m, n))
        for i in range(m):
            for j in range(n):
                aligned = (i in rows) + (j in cols)
                scored[i, j] = {0: sim[i, j], 1: alpha * sim[i, j], 2: 0.0}[aligned]
        new = {(i, j) for i, j in naive_argmax(scored) if not (i in rows and j in cols)}
        if not new - links:
            break
        links |= new
    return links


def naive_match(sim: np.ndarray) -> set[tuple[int, int]]:
    """The one-to-one alignment of ``min(m, n)`` pairs with the largest total similarity, by
    trying every assignment."""
    m, n = sim.shape
    best, best_links = -math.inf, set()
    if m <= n:
        for cols in itertools.permutations(range(n), m):
            total = sum(sim[i, j] for i, j in enumerate(cols))
            if total > best:
                best, best_links = total, {(i, j) for i, j in enumerate(cols)}
    else:
        for rows in itertools.permutations(range(m), n):
            total = sum(sim[i, j] for j, i in enumerate(rows))
            if total > best:
                best, best_links = total, {(i, j) for j, i in enumerate(rows)}
    return best_links


def naive_softmax(scores: np.ndarray, threshold: float = 1e-3) -> set[tuple[int, int]]:
    """``(i, j)`` where both ``exp(s_ij) / Σ_j' exp(s_ij')`` and ``exp(s_ij) / Σ_i' exp(s_i'j)``
    exceed ``threshold``."""
    m, n = scores.shape
    links = set()
    for i in range(m):
        for j in range(n):
            forward = 1.0 / sum(math.exp(scores[i, k] - scores[i, j]) for k in range(n))
            backward = 1.0 / sum(math.exp(scores[k, j] - scores[i, j]) for k in range(m))
            if forward > threshold and backward > threshold:
                links.add((i, j))
    return links


def plain_sentence_vectors(model, tokenizer, words: list[str], layer: int
                           ) -> tuple[np.ndarray, list[int]]:
    """One sentence, as SimAlign embeds it: ``tokenizer.tokenize`` on each word, the pieces'
    ids between the special tokens, one forward pass; ``(n, H)`` vectors and each piece's word."""
    pieces = [tokenizer.tokenize(word) for word in words]
    word_of_piece = [w for w, word_pieces in enumerate(pieces) for _ in word_pieces]
    ids = tokenizer.convert_tokens_to_ids([p for word_pieces in pieces for p in word_pieces])
    input_ids = torch.tensor([[tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]])
    with torch.no_grad():
        hidden = model(input_ids=input_ids, output_hidden_states=True).hidden_states[layer]
    return hidden[0, 1:-1].double().numpy(), word_of_piece


def plain_align(model, tokenizer, source: list[str], target: list[str], layer: int, extract, *,
                level: str = "subword", center: bool = False) -> set[tuple[int, int]]:
    """One sentence pair: subword vectors of each side (minus the pair's mean subword vector
    when ``center``), each word's mean vector at the ``word`` level, ``(cos + 1) / 2`` (dot
    products for ``naive_softmax``), links mapped to words."""
    a, word_a = plain_sentence_vectors(model, tokenizer, source, layer)
    b, word_b = plain_sentence_vectors(model, tokenizer, target, layer)
    if len(a) == 0 or len(b) == 0:
        return set()
    if center:
        mean = np.concatenate([a, b]).mean(axis=0)
        a, b = a - mean, b - mean
    if level == "word":
        a, word_a = _word_means(a, word_a)
        b, word_b = _word_means(b, word_b)
    if extract is naive_softmax:
        scores = a @ b.T
    else:
        cos = np.array([[float(x @ y) / (np.linalg.norm(x) * np.linalg.norm(y)) for y in b]
                        for x in a])
        scores = (cos + 1.0) / 2.0
    return {(word_a[i], word_b[j]) for i, j in extract(scores)}


def _word_means(vectors: np.ndarray, words: list[int]) -> tuple[np.ndarray, list[int]]:
    kept = sorted(set(words))
    means = [np.mean([vectors[k] for k, w in enumerate(words) if w == word], axis=0)
             for word in kept]
    return np.array(means), kept
