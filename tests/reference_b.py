"""Naive references for the debiased, hard-negative, decoupled, geometry, CWCL, 1-to-K and ConR
objectives, written from the papers' formulas with explicit loops over float64 scalars.

Slow on purpose: no matrix products, no masks, no log-softmax. Autograd still flows, so the
gradients of the fast code can be compared against these.
"""

from __future__ import annotations

import math

import torch
from reference import naive_dot, naive_similarity
from torch import Tensor

ZERO = torch.zeros((), dtype=torch.float64)


def _unit(v: Tensor) -> Tensor:
    return v.double() / torch.sqrt(naive_dot(v, v))


def naive_anchors(
    query: Tensor, key: Tensor, negatives: Tensor | None, candidates: str, symmetric: bool
) -> list[tuple[Tensor, Tensor, list[Tensor]]]:
    """(anchor, positive, negatives) for each anchor row: the queries, then the keys.

    ``both_views``: every other query and every other key; ``other_view``: every other item of
    the other view. Hard negatives (flattened row-major) are extra negatives of query rows only.
    """
    rows = query.shape[0]
    hard = [] if negatives is None else [negatives[b, k] for b in range(negatives.shape[0])
                                         for k in range(negatives.shape[1])]
    anchors = []
    for i in range(rows):
        others = [key[j] for j in range(rows) if j != i]
        if candidates == "both_views":
            others = [query[j] for j in range(rows) if j != i] + others
        anchors.append((query[i], key[i], others + hard))
    if symmetric:
        for i in range(rows):
            others = [query[j] for j in range(rows) if j != i]
            if candidates == "both_views":
                others = [key[j] for j in range(rows) if j != i] + others
            anchors.append((key[i], query[i], others))
    return anchors


def naive_debiased(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    beta: float | None = None,
    candidates: str = "both_views",
    symmetric: bool = True,
) -> Tensor:
    """Chuang et al. 2020 (eq. 5, clamped), or Robinson et al. 2021 when ``beta`` is given.

    Per anchor: pos = e^{cos⁺/t}, neg_j = e^{cos_j/t}, N negatives;
    debiased: Ng = (−τ⁺·N·pos + Σ neg_j) / (1 − τ⁺);
    hard: imp_j = e^{β·cos_j/t}, Ng = (−τ⁺·N·pos + Σ imp_j·neg_j / mean_j imp_j) / (1 − τ⁺);
    Ng clamped below at N·e^{−1/t}; loss = −log(pos / (pos + Ng)), mean over anchors.
    """
    total, anchors = ZERO, naive_anchors(query, key, negatives, candidates, symmetric)
    for anchor, positive, others in anchors:
        pos = torch.exp(naive_similarity(anchor, positive, True) / temperature)
        count = len(others)
        weighted, imp_sum = ZERO, ZERO
        for other in others:
            neg = torch.exp(naive_similarity(anchor, other, True) / temperature)
            imp = torch.ones((), dtype=torch.float64) if beta is None else neg ** beta
            weighted, imp_sum = weighted + imp * neg, imp_sum + imp
        mass = weighted / (imp_sum / count) if count else ZERO
        ng = (-tau_plus * count * pos + mass) / (1 - tau_plus)
        ng = torch.clamp(ng, min=count * math.exp(-1 / temperature))
        total = total - torch.log(pos / (pos + ng))
    return total / len(anchors)


def naive_decoupled(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float = 0.1,
    weight_sigma: float | None = None,
    candidates: str = "both_views",
    symmetric: bool = True,
) -> Tensor:
    """Yeh et al. 2022, eq. 6: −w_i·cos⁺/t + log Σ_neg e^{cos/t}, mean over anchors.

    DCLW: w_i = 2 − exp(cos(q_i, k_i)/σ) / mean_j exp(cos(q_j, k_j)/σ), without gradient.
    """
    rows = query.shape[0]
    weights = [1.0] * rows
    if weight_sigma is not None:
        cosines = [math.exp(float(naive_similarity(query[i], key[i], True).detach()) / weight_sigma)
                   for i in range(rows)]
        weights = [2 - c / (sum(cosines) / rows) for c in cosines]
    total, anchors = ZERO, naive_anchors(query, key, negatives, candidates, symmetric)
    for index, (anchor, positive, others) in enumerate(anchors):
        denominator = ZERO
        for other in others:
            denominator = denominator + torch.exp(naive_similarity(anchor, other, True)
                                                  / temperature)
        positive_logit = naive_similarity(anchor, positive, True) / temperature
        total = total - weights[index % rows] * positive_logit + torch.log(denominator)
    return total / len(anchors)


