"""NT-Xent (SimCLR, arXiv:2002.05709) and its generalisations to V ≥ 2 views of each item.

Every item of the batch is seen through V views, ``(B, V, D)``. Three ways to contrast them:

- ``"multi_positive"``: each of the ``B·V`` embeddings is an anchor against all ``B·V − 1`` others;
  the ``V − 1`` other views of its item are its positives, and the loss averages their
  log-probabilities (the SupCon L_out form, arXiv:2004.11362, with "same item" as the label).
- ``"pairwise"``: the full graph of CMC (arXiv:1906.05849): the mean over all ordered view pairs
  of the two-view NT-Xent between those two views only.
- ``"poly_view"``: the geometric aggregation of Poly-View Contrastive Learning (Shidani et al.,
  ICLR 2024, arXiv:2403.05490) as a public re-implementation computes it: the pairwise InfoNCE
  ratios of one anchor are computed against the other items' views only and averaged in log
  space over its positives.

With V = 2 all three are SimCLR's NT-Xent.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contralign.objectives.inputs import Embedded, own_columns, take_rows
from contralign.objectives.temperature import Temperature, check_temperature

Aggregation = Literal["pairwise", "multi_positive", "poly_view"]


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"nt_xent: {name} must be one of {', '.join(allowed)}, got {value!r}")


def _pairwise(views: Tensor, scale: Tensor | float, rows: slice | None) -> Tensor:
    """Mean over ordered view pairs (α ≠ β) of the α → β NT-Xent direction, for the anchor
    items ``rows`` (R of them; default all) against every item."""
    batch, num_views, _ = views.shape
    # (V, V, R, B): view α of anchor item b · view β of item c
    sims = scale * torch.einsum("bvd,cwd->vwbc", take_rows(views, rows), views)
    rows = slice(0, batch) if rows is None else rows
    own = own_columns(rows, batch, views.device)  # (R, B)
    same_view = torch.diagonal(sims, dim1=0, dim2=1).permute(2, 0, 1)  # (V, R, B): α against α
    same_view = same_view.masked_fill(own, float("-inf"))  # an anchor is not its own candidate
    # Row (α, β, i): candidates are view β of every item (target: item i) and view α of the others.
    logits = torch.cat([sims, same_view[:, None].expand(-1, num_views, -1, -1)], dim=-1)
    log_prob = torch.diagonal(logits.log_softmax(dim=-1)[..., rows], dim1=2, dim2=3)  # (V, V, R)
    off_diagonal = ~torch.eye(num_views, dtype=torch.bool, device=views.device)  # pairs α ≠ β
    return -log_prob[off_diagonal].mean()


def _multi_positive(sims: Tensor, positive: Tensor, own: Tensor, num_views: int) -> Tensor:
    """SupCon-style: mean log-probability of the V − 1 positives among all B·V − 1 candidates."""
    log_prob = sims.masked_fill(own, float("-inf")).log_softmax(dim=1)  # (R·V, N)
    return -torch.where(positive, log_prob, 0.0).sum(dim=1).div(num_views - 1).mean()


def _poly_view(sims: Tensor, positive: Tensor, same_item: Tensor, num_views: int) -> Tensor:
    """Poly-view (geometric): for anchor a and positive p, the candidates are p and every other
    item's views; the mean over the V − 1 positives of −log r."""
    anchors, candidates = sims.shape
    pos_sims = sims[positive].view(anchors, num_views - 1)  # (R·V, V-1) the anchor's positives
    if candidates > num_views:  # there are other items
        negative_lse = sims.masked_fill(same_item, float("-inf")).logsumexp(dim=1)  # (R·V,)
    else:  # one item: no negatives; a constant keeps an all -inf logsumexp out of the graph
        negative_lse = sims.new_full((anchors,), float("-inf"))
    log_prob = pos_sims - torch.logaddexp(pos_sims, negative_lse[:, None])  # (R·V, V-1)
    return -log_prob.mean()  # the log of the geometric mean of the ratios, mean over anchors


