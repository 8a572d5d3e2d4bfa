"""Objectives that score only some anchor rows (``rows``, split "rows" over processes): the
row-weighted sum of the shards' losses, as the processes of a torchrun run compute them, is the
whole batch's loss, in value and in every gradient, against the naive loops; and each rank's
largest tensor (the logits) shrinks as 1/N when processes are added."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from reference import naive_info_nce
from reference_a import naive_clip, naive_nt_xent, naive_sigmoid, naive_supcon
from reference_b import (
    naive_conr,
    naive_cwcl,
    naive_debiased,
    naive_decoupled,
    naive_one_to_k,
)
from torch import Tensor
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from contralign.objectives import OBJECTIVES, build_objective
from contralign.objectives.clip import clip_loss
from contralign.objectives.contrastive import info_nce
from contralign.objectives.cwcl import cwcl
from contralign.objectives.debiased import debiased_contrastive, hard_negative_contrastive
from contralign.objectives.decoupled import decoupled_contrastive
from contralign.objectives.inputs import Embedded
from contralign.objectives.multiview import nt_xent
from contralign.objectives.one_to_k import one_to_k_contrastive
from contralign.objectives.regression import conr
from contralign.objectives.sigmoid import sigmoid_loss
from contralign.objectives.supervised import supcon
from contralign.training.distributed import Shard

pytestmark = pytest.mark.usefixtures("one_thread")

B, D = 7, 5
# Uneven shards of the 7 rows, as shard_of cuts them over 2 and 3 processes.
COUNTS = [(4, 3), (3, 2, 2)]


def shards(counts: tuple[int, ...]) -> list[Shard]:
    return [Shard(r, counts) for r in range(len(counts))]


def leaves(*shapes: tuple[int, ...], seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_()
            for shape in shapes]


def split_sum(loss: Callable[[slice | None], Tensor], counts: tuple[int, ...]) -> Tensor:
    """``Σ_r (B_r / B) · loss(rows_r)``: the batch loss a multi-process run reports, whose
    gradient is the one its processes' summed embedding gradients make (``distributed``)."""
    return sum((shard.weight * loss(shard.rows) for shard in shards(counts)),
               torch.zeros((), dtype=torch.float64))


def assert_split_equals(loss: Callable[[slice | None], Tensor], naive: Tensor,
                        inputs: list[Tensor]) -> None:
    """Every split of the rows sums to the naive loss and its gradients; all rows at once is
    the plain loss (so the 1-process path is untouched)."""
    expected = torch.autograd.grad(naive, inputs, retain_graph=True)
    assert_close(loss(slice(0, B)), loss(None), rtol=0, atol=0)
    for counts in COUNTS:
        total = split_sum(loss, counts)
        assert_close(total, naive)
        for got, want in zip(torch.autograd.grad(total, inputs), expected, strict=True):
            assert_close(got, want)
    single = loss(slice(2, 3))  # one row alone is not the batch's loss: the test can fail
    assert not torch.isclose(single, naive)


# Ids with duplicates: positives 1 and 4 are the same text, so are anchors 0 and 6, and a hard
# negative repeats positive 2; masking them must use the whole batch's ids on every shard.
KEY_IDS, QUERY_IDS = torch.tensor([10, 11, 12, 13, 11, 15, 16]), torch.tensor([0, 1, 2, 3, 4, 5, 0])
NEGATIVE_IDS = torch.tensor([[20, 21], [22, 12], [24, 25], [26, 27], [28, 29], [30, 31], [32, 33]])


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_rows_with_duplicates_sum_to_the_batch_loss(symmetric: bool) -> None:
    query, key, negatives = leaves((B, D), (B, D), (B, 2, D))
    extra = None if symmetric else negatives  # symmetric takes no hard negatives here
    ids: dict[str, Any] = {"key_ids": KEY_IDS, "query_ids": QUERY_IDS,
                           "negative_ids": None if symmetric else NEGATIVE_IDS}

    def loss(rows: slice | None) -> Tensor:
        return info_nce(query, key, negatives=extra, temperature=0.2, symmetric=symmetric,
                        rows=rows, **ids)

    naive = naive_info_nce(query, key, extra, temperature=0.2, symmetric=symmetric, **ids)
    assert_split_equals(loss, naive, [query, key] if symmetric else [query, key, negatives])