def naive_alignment(x: Tensor, y: Tensor, alpha: float = 2.0, normalize: bool = True) -> Tensor:
    """Wang & Isola 2020, eq. 2: mean over i of ‖x_i − y_i‖^α."""
    total = ZERO
    for i in range(x.shape[0]):
        a, b = (_unit(x[i]), _unit(y[i])) if normalize else (x[i].double(), y[i].double())
        squared = ZERO
        for d in range(a.shape[0]):
            squared = squared + (a[d] - b[d]) ** 2
        total = total + squared ** (alpha / 2)
    return total / x.shape[0]


def naive_uniformity(x: Tensor, t: float = 2.0, normalize: bool = True) -> Tensor:
    """Wang & Isola 2020, eq. 4: log of the mean over pairs i < j of e^{−t‖x_i − x_j‖²}."""
    points = [_unit(x[i]) if normalize else x[i].double() for i in range(x.shape[0])]
    total, pairs = ZERO, 0
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            squared = ZERO
            for d in range(points[i].shape[0]):
                squared = squared + (points[i][d] - points[j][d]) ** 2
            total, pairs = total + torch.exp(-t * squared), pairs + 1
    return torch.log(total / pairs)


def naive_cwcl(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float = 0.07,
    weights_from: str = "key",
    symmetric: bool = True,
) -> Tensor:
    """Srinivasa et al. 2023, eq. 3: targets w_ij = (1 + cos(u_i, u_j))/2 from the pretrained side
    (no gradient), −(1/B) Σ_i (1/Σ_j w_ij) Σ_j w_ij log(e^{s_ij} / Σ_k e^{s_ik}), both ways."""
    rows = query.shape[0]
    source = (key if weights_from == "key" else query).detach()
    w = [[(1 + naive_similarity(source[i], source[j], True)) / 2 for j in range(rows)]
         for i in range(rows)]

    def direction(anchors: Tensor, candidates: Tensor) -> Tensor:
        total = ZERO
        for i in range(rows):
            logits = [naive_similarity(anchors[i], candidates[j], True) / temperature
                      for j in range(rows)]
            denominator = ZERO
            for logit in logits:
                denominator = denominator + torch.exp(logit)
            row, weight_sum = ZERO, ZERO
            for j in range(rows):
                row = row - w[i][j] * torch.log(torch.exp(logits[j]) / denominator)
                weight_sum = weight_sum + w[i][j]
            total = total + row / weight_sum
        return total / rows

    forward = direction(query, key)
    return (forward + direction(key, query)) / 2 if symmetric else forward