def nt_xent(
    views: Tensor,
    *,
    temperature: float | Tensor = 0.5,
    aggregation: Aggregation = "multi_positive",
    normalize: bool = True,
    rows: slice | None = None,
) -> Tensor:
    """NT-Xent over ``V ≥ 2`` views of each item, in-batch negatives from the other items.

    Write ``s(a, c) = cos(a, c) / τ`` and let item i have views ``z_{i,1..V}``.

    - ``"multi_positive"`` (default): anchor ``a = z_{i,α}``, candidates ``A(a)`` = all ``B·V − 1``
      other embeddings, positives ``P(a)`` = the ``V − 1`` other views of item i;
      ``ℓ_a = −1/(V−1) Σ_{p∈P(a)} log( e^{s(a,p)} / Σ_{c∈A(a)} e^{s(a,c)} )``; loss = mean over
      all ``B·V`` anchors.
    - ``"pairwise"`` (CMC full graph, arXiv:1906.05849): for each ordered pair of views
      ``(α, β)``, ``α ≠ β``, the one-direction two-view NT-Xent whose candidates are **only the
      embeddings of views α and β**: anchor ``z_{i,α}``, target ``z_{i,β}``, candidates
      ``{z_{j,β}: all j} ∪ {z_{j,α}: j ≠ i}`` (``2B − 1``); loss = mean over the ``V(V−1)`` ordered
      pairs and the B anchors. Averaging the two orders of a pair gives SimCLR's symmetric loss,
      so with V = 2 this is exactly NT-Xent. (CMC itself contrasts against view β only, with a
      memory bank; here each pair keeps SimCLR's same-view negatives.)
    - ``"poly_view"`` (Poly-View Contrastive Learning, arXiv:2403.05490, its geometric
      aggregation): for anchor ``a = z_{i,α}`` and each positive ``p = z_{i,β}`` the ratio
      ``r_{αβ} = e^{s(a, p)} / (e^{s(a, p)} + Σ_{j≠i} Σ_γ e^{s(a, z_{j,γ})})`` uses every view of
      every other item as a negative but never the anchor's other positives;
      ``ℓ = −1/(V−1) Σ_β log r_{αβ}``; loss = mean over all ``B·V`` anchors. **Checked against a
      public re-implementation, not against the paper's equations**, which could not be read
      (only the abstract and the OpenReview reviews; no code from the authors was found):
      ``PVCLoss(method="geometric")`` in pakoromilas/Multi-View-CL (``models/losses.py``; the
      code of arXiv:2507.06979, which runs PVC as a baseline), whose mask docstring a second
      repository shares word for word, so both likely transcribe the paper's appendix. The
      arithmetic aggregation (Arithmetic PVC) is not offered: both repositories compute it as
      ``logsumexp_β(ℓ_{αβ}) − log B`` with ``ℓ`` the batch-mean cross-entropy (so a log-mean of
      ``1/r`` rather than of ``r``, minus the log of the batch size), which cannot be checked
      against the paper's equation here.

    Args:
        views: ``(B, V, D)`` embeddings, V ≥ 2.
        temperature: τ (a tensor for a learned one). SimCLR's default 0.5 (its CIFAR-10 setting and
            lightly's default; its ImageNet runs use 0.1).
        aggregation: ``"multi_positive"``, ``"pairwise"`` or ``"poly_view"``.
        normalize: compare by cosine (L2-normalise first) rather than by dot product.
        rows: the items ``R`` of one process of a multi-process run
            (``contralign.training.distributed``): only the anchors of their views (all V of
            them) against every embedding, the mean over those anchors; ``V·|R| × V·B`` logits
            are held. The ``|R|/B``-weighted sum over processes is the whole batch's loss.

    Returns:
        The scalar loss.

    Raises:
        ValueError: ``views`` not ``(B, V, D)`` with V ≥ 2, or an unknown option value.
    """
    _check_choice("aggregation", aggregation, get_args(Aggregation))
    if views.dim() != 3 or views.shape[1] < 2 or views.shape[0] < 1:
        raise ValueError(f"nt_xent: views {tuple(views.shape)} must be (B, V, D) with V >= 2")
    if normalize:
        views = F.normalize(views, dim=-1)
    scale = 1.0 / temperature
    batch, num_views, dim = views.shape
    if aggregation == "pairwise":
        return _pairwise(views, scale, rows)
    flat = views.reshape(batch * num_views, dim)  # (N, D), row b·V + v
    start, stop, _ = (slice(0, batch) if rows is None else rows).indices(batch)
    anchors = slice(start * num_views, stop * num_views)  # the views of items R: rows of flat
    sims = scale * take_rows(flat, None if rows is None else anchors) @ flat.T  # (R·V, N)
    item = torch.arange(batch, device=views.device).repeat_interleave(num_views)  # (N,)
    same_item = item[anchors, None] == item[None, :]  # (R·V, N)
    own = own_columns(anchors, len(item), views.device)  # (R·V, N): the anchor itself
    positive = same_item & ~own
    if aggregation == "multi_positive":
        return _multi_positive(sims, positive, own, num_views)
    return _poly_view(sims, positive, same_item, num_views)


def views_of(batch: Embedded, objective: str) -> Tensor:
    """``(B, V, D)``: ``batch.views``, else ``query`` and ``key`` stacked as V = 2.

    Raises:
        ValueError: neither ``views`` nor ``key`` in the batch.
    """
    if batch.views is not None:
        return batch.views
    if batch.key is None:
        raise ValueError(f"{objective}: needs views, or query and key, in the batch "
                         "(map the data's columns to those roles)")
    return torch.stack([batch.query, batch.key], dim=1)  # (B, 2, D)


class NTXentLoss(nn.Module):
    """``nt_xent`` on ``batch.views`` ``(B, V, D)``, or on ``query``/``key`` as V = 2.

    Args:
        temperature: τ; SimCLR (arXiv:2002.05709) default 0.5.
        aggregation: ``"multi_positive"``, ``"pairwise"`` (CMC, arXiv:1906.05849) or
            ``"poly_view"`` (arXiv:2403.05490, geometric); see ``nt_xent``.

    Raises:
        ValueError: a temperature that is not positive and finite, or an unknown option value.
    """

    def __init__(
        self, temperature: Temperature = 0.5, aggregation: Aggregation = "multi_positive",
    ) -> None:
        super().__init__()
        check_temperature("nt_xent", temperature)
        _check_choice("aggregation", aggregation, get_args(Aggregation))
        self.temperature = temperature
        self.aggregation: Aggregation = aggregation

    def forward(self, batch: Embedded, rows: slice | None = None) -> Tensor:
        """The loss; with ``rows``, that of those items' anchors (``nt_xent``)."""
        return nt_xent(views_of(batch, "nt_xent"), temperature=self.temperature,
                       aggregation=self.aggregation, rows=rows)
