"""Diagnostics of an embedding matrix: effective rank and hubness.

Effective rank: Roy & Vetterli 2007, "The effective rank: a measure of effective
dimensionality" (EUSIPCO), ``exp(H(p))`` with ``p_i = σ_i / Σ_j σ_j`` the L1-normalised singular
values and ``H`` the Shannon entropy (natural log). We take it of the **uncentred** matrix of
L2-normalised rows, as RankMe does for embeddings (Garrido et al. 2023, arXiv:2210.02885): the
mean direction counts as one of the directions the space uses, so a space that collapsed onto
its mean reads as rank ~1 rather than as the rank of its residual noise. Values lie in
``[1, min(N, D)]``.

Hubness: Radovanović, Nanopoulos & Ivanović 2010, "Hubs in space: popular nearest neighbors in
high-dimensional data" (JMLR 11), the skewness of the k-occurrence distribution ``N_k``: how
often each item is among the ``k`` nearest neighbours (here by cosine, ``k = 10``) of the other
items, excluding itself. Ties are broken by the lower row number, as in retrieval. Skewness is
the biased sample skewness ``m3 / m2^1.5`` (``scipy.stats.skew``'s default). Positive values mean
a few items (hubs) are everybody's neighbours.

Both are numpy float64 and work in row blocks, so memory stays ``O(block x N)``.
"""

from __future__ import annotations

import numpy as np

from contralign.index.exact import l2_normalize

# Similarity entries held at once: (row block) x (N) float64.
MAX_BLOCK_ELEMENTS = 1 << 22
HUBNESS_K = 10


def effective_rank(x: np.ndarray) -> float:
    """``exp(-Σ p_i log p_i)``, ``p = σ / Σσ``, of the uncentred ``(N, D)`` matrix of
    L2-normalised rows (Roy & Vetterli 2007; RankMe, arXiv:2210.02885).

    Args:
        x: ``(N, D)`` embeddings, L2-normalised here (an all-zero row stays zero).

    Returns:
        A value in ``[1, min(N, D)]``.

    Raises:
        ValueError: not a 2-d array with at least one row, or every row is zero.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"effective_rank needs an (N, D) array with N >= 1 (got {x.shape})")
    singular = np.linalg.svd(l2_normalize(x), compute_uv=False)  # (min(N, D),)
    total = singular.sum()
    if total <= 0:
        raise ValueError("effective_rank: every row is zero")
    p = singular[singular > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def k_occurrence(
    x: np.ndarray, k: int = HUBNESS_K, max_block_elements: int = MAX_BLOCK_ELEMENTS
) -> np.ndarray:
    """``N_k``: for each row, how many other rows have it among their ``k`` nearest neighbours
    by cosine similarity (a row is never its own neighbour; ties go to the lower row number).

    Args:
        x: ``(N, D)`` embeddings, L2-normalised here.
        k: the neighbours per row; ``min(k, N - 1)`` are taken.
        max_block_elements: bound on the ``(block, N)`` similarity matrix held at once.

    Returns:
        ``(N,)`` int64 counts summing to ``N * min(k, N - 1)``.

    Raises:
        ValueError: fewer than 2 rows, or ``k < 1``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"k_occurrence needs an (N, D) array with N >= 2 (got {x.shape})")
    if k < 1:
        raise ValueError(f"k_occurrence: k must be at least 1, got {k}")
    x = l2_normalize(x)
    n = len(x)
    k = min(k, n - 1)
    counts = np.zeros(n, dtype=np.int64)
    rows = max(1, max_block_elements // n)
    for start in range(0, n, rows):
        sims = x[start : start + rows] @ x.T  # (B, N)
        block = np.arange(len(sims))
        sims[block, start + block] = -np.inf  # never one's own neighbour
        # The k-th largest value of each row; every larger value is taken, and of those equal
        # to it, the lowest row numbers until k are taken (the retrieval tie rule).
        kth = np.partition(sims, n - k, axis=1)[:, n - k]  # (B,)
        greater = sims > kth[:, None]  # (B, N)
        equal = sims == kth[:, None]  # (B, N)
        room = k - greater.sum(axis=1)  # (B,) equal values still to take
        taken = greater | (equal & (np.cumsum(equal, axis=1) <= room[:, None]))
        counts += taken.sum(axis=0)
    return counts


def skewness(values: np.ndarray) -> float:
    """The biased sample skewness ``m3 / m2^1.5`` (``scipy.stats.skew(values)``); 0 for a
    constant sample (no item is more popular than another), where scipy gives NaN.

    Raises:
        ValueError: an empty sample.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("skewness of an empty sample")
    centred = values - values.mean()
    m2 = np.mean(centred**2)
    # A constant sample: the float mean may leave ~1e-32 residues; call that zero variance.
    if m2 <= (np.finfo(np.float64).eps * max(1.0, float(np.abs(values).max()))) ** 2:
        return 0.0
    return float(np.mean(centred**3) / m2**1.5)


def hubness(x: np.ndarray, k: int = HUBNESS_K) -> float:
    """The skewness of the k-occurrence distribution ``N_k`` of ``x``'s rows among themselves
    (Radovanović et al. 2010), cosine neighbours, self excluded.

    Args:
        x: ``(N, D)`` embeddings.
        k: the neighbours per row (the paper's usual 10); ``min(k, N - 1)`` are taken.

    Returns:
        The skewness; 0 when every row is as popular as every other.

    Raises:
        ValueError: fewer than 2 rows, or ``k < 1``.
    """
    return skewness(k_occurrence(x, k))