def test_info_nce_rows_mask_only_their_rows() -> None:
    """The duplicate masks of a shard are its ``R × M`` rows, not the batch's ``B × M``: with
    40 rows (ids repeating) and a shard of 4, the largest tensor is the shard's float64 logits,
    4 × 40 × 8 = 1,280 bytes; a 40 × 40 boolean mask would be 1,600."""
    generator = torch.Generator().manual_seed(3)
    query, key = (torch.randn(40, 3, generator=generator, dtype=torch.float64).requires_grad_()
                  for _ in range(2))
    ids = torch.arange(40) % 30
    with LargestTensor() as mode:
        info_nce(query, key, key_ids=ids, query_ids=ids, symmetric=True,
                 rows=slice(8, 12)).backward()
    assert mode.largest == 4 * 40 * 8


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_clip_rows_sum_to_the_batch_loss(label_smoothing: float) -> None:
    query, key, scale = leaves((B, D), (B, D), ())
    scale_value = scale.detach().exp()
    exp_scale = scale.exp()  # a learned scale: its gradient is split over rows too

    def loss(rows: slice | None) -> Tensor:
        return clip_loss(query, key, logit_scale=exp_scale, label_smoothing=label_smoothing,
                         rows=rows)

    assert_split_equals(loss, naive_clip(query, key, scale_value, label_smoothing), [query, key])
    # The scale's gradient: the split sum against the plain loss.
    plain = torch.autograd.grad(loss(None), scale, retain_graph=True)[0]
    assert_close(torch.autograd.grad(split_sum(loss, (3, 2, 2)), scale)[0], plain)


def test_siglip_rows_sum_to_the_batch_loss() -> None:
    query, key, scale, bias = leaves((B, D), (B, D), (), ())

    def loss(rows: slice | None) -> Tensor:
        return sigmoid_loss(query, key, logit_scale=scale.exp(), logit_bias=bias, rows=rows)

    naive = naive_sigmoid(query, key, float(scale.detach().exp()), float(bias.detach()))
    assert_split_equals(loss, naive, [query, key])
    plain = torch.autograd.grad(loss(None), [scale, bias], retain_graph=True)
    for got, want in zip(torch.autograd.grad(split_sum(loss, (4, 3)), [scale, bias]), plain,
                         strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("aggregation", ["multi_positive", "pairwise", "poly_view"])
@pytest.mark.parametrize("num_views", [2, 3])
def test_nt_xent_rows_sum_to_the_batch_loss(aggregation: str, num_views: int) -> None:
    (views,) = leaves((B, num_views, D))

    def loss(rows: slice | None) -> Tensor:
        return nt_xent(views, temperature=0.3, aggregation=aggregation,  # type: ignore[arg-type]
                       rows=rows)

    assert_split_equals(loss, naive_nt_xent(views, 0.3, aggregation), [views])


LAYOUTS = [("both_views", True, False), ("other_view", False, False),
           ("both_views", True, True)]  # (candidates, symmetric, hard negatives)


@pytest.mark.parametrize(("candidates", "symmetric", "hard"), LAYOUTS)
@pytest.mark.parametrize("family", ["debiased", "hard_negative", "decoupled", "dclw"])
def test_debiased_family_rows_sum_to_the_batch_loss(family: str, candidates: str,
                                                    symmetric: bool, hard: bool) -> None:
    query, key, negatives = leaves((B, D), (B, D), (B, 2, D))
    extra = negatives if hard else None
    options: dict[str, Any] = {"candidates": candidates, "symmetric": symmetric}
    match family:
        case "debiased":
            fast: Callable[..., Tensor] = debiased_contrastive
            naive = naive_debiased(query, key, extra, **options)
        case "hard_negative":
            fast = hard_negative_contrastive
            naive = naive_debiased(query, key, extra, beta=1.0, **options)
        case _:
            if family == "dclw":
                options["weight_sigma"] = 0.5
            fast = decoupled_contrastive
            naive = naive_decoupled(query, key, extra, **options)

    def loss(rows: slice | None) -> Tensor:
        return fast(query, key, negatives=extra, rows=rows, **options)

    assert_split_equals(loss, naive, [query, key, *([negatives] if hard else [])])


@pytest.mark.parametrize("symmetric", [True, False])
def test_cwcl_rows_sum_to_the_batch_loss(symmetric: bool) -> None:
    query, key = leaves((B, D), (B, D))

    def loss(rows: slice | None) -> Tensor:
        return cwcl(query, key, temperature=0.2, symmetric=symmetric, rows=rows)

    assert_split_equals(loss, naive_cwcl(query, key, temperature=0.2, symmetric=symmetric),
                        [query, key])


@pytest.mark.parametrize("symmetric", [True, False])
def test_one_to_k_rows_sum_to_the_batch_loss(symmetric: bool) -> None:
    query, views = leaves((B, D), (B, 3, D))

    def loss(rows: slice | None) -> Tensor:
        return one_to_k_contrastive(query, views, temperature=0.2, symmetric=symmetric,
                                    rows=rows)

    naive = naive_one_to_k(query, views, temperature=0.2, symmetric=symmetric)
    assert_split_equals(loss, naive, [query, views])


# Labels of the B items: item 3 is alone in its class (an anchor without positive with 1 view).
LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 1])


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("num_views", [1, 2])
def test_supcon_rows_sum_to_the_batch_loss(variant: str, num_views: int) -> None:
    """The mean stays over the whole batch's anchors that have a positive, though the shards
    hold different numbers of them."""
    (views,) = leaves((B, num_views, D))

    def loss(rows: slice | None) -> Tensor:
        return supcon(views, LABELS, temperature=0.3, variant=variant,  # type: ignore[arg-type]
                      base_temperature=0.5, rows=rows)

    naive = naive_supcon(views, LABELS, 0.3, variant) * (0.3 / 0.5)
    assert_split_equals(loss, naive, [views])


