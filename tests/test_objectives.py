"""InfoNCE against its naive reference, known answers, invariances, masking and ST's loss."""

from __future__ import annotations

import math

import pytest
import torch
from reference import naive_info_nce, naive_row_loss
from torch import Tensor, nn
from torch.testing import assert_close

from contralign.objectives import InfoNCELoss, duplicate_mask, info_nce
from contralign.objectives.inputs import Embedded

# (B, D) pairs: a single row, an odd batch and a larger one.
SHAPES = [(1, 5), (3, 7), (8, 16)]
TEMPERATURES = [0.05, 0.1, 1.0]
NUM_NEGATIVES = [0, 1, 3]


def make_batch(
    batch: int, dim: int, num_negatives: int, seed: int, scale: float = 1.0
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Random float64 leaf tensors ``(B, D)``, ``(B, D)`` and ``(B, K, D)`` (None when K = 0)."""
    generator = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> Tensor:
        values = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
        return values.requires_grad_()

    negatives = leaf(batch, num_negatives, dim) if num_negatives else None
    return leaf(batch, dim), leaf(batch, dim), negatives


def make_ids(batch: int, num_negatives: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Ids with duplicates: repeated positives, repeated anchors, and hard negatives equal to a
    positive (their own row's, and row 0's from the last row)."""
    key_ids = torch.arange(batch) % max(1, (batch + 1) // 2)  # B=3: [0, 1, 0]; B=8: [0..3, 0..3]
    query_ids = torch.arange(batch) // 2  # B=3: [0, 0, 1]
    if not num_negatives:
        return query_ids, key_ids, None
    negative_ids = 100 + torch.arange(batch * num_negatives).reshape(batch, num_negatives)
    # Off the corners, so a row-major vs column-major mix-up of (B, K) moves them.
    negative_ids[0, -1] = key_ids[0]  # row 0's own positive served again as its hard negative
    if batch > 1:
        negative_ids[-1, 0] = key_ids[0]  # another row's negative that duplicates row 0's positive
    return query_ids, key_ids, negative_ids


def inputs_of(query: Tensor, key: Tensor, negatives: Tensor | None) -> list[Tensor]:
    return [query, key] if negatives is None else [query, key, negatives]


# --- parity with the naive loops ------------------------------------------------------------


@pytest.mark.parametrize("with_ids", [False, True], ids=["no_ids", "dup_ids"])
@pytest.mark.parametrize("normalize", [True, False], ids=["cos", "dot"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["one_way", "symmetric"])
@pytest.mark.parametrize("num_negatives", NUM_NEGATIVES, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("temperature", TEMPERATURES, ids=lambda t: f"tau{t}")
@pytest.mark.parametrize(("batch", "dim"), SHAPES, ids=lambda v: str(v))
def test_info_nce_matches_naive_value_and_gradients(
    batch: int, dim: int, temperature: float, num_negatives: int, symmetric: bool,
    normalize: bool, with_ids: bool,
) -> None:
    # Dot-product logits are unbounded: keep them small enough for the reference's plain exp().
    scale = 1.0 if normalize else 0.3
    query, key, negatives = make_batch(batch, dim, num_negatives, seed=batch * 31 + dim,
                                       scale=scale)
    query_ids, key_ids, negative_ids = (
        make_ids(batch, num_negatives) if with_ids else (None, None, None)
    )
    kwargs = dict(temperature=temperature, symmetric=symmetric, normalize=normalize,
                  query_ids=query_ids, key_ids=key_ids, negative_ids=negative_ids)

    fast = info_nce(query, key, negatives=negatives, **kwargs)
    naive = naive_info_nce(query, key, negatives, **kwargs)
    inputs = inputs_of(query, key, negatives)
    fast_grads = torch.autograd.grad(fast, inputs)
    # A hard negative masked for every row is absent from the naive graph: its gradient is 0.
    naive_grads = [
        torch.zeros_like(x) if g is None else g
        for x, g in zip(inputs, torch.autograd.grad(naive, inputs, allow_unused=True), strict=True)
    ]

    assert fast.dtype == torch.float64
    assert_close(fast, naive)
    for fast_grad, naive_grad in zip(fast_grads, naive_grads, strict=True):
        assert_close(fast_grad, naive_grad)


@pytest.mark.parametrize("normalize", [True, False], ids=["cos", "dot"])
def test_info_nce_gradcheck(normalize: bool) -> None:
    query, key, negatives = make_batch(3, 4, 2, seed=7)
    temperature = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    query_ids, key_ids, negative_ids = make_ids(3, 2)

    def loss(q: Tensor, k: Tensor, n: Tensor, tau: Tensor) -> Tensor:
        return info_nce(q, k, negatives=n, temperature=tau, symmetric=True, normalize=normalize,
                        query_ids=query_ids, key_ids=key_ids, negative_ids=negative_ids)

    assert torch.autograd.gradcheck(loss, (query, key, negatives, temperature))


# --- known answers --------------------------------------------------------------------------


def test_orthogonal_unit_pairs_known_answer() -> None:
    # Each row: logits [1, 0] at τ = 1, so −log(e / (e + 1)) = log(1 + e^-1).
    eye = torch.eye(2, dtype=torch.float64)
    expected = torch.tensor(math.log1p(math.exp(-1.0)), dtype=torch.float64)
    assert_close(info_nce(eye, eye, temperature=1.0), expected)
    assert_close(info_nce(eye, eye, temperature=1.0, symmetric=True), expected)


def test_hard_negatives_known_answer() -> None:
    # q = k = [e1, e2]; hard negatives [[-e1], [e1]]; τ = 0.5, so logits are 2·cos.
    # Row 0 (e1) sees k0: 2, k1: 0, n0: -2, n1: 2  -> log(2 + e^-2 + e^-4).
    # Row 1 (e2) sees k0: 0, k1: 2, n0: 0,  n1: 0  -> log(1 + 3e^-2).
    e1, e2 = torch.eye(2, dtype=torch.float64)
    query = key = torch.stack([e1, e2])
    negatives = torch.stack([-e1, e1])[:, None, :]  # (B=2, K=1, D=2)
    row0 = math.log(2 + math.exp(-2) + math.exp(-4))
    row1 = math.log(1 + 3 * math.exp(-2))
    expected = torch.tensor((row0 + row1) / 2, dtype=torch.float64)
    assert_close(info_nce(query, key, negatives=negatives, temperature=0.5), expected)

    # n1 carries row 0's positive id: it leaves row 0's denominator -> log(1 + e^-2 + e^-4).
    masked = info_nce(query, key, negatives=negatives, temperature=0.5,
                      key_ids=torch.tensor([0, 1]), negative_ids=torch.tensor([[2], [0]]))
    row0_masked = math.log(1 + math.exp(-2) + math.exp(-4))
    assert_close(masked, torch.tensor((row0_masked + row1) / 2, dtype=torch.float64))


# --- invariances ----------------------------------------------------------------------------


def test_permuting_rows_leaves_loss_unchanged() -> None:
    query, key, negatives = make_batch(6, 5, 2, seed=3)
    query_ids, key_ids, negative_ids = make_ids(6, 2)
    assert negatives is not None and negative_ids is not None
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    kwargs = dict(temperature=0.1, symmetric=True)
    loss = info_nce(query, key, negatives=negatives, query_ids=query_ids, key_ids=key_ids,
                    negative_ids=negative_ids, **kwargs)
    permuted = info_nce(query[perm], key[perm], negatives=negatives[perm],
                        query_ids=query_ids[perm], key_ids=key_ids[perm],
                        negative_ids=negative_ids[perm], **kwargs)
    assert_close(permuted, loss)


def test_symmetric_loss_is_symmetric_in_query_and_key() -> None:
    query, key, _ = make_batch(5, 6, 0, seed=4)
    query_ids, key_ids = torch.tensor([0, 1, 0, 2, 3]), torch.tensor([7, 8, 9, 7, 9])
    forward = info_nce(query, key, temperature=0.1, symmetric=True,
                       query_ids=query_ids, key_ids=key_ids)
    swapped = info_nce(key, query, temperature=0.1, symmetric=True,
                       query_ids=key_ids, key_ids=query_ids)
    assert_close(swapped, forward)
    # ...while the one-way loss is not, so the check above can fail.
    one_way = info_nce(query, key, temperature=0.1)
    assert not torch.allclose(one_way, info_nce(key, query, temperature=0.1))


def test_normalized_loss_ignores_positive_scaling() -> None:
    query, key, negatives = make_batch(4, 6, 2, seed=5)
    assert negatives is not None
    loss = info_nce(query, key, negatives=negatives, temperature=0.1)
    scaled = info_nce(3.7 * query, 0.2 * key, negatives=5.0 * negatives, temperature=0.1)
    assert_close(scaled, loss)
    # Without normalisation the scale is part of the logits.
    raw = info_nce(query, key, negatives=negatives, temperature=0.1, normalize=False)
    raw_scaled = info_nce(3.7 * query, key, negatives=negatives, temperature=0.1,
                          normalize=False)
    assert not torch.allclose(raw, raw_scaled)


# --- duplicate masking ----------------------------------------------------------------------


def test_duplicate_mask_marks_same_id_except_target() -> None:
    mask = duplicate_mask(torch.tensor([10, 11, 10]), torch.tensor([10, 11, 10, 11, 12, 10]))
    expected = torch.tensor([
        [False, False, True, False, False, True],
        [False, False, False, True, False, False],
        [True, False, False, False, False, True],
    ])
    assert torch.equal(mask, expected)


def test_repeated_positive_is_removed_from_both_rows() -> None:
    # Row 3's positive is the same text as row 0's (equal key_ids).
    query, key, _ = make_batch(5, 6, 0, seed=11)
    key_ids = torch.tensor([10, 11, 12, 10, 13])
    masked = info_nce(query, key, temperature=0.1, key_ids=key_ids)

    keys = list(key)
    rows = []
    for i in range(5):
        dropped = {0: 3, 3: 0}.get(i)
        kept = [k for j, k in enumerate(keys) if j != dropped]
        rows.append(naive_row_loss(query[i], key[i], kept, 0.1, normalize=True))
    expected = torch.stack(rows).mean()

    assert_close(masked, expected)
    assert not torch.allclose(masked, info_nce(query, key, temperature=0.1))
    # Gradients agree too: row 0 no longer pushes away key 3, nor row 3 key 0.
    assert_close(torch.autograd.grad(masked, [query, key]),
                 torch.autograd.grad(expected, [query, key]))


def test_hard_negative_with_the_positive_id_is_masked() -> None:
    query, key, negatives = make_batch(3, 6, 1, seed=12)
    assert negatives is not None
    key_ids = torch.tensor([0, 1, 2])
    negative_ids = torch.tensor([[5], [1], [6]])  # row 1's hard negative is its own positive
    masked = info_nce(query, key, negatives=negatives, temperature=0.1,
                      key_ids=key_ids, negative_ids=negative_ids)

    all_candidates = list(key) + [negatives[0, 0], negatives[1, 0], negatives[2, 0]]
    rows = []
    for i in range(3):
        kept = [c for j, c in enumerate(all_candidates) if not (i == 1 and j == 4)]
        rows.append(naive_row_loss(query[i], key[i], kept, 0.1, normalize=True))
    assert_close(masked, torch.stack(rows).mean())
    unmasked = info_nce(query, key, negatives=negatives, temperature=0.1)
    assert not torch.allclose(masked, unmasked)


def test_key_ids_with_negatives_require_negative_ids() -> None:
    query, key, negatives = make_batch(2, 3, 1, seed=13)
    with pytest.raises(ValueError, match="negative_ids"):
        info_nce(query, key, negatives=negatives, key_ids=torch.tensor([0, 1]))


# --- InfoNCELoss ----------------------------------------------------------------------------


def test_learnable_temperature_is_a_parameter_with_a_gradient() -> None:
    module = InfoNCELoss(temperature=0.07, learnable_temperature=True)
    assert "log_scale" in dict(module.named_parameters())
    query, key, _ = make_batch(4, 5, 0, seed=21)
    loss = module(Embedded(query, key))
    loss.backward()
    assert module.log_scale.grad is not None
    assert module.log_scale.grad.abs() > 0
    assert_close(loss.detach(), info_nce(query, key, temperature=0.07).detach(),
                 rtol=1e-5, atol=1e-6)


def test_learnable_temperature_is_clamped_at_logit_scale_100() -> None:
    module = InfoNCELoss(temperature=0.07, learnable_temperature=True)
    with torch.no_grad():
        module.log_scale.fill_(math.log(250.0))
    assert_close(module.temperature, torch.tensor(0.01), rtol=1e-5, atol=0.0)
    query, key, _ = make_batch(4, 5, 0, seed=22)
    loss = module(Embedded(query, key))
    assert_close(loss.detach(), info_nce(query, key, temperature=0.01).detach(),
                 rtol=1e-5, atol=1e-6)
    loss.backward()
    assert module.log_scale.grad is not None
    assert module.log_scale.grad == 0  # past the clamp the scale gets no update


def test_fixed_temperature_is_a_buffer() -> None:
    module = InfoNCELoss(temperature=0.05)
    assert list(module.parameters()) == []
    assert "log_scale" in dict(module.named_buffers())
    assert "log_scale" in module.state_dict()
    assert not module.log_scale.requires_grad
    assert_close(module.temperature, torch.tensor(0.05), rtol=1e-6, atol=0.0)
    query, key, _ = make_batch(4, 5, 0, seed=23)
    assert_close(module(Embedded(query, key)), info_nce(query, key, temperature=0.05),
                 rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_invalid_temperature_raises(temperature: float, learnable: bool) -> None:
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=temperature, learnable_temperature=learnable)


def test_symmetric_module_adds_the_reverse_direction() -> None:
    query, key, _ = make_batch(4, 5, 0, seed=24)
    module = InfoNCELoss(temperature=0.1, symmetric=True)
    expected = naive_info_nce(query, key, temperature=0.1, symmetric=True)
    assert_close(module(Embedded(query, key)), expected, rtol=1e-5, atol=1e-6)


# --- parity with sentence-transformers ------------------------------------------------------


class _PrecomputedEncoder(nn.Module):
    """Test double for ST's model: each feature dict carries its column's embeddings."""

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"sentence_embedding": features["embedding"]}


@pytest.mark.parametrize("num_negative_columns", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [False, True], ids=["one_way", "symmetric"])
def test_matches_sentence_transformers_mnrl(num_negative_columns: int, symmetric: bool) -> None:
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    if symmetric:
        st_loss = MultipleNegativesRankingLoss(
            _PrecomputedEncoder(), scale=20.0,
            directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
        )
    else:
        st_loss = MultipleNegativesRankingLoss(_PrecomputedEncoder(), scale=20.0)

    query, key, negatives = make_batch(6, 8, num_negative_columns, seed=31)
    # ST takes one (B, D) column per hard negative: anchor, positive, negative_1, ...
    columns = [query, key] + [negatives[:, k] for k in range(num_negative_columns)
                              if negatives is not None]
    st_value = st_loss([{"embedding": column} for column in columns], torch.empty(0))
    ours = info_nce(query, key, negatives=negatives, temperature=0.05, symmetric=symmetric)

    inputs = inputs_of(query, key, negatives)
    assert_close(ours, st_value)
    assert_close(torch.autograd.grad(ours, inputs), torch.autograd.grad(st_value, inputs))


def test_registry_declarations_match_the_modules():
    """What training reads from the registry (tiled form, split over processes) is what the
    modules can do: a tiled objective takes ``tiled``/``tile_size``; a ``rows`` objective
    scores a subset of rows (``forward(..., rows=)``)."""
    import inspect

    from contralign.objectives import OBJECTIVES

    for name, info in OBJECTIVES.items():
        parameters = info.parameters()
        assert info.tiled == ("tiled" in parameters and "tile_size" in parameters), name
        takes_rows = "rows" in inspect.signature(info.module.forward).parameters
        assert (info.split == "rows") == takes_rows, name
        assert info.split_for({"tiled": True}) == ("full" if info.tiled else info.split)