def naive_one_to_k(
    query: Tensor, views: Tensor, *, temperature: float = 0.07, symmetric: bool = True
) -> Tensor:
    """Nie et al. 2024, transcribed from the authors' released code rather than from our reading:
    BUAADreamer/CCRK, ``models/xvlm.py``, ``XVLMBase.get_unialign_contrastive_loss`` (the
    ``idx is None`` branch, one process, default ``need_divm = 0``), step by step with loops.

    The authors' text features are the K captions of each image laid out image by image (their
    ``collate_fn`` concatenates each item's stacked captions), so text ``t`` belongs to image
    ``t // K``; ``logits = image_feat @ text_feat.t() / temp`` on L2-normalised features;
    ``labels_i2t[i][K·i : K·i + K] = 1``, ``labels_t2i = labels_i2t.t()``;
    ``loss_i2t = −Σ_t log_softmax(logits[i])[t] · labels_i2t[i][t]``, mean over images;
    ``loss_t2i`` the same on ``logits.t()`` with ``labels_t2i``, mean over texts;
    ``res_loss = (loss_i2t + loss_t2i) / 2``, then ``res_loss / tsz`` with ``tsz = K``.

    ``symmetric=False`` (ours; the authors' code has no one-direction form): ``loss_i2t / K``.
    """
    images, k = views.shape[:2]
    texts = [views[i, m] for i in range(images) for m in range(k)]  # text i·K + m
    tsz = len(texts) // images

    logits = [[naive_similarity(query[i], texts[t], True) / temperature
               for t in range(len(texts))] for i in range(images)]
    labels_i2t = [[0.0] * len(texts) for _ in range(images)]
    for i in range(images):
        for t in range(tsz * i, tsz * i + tsz):
            labels_i2t[i][t] = 1.0
    labels_t2i = [[labels_i2t[i][t] for i in range(images)] for t in range(len(texts))]
    logits_t = [[logits[i][t] for i in range(images)] for t in range(len(texts))]

    def log_softmax(row: list[Tensor]) -> list[Tensor]:
        denominator = ZERO
        for value in row:
            denominator = denominator + torch.exp(value)
        return [torch.log(torch.exp(value) / denominator) for value in row]

    def soft_target_loss(rows: list[list[Tensor]], labels: list[list[float]]) -> Tensor:
        total = ZERO
        for row, label in zip(rows, labels, strict=True):
            row_sum = ZERO
            for log_p, weight in zip(log_softmax(row), label, strict=True):
                row_sum = row_sum + log_p * weight
            total = total - row_sum
        return total / len(rows)  # .mean() over the rows

    loss_i2t = soft_target_loss(logits, labels_i2t)
    if not symmetric:
        return loss_i2t / tsz
    loss_t2i = soft_target_loss(logits_t, labels_t2i)
    res_loss = (loss_i2t + loss_t2i) / 2
    return res_loss / tsz


def naive_conr(
    query: Tensor,
    scores: Tensor,
    *,
    key: Tensor | None = None,
    predictions: Tensor | None = None,
    push_weights: Tensor | None = None,
    threshold: float = 1.0,
    temperature: float = 0.07,
    push_rate: float = 0.01,
) -> Tensor:
    """Keramati et al. 2024: per anchor j with a positive and a negative,
    L_j = −(1/|P|) Σ_{i∈P} log(e^{s_ji} / (Σ_{p∈P} e^{s_jp} + Σ_{q∈N} η_j e^{e|y_j−y_q|} e^{s_jq}));
    L = Σ_j η_j L_j / R."""
    rows = query.shape[0]
    items = list(range(rows)) * (1 if key is None else 2)  # row r is a view of item items[r]
    features = [query[i] for i in range(rows)] + ([] if key is None else
                                                   [key[i] for i in range(rows)])
    y = [float(scores[i]) for i in items]
    eta = [1.0 if push_weights is None else float(push_weights[i]) for i in items]
    guess = None if predictions is None else [float(predictions[i]) for i in items]
    total = ZERO
    for j in range(len(features)):
        positives = [i for i in range(len(features)) if i != j and abs(y[i] - y[j]) <= threshold]
        negatives = [q for q in range(len(features)) if abs(y[q] - y[j]) > threshold
                     and (guess is None or abs(guess[q] - guess[j]) <= threshold)]
        if not positives or not negatives:
            continue

        def e(i: int, anchor: int = j) -> Tensor:
            return torch.exp(naive_similarity(features[anchor], features[i], True) / temperature)

        denominator = ZERO
        for p in positives:
            denominator = denominator + e(p)
        for q in negatives:
            denominator = denominator + eta[j] * math.exp(push_rate * abs(y[j] - y[q])) * e(q)
        row = ZERO
        for i in positives:
            row = row - torch.log(e(i) / denominator)
        total = total + eta[j] * row / len(positives)
    return total / len(features)