def test_supcon_rows_without_any_positive_are_zero() -> None:
    """No positive in the batch, or none among a shard's anchors (only items 0 and 1 share a
    label): the shard's share is 0 and still backpropagates."""
    (views,) = leaves((B, 1, D))
    for labels in (torch.arange(B), torch.tensor([0, 0, 1, 2, 3, 4, 5])):
        loss = supcon(views, labels, rows=slice(2, 7))
        assert float(loss.detach()) == 0.0 and loss.requires_grad
        loss.backward()


@pytest.mark.parametrize("two_views", [False, True])
def test_conr_rows_sum_to_the_batch_loss(two_views: bool) -> None:
    query, key, push = leaves((B, D), (B, D), (B,))
    scores = torch.tensor([0.0, 0.5, 3.0, 3.2, 0.2, 6.0, 2.9], dtype=torch.float64)
    options: dict[str, Any] = {"key": key if two_views else None,
                               "push_weights": push.detach().abs() + 0.5,
                               "predictions": scores.flip(0), "threshold": 1.0,
                               "temperature": 0.2}

    def loss(rows: slice | None) -> Tensor:
        return conr(query, scores, rows=rows, **options)

    inputs = [query, key] if two_views else [query]
    assert_split_equals(loss, naive_conr(query, scores, **options), inputs)


def embedded_for(name: str, seed: int = 1, batch: int = B,
                 dim: int = D) -> tuple[Embedded, list[Tensor]]:
    """A float64 batch holding what objective ``name`` reads (ids with duplicates for
    info_nce), and its leaves."""
    query, key, views = leaves((batch, dim), (batch, dim), (batch, 3, dim), seed=seed)
    items = torch.arange(batch)
    match name:
        case "one_to_k":
            return Embedded(query=query, views=views), [query, views]
        case "nt_xent":
            return Embedded(query=query, views=views), [views]
        case "supcon":
            return Embedded(query=query, key=key, labels=(items * 3) % 5), [query, key]
        case "conr":
            return Embedded(query=query, key=key, scores=((items * 5) % 7).double()), [query, key]
        case "info_nce":
            return Embedded(query=query, key=key, query_ids=items % (batch - 1),
                            key_ids=(items * 3) % (batch - 2)), [query, key]
    return Embedded(query=query, key=key), [query, key]


ROWS = sorted(name for name, info in OBJECTIVES.items() if info.split == "rows")


def test_the_issue_s_objectives_compute_local_rows() -> None:
    assert {"info_nce", "clip", "siglip", "nt_xent"} <= set(ROWS)


@pytest.mark.filterwarnings("ignore:cwcl. the soft targets come from")
@pytest.mark.parametrize("name", ROWS)
def test_every_rows_objective_module_sums_to_its_batch_loss(name: str) -> None:
    """Each registered ``rows`` objective as the trainer builds it (its defaults, learned
    temperatures included): the shards' weighted sum is the batch loss, and so are the
    gradients of the embeddings and of the objective's own parameters."""
    objective = build_objective(name, {}, dim=D).double()
    batch, inputs = embedded_for(name)
    params = [p for p in objective.parameters() if p.requires_grad]
    whole = objective(batch)
    expected = torch.autograd.grad(whole, [*inputs, *params])
    for counts in COUNTS:
        total = split_sum(lambda rows: objective(batch, rows=rows), counts)
        assert_close(total, whole)
        for got, want in zip(torch.autograd.grad(total, [*inputs, *params]), expected,
                             strict=True):
            assert_close(got, want)


