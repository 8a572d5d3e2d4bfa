"""Tiled InfoNCE and SigLIP against their plain forms: value, gradients, gradcheck and memory."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from contralign.objectives import InfoNCELoss, build_objective, info_nce
from contralign.objectives.inputs import Embedded
from contralign.objectives.sigmoid import SigLIPLoss, sigmoid_loss
from contralign.objectives.tiled import (
    TiledCrossEntropy,
    TiledSigmoid,
    tiled_info_nce,
    tiled_sigmoid_loss,
)

# (B, tile): one row, N not divisible by the tile, N a multiple of it, a tile larger than N.
SIZES = [(1, 1), (7, 3), (16, 4), (37, 8), (20, 64)]
DIM = 6
# Relative tolerance per dtype; the absolute one is scaled by the reference's largest entry.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}

pytestmark = pytest.mark.usefixtures("one_thread")



def leaves(seed: int, dtype: torch.dtype, *shapes: tuple[int, ...]) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)
            .requires_grad_() for shape in shapes]


def make_ids(batch: int, num_negatives: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Duplicates that cross tiles: key i and key i + ⌈B/2⌉ share an id, anchors pair up, and
    two hard negatives repeat a positive (row 0's own, and row B//2's from the last row)."""
    key_ids = torch.arange(batch) % max(1, (batch + 1) // 2)
    query_ids = torch.arange(batch) // 2
    if not num_negatives:
        return query_ids, key_ids, None
    negative_ids = 100 + torch.arange(batch * num_negatives).reshape(batch, num_negatives)
    negative_ids[0, -1] = key_ids[0]
    negative_ids[-1, 0] = key_ids[batch // 2]
    return query_ids, key_ids, negative_ids


def assert_same(actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    rtol = TOLERANCE[dtype]
    atol = rtol * max(float(expected.detach().abs().max()), 1e-30)
    assert_close(actual, expected, rtol=rtol, atol=atol)


def grads(loss: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(x) if g is None else g
            for x, g in zip(inputs, torch.autograd.grad(loss, inputs, allow_unused=True),
                            strict=True)]


# --- InfoNCE: tiled equals plain ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_ids", [False, True], ids=["no_ids", "dup_ids"])
@pytest.mark.parametrize("normalize", [True, False], ids=["cos", "dot"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["one_way", "symmetric"])
@pytest.mark.parametrize("num_negatives", [0, 2], ids=lambda k: f"K{k}")
@pytest.mark.parametrize(("batch", "tile_size"), SIZES, ids=lambda v: str(v))
def test_tiled_info_nce_equals_plain(
    batch: int, tile_size: int, num_negatives: int, symmetric: bool, normalize: bool,
    with_ids: bool, dtype: torch.dtype,
) -> None:
    query, key, negatives = leaves(batch * 7 + num_negatives, dtype, (batch, DIM), (batch, DIM),
                                   (batch, max(num_negatives, 1), DIM))
    temperature = torch.tensor(0.07 if normalize else 1.5, dtype=dtype, requires_grad=True)
    inputs = [query, key, temperature]
    if num_negatives:
        inputs.append(negatives)
    query_ids, key_ids, negative_ids = (make_ids(batch, num_negatives) if with_ids
                                        else (None, None, None))
    kwargs = dict(negatives=negatives if num_negatives else None, temperature=temperature,
                  symmetric=symmetric, normalize=normalize, query_ids=query_ids,
                  key_ids=key_ids, negative_ids=negative_ids)

    plain = info_nce(query, key, **kwargs)  # type: ignore[arg-type]
    tiled = tiled_info_nce(query, key, tile_size=tile_size, **kwargs)  # type: ignore[arg-type]

    assert tiled.dtype == dtype
    assert_same(tiled, plain, dtype)
    for tiled_grad, plain_grad in zip(grads(tiled, inputs), grads(plain, inputs), strict=True):
        assert_same(tiled_grad, plain_grad, dtype)


def test_tiled_info_nce_float_temperature_and_whole_tiles_masked() -> None:
    # Every key has the same id: each row keeps only its target and the hard negatives, so most
    # tiles are masked entirely (running max −inf there) and must add exactly nothing.
    query, key, negatives = leaves(3, torch.float64, (9, DIM), (9, DIM), (9, 1, DIM))
    key_ids = torch.zeros(9, dtype=torch.long)
    negative_ids = torch.arange(9)[:, None] + 1
    kwargs = dict(negatives=negatives, temperature=0.2, key_ids=key_ids,
                  negative_ids=negative_ids, query_ids=key_ids, symmetric=True)
    plain = info_nce(query, key, **kwargs)  # type: ignore[arg-type]
    tiled = tiled_info_nce(query, key, tile_size=2, **kwargs)  # type: ignore[arg-type]
    assert_same(tiled, plain, torch.float64)
    for tiled_grad, plain_grad in zip(grads(tiled, [query, key, negatives]),
                                      grads(plain, [query, key, negatives]), strict=True):
        assert torch.isfinite(tiled_grad).all()
        assert_same(tiled_grad, plain_grad, torch.float64)


def test_tiled_info_nce_bfloat16_accumulates_in_float32() -> None:
    # 300 rows in tiles of 16: the sums run over 19 tiles, which bfloat16 would round away.
    query, key = leaves(5, torch.float64, (300, 32), (300, 32))
    exact = info_nce(query, key, temperature=0.05)
    tiled = tiled_info_nce(query.bfloat16(), key.bfloat16(), temperature=0.05, tile_size=16)
    assert tiled.dtype == torch.bfloat16
    assert_close(tiled.double(), exact, rtol=2e-2, atol=0)


# --- SigLIP: tiled equals plain -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("normalize", [True, False], ids=["cos", "dot"])
@pytest.mark.parametrize(("batch", "tile_size"), SIZES, ids=lambda v: str(v))
def test_tiled_sigmoid_loss_equals_plain(
    batch: int, tile_size: int, normalize: bool, dtype: torch.dtype
) -> None:
    query, key = leaves(batch, dtype, (batch, DIM), (batch, DIM))
    # Learnable t' (t = exp t') and b, away from their init so every term matters.
    log_scale = torch.tensor(1.5, dtype=dtype, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=dtype, requires_grad=True)
    inputs = [query, key, log_scale, bias]

    plain = sigmoid_loss(query, key, logit_scale=log_scale.exp(), logit_bias=bias,
                         normalize=normalize)
    tiled = tiled_sigmoid_loss(query, key, logit_scale=log_scale.exp(), logit_bias=bias,
                               normalize=normalize, tile_size=tile_size)

    assert tiled.dtype == dtype
    assert_same(tiled, plain, dtype)
    for tiled_grad, plain_grad in zip(grads(tiled, inputs), grads(plain, inputs), strict=True):
        assert_same(tiled_grad, plain_grad, dtype)


# --- gradcheck on the custom Functions ----------------------------------------------------------


@pytest.mark.parametrize("with_ids", [False, True], ids=["no_ids", "dup_ids"])
def test_tiled_cross_entropy_gradcheck(with_ids: bool) -> None:
    # 5 rows against 9 candidates in tiles of 2: ragged tiles in both directions. The output is
    # per row, so gradcheck also tries upstream gradients other than the mean's.
    rows, cols = leaves(11, torch.float64, (5, 3), (9, 3))
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, 0, 2, 1, 7, 0, 8, 2]) if with_ids else None

    def per_row(r: Tensor, c: Tensor, s: Tensor) -> Tensor:
        return TiledCrossEntropy.apply(r, c, s, ids, 2)

    assert torch.autograd.gradcheck(per_row, (rows, cols, scale))


def test_tiled_sigmoid_gradcheck() -> None:
    rows, cols = leaves(12, torch.float64, (5, 3), (7, 3))
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-0.4, dtype=torch.float64, requires_grad=True)

    def per_row(r: Tensor, c: Tensor, s: Tensor, b: Tensor) -> Tensor:
        return TiledSigmoid.apply(r, c, s, b, 2)

    assert torch.autograd.gradcheck(per_row, (rows, cols, scale, bias))


# --- memory: no N × M tensor, ever --------------------------------------------------------------


class AllocationTracker(TorchDispatchMode):
    """Records every tensor an aten op returns (forward and backward): the largest one, and the
    peak of the bytes held by the storages created under the mode. A storage counts until it is
    freed, including while the autograd graph keeps it for backward."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0  # elements
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0  # bytes
        self.peak = 0  # bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for handle, (ref, size) in list(self.live.items()):
            if ref.expired():
                del self.live[handle]
                self.current -= size
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, Tensor):
                self.largest = max(self.largest, tensor.numel())
                storage = tensor.untyped_storage()
                if storage._cdata not in self.live:
                    self.live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
        return out


def track(loss_fn: object, query: Tensor, key: Tensor) -> AllocationTracker:
    with AllocationTracker() as tracker:
        loss = loss_fn(query, key)  # type: ignore[operator]
        loss.backward()
    assert torch.isfinite(loss)
    return tracker


@pytest.mark.parametrize("objective", ["info_nce", "siglip"])
def test_tiled_loss_never_holds_the_logits(objective: str) -> None:
    batch, dim, tile = 2048, 16, 256
    query, key = leaves(0, torch.float32, (batch, dim), (batch, dim))
    ids = torch.arange(batch) % 1500
    if objective == "info_nce":
        kwargs = dict(temperature=torch.tensor(0.05, requires_grad=True), symmetric=True,
                      query_ids=ids, key_ids=ids)
        plain = track(lambda q, k: info_nce(q, k, **kwargs), query, key)  # type: ignore[arg-type]
        tiled = track(lambda q, k: tiled_info_nce(q, k, tile_size=tile, **kwargs),  # type: ignore[arg-type]
                      query, key)
    else:
        scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0)
        plain = track(lambda q, k: sigmoid_loss(q, k, logit_scale=scale, logit_bias=bias),
                      query, key)
        tiled = track(lambda q, k: tiled_sigmoid_loss(q, k, logit_scale=scale, logit_bias=bias,
                                                      tile_size=tile), query, key)
    logits_bytes = batch * batch * 4
    # The tracker sees the plain path's logits: it would catch them in the tiled one.
    assert plain.largest >= batch * batch
    assert plain.peak >= logits_bytes
    # Tiled: nothing larger than a tile or an embedding matrix, and all live tensors together
    # (normalised copies, gradients, one tile and its mask) under a quarter of one logits matrix.
    assert tiled.largest <= max(tile * tile, batch * dim)
    assert tiled.peak < logits_bytes / 4


# --- the modules' flags -------------------------------------------------------------------------


def test_info_nce_module_tiled_flag_equals_plain() -> None:
    query, key, negatives = leaves(21, torch.float64, (10, DIM), (10, DIM), (10, 2, DIM))
    query_ids, key_ids, negative_ids = make_ids(10, 2)
    batch = Embedded(query=query, key=key, negatives=negatives, query_ids=query_ids,
                     key_ids=key_ids, negative_ids=negative_ids)
    plain = InfoNCELoss(temperature=0.1, learnable_temperature=True, symmetric=True).double()
    tiled = build_objective("info_nce", {"temperature": 0.1, "learnable_temperature": True,
                                         "symmetric": True, "tiled": True, "tile_size": 3})
    tiled = tiled.double()
    plain_loss, tiled_loss = plain(batch), tiled(batch)
    assert_same(tiled_loss, plain_loss, torch.float64)
    inputs = [query, key, negatives]
    plain_grads = grads(plain_loss, [*inputs, plain.log_scale])
    tiled_grads = grads(tiled_loss, [*inputs, tiled.log_scale])
    for tiled_grad, plain_grad in zip(tiled_grads, plain_grads, strict=True):
        assert_same(tiled_grad, plain_grad, torch.float64)


def test_siglip_module_tiled_flag_equals_plain() -> None:
    query, key = leaves(22, torch.float64, (10, DIM), (10, DIM))
    plain = SigLIPLoss(logit_scale=3.0, logit_bias=-1.0).double()
    tiled = build_objective("siglip", {"logit_scale": 3.0, "logit_bias": -1.0, "tiled": True,
                                       "tile_size": 4}).double()
    plain_loss, tiled_loss = plain(Embedded(query, key)), tiled(Embedded(query, key))
    assert_same(tiled_loss, plain_loss, torch.float64)
    plain_grads = grads(plain_loss, [query, key, plain.log_scale, plain.bias])
    tiled_grads = grads(tiled_loss, [query, key, tiled.log_scale, tiled.bias])
    for tiled_grad, plain_grad in zip(tiled_grads, plain_grads, strict=True):
        assert_same(tiled_grad, plain_grad, torch.float64)


def test_default_is_the_plain_path() -> None:
    assert InfoNCELoss().tiled is False
    assert SigLIPLoss().tiled is False


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile_size", [0, -3, 2.5, True])
def test_bad_tile_size_is_named(tile_size: object) -> None:
    eye = torch.eye(3)
    with pytest.raises(ValueError, match="tiled_info_nce: tile_size"):
        tiled_info_nce(eye, eye, tile_size=tile_size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tiled_sigmoid_loss: tile_size"):
        tiled_sigmoid_loss(eye, eye, logit_scale=1.0, logit_bias=0.0,
                           tile_size=tile_size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="info_nce: tile_size"):
        InfoNCELoss(tiled=True, tile_size=tile_size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="siglip: tile_size"):
        SigLIPLoss(tiled=True, tile_size=tile_size)  # type: ignore[arg-type]


def test_bad_inputs_raise_like_the_plain_path() -> None:
    query, key = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"query \(4, 3\) and key \(5, 3\)"):
        tiled_info_nce(query, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"negatives \(4, 3\) must be \(B, K, D\)"):
        tiled_info_nce(query, key, negatives=torch.randn(4, 3))
    with pytest.raises(ValueError, match="needs negative_ids"):
        tiled_info_nce(query, key, negatives=torch.randn(4, 2, 3), key_ids=torch.arange(4))
    with pytest.raises(ValueError, match="temperature must be a scalar"):
        tiled_info_nce(query, key, temperature=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"query \(4, 3\) and key \(4, 2\)"):
        tiled_sigmoid_loss(query, torch.randn(4, 2), logit_scale=1.0, logit_bias=0.0)