# --- memory: each rank holds B_r × B logits -------------------------------------------------


@pytest.mark.filterwarnings("ignore:cwcl. the soft targets come from")
@pytest.mark.parametrize("name", ROWS)
def test_every_rows_objective_holds_only_its_rows(name: str) -> None:
    """The largest tensor any operation creates (forward and backward) for a quarter of 64 rows
    is the whole batch's divided by 4: no ``B × B`` term (logits, masks, targets) is left."""
    objective = build_objective(name, {}, dim=4).double()
    largest = []
    for rows in (None, slice(16, 32)):
        batch, _ = embedded_for(name, batch=64, dim=4)
        with LargestTensor() as mode:
            (objective(batch) if rows is None else objective(batch, rows=rows)).backward()
        largest.append(mode.largest)
    assert largest[0] == 4 * largest[1] >= 4 * 16 * 64 * 8, largest



class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in bytes) any operation creates while it is active: for an
    objective, its logits (or their gradient), the term that grows as B²."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, Tensor):
                self.largest = max(self.largest, tensor.numel() * tensor.element_size())
        return out


MEMORY_BATCH, MEMORY_DIM = 96, 4  # narrow embeddings: the B × B terms dominate
MEMORY_OBJECTIVES = ["clip", "siglip", "nt_xent"]


class _Role:
    def __init__(self, name: str) -> None:
        self.name, self.trainable = name, True


class _Task:
    """What ``loss_and_embedding_grads`` needs of a task: the objective on query and key."""

    def __init__(self, name: str) -> None:
        self.objective = build_objective(name, {}, dim=MEMORY_DIM)

    def assemble(self, leaves: dict[str, Tensor], batch: dict[str, Any]) -> Embedded:
        return Embedded(query=leaves["query"], key=leaves["key"])

    def loss(self, embedded: Embedded, rows: slice | None = None) -> Tensor:
        return self.objective(embedded) if rows is None else self.objective(embedded, rows=rows)


def rank_peaks(rank: int, world: int) -> dict[str, int]:
    """This rank's largest tensor while the real distributed path (gather, own rows' loss,
    backward, gradient all-reduce) takes each objective's loss and embedding gradients."""
    from contralign.training.distributed import loss_and_embedding_grads, shard_of

    shard = shard_of(MEMORY_BATCH, rank, world)
    generator = torch.Generator().manual_seed(0)
    whole = torch.randn(2, MEMORY_BATCH, MEMORY_DIM, generator=generator)
    embeddings = {"query": whole[0, shard.rows], "key": whole[1, shard.rows]}
    peaks = {}
    for name in MEMORY_OBJECTIVES:
        task = _Task(name)
        strategy = OBJECTIVES[name].split
        with LargestTensor() as mode:
            loss_and_embedding_grads(task, [_Role("query"), _Role("key")],  # type: ignore
                                     embeddings, {}, shard, strategy)
        peaks[name] = mode.largest
    return peaks


def _memory_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(rank_peaks(rank, world), Path(out_dir) / f"peaks-{world}-{rank}.pt")
        # no rank tears gloo down while a peer is still in a collective (a peer that loses its
        # connection mid-operation aborts: seen once in CI as SIGABRT)
        torch_dist.barrier()
    finally:
        torch_dist.destroy_process_group()


def test_per_rank_loss_memory_falls_as_processes_are_added(tmp_path: Path) -> None:
    """1, 2 and 4 gloo processes on a batch of 96: every rank's largest tensor is the 1-process
    one divided by N (the logits are B/N × B), for clip, siglip and nt_xent."""
    from test_distributed import free_port

    peaks = {1: [rank_peaks(0, 1)]}
    for world in (2, 4):
        mp.spawn(_memory_worker, args=(world, free_port(), str(tmp_path)), nprocs=world,
                 join=True)
        peaks[world] = [torch.load(tmp_path / f"peaks-{world}-{r}.pt") for r in range(world)]
    for name in MEMORY_OBJECTIVES:
        one = peaks[1][0][name]
        # float32 logits: B × B for clip and siglip, (2B)² for nt_xent's two views.
        assert one == 4 * MEMORY_BATCH ** 2 * (4 if name == "nt_xent" else 1), name
        for world in (2, 4):
            assert [p[name] for p in peaks[world]] == [one // world] * world, (name, world)
