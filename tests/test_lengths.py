"""Length groups: the same embeddings and gradients as one padded forward pass, fewer padded
positions; the grouping covers every row once and respects its budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contralign import TextEncoder
from contralign.encoders.lengths import length_groups, pad_rows, take_rows, trim_padding
from contralign.training.build import set_length_groups

TEXTS = ["a", "a much longer sentence about nothing in particular that goes on and on",
         "two words", "three short words", "the quick brown fox jumps over the lazy dog",
         "x y", "one more sentence of middling length", "ok"] * 3


def test_groups_hold_every_row_once_longest_first_within_budget():
    torch.manual_seed(0)
    lengths = torch.randint(1, 40, (50,))
    mask = (torch.arange(40)[None, :] < lengths[:, None]).long()  # (50, 40) right-padded
    groups = length_groups(mask, tokens_per_group=64)
    assert groups is not None
    rows = torch.cat(groups)
    assert sorted(rows.tolist()) == list(range(50))
    assert lengths[rows].tolist() == sorted(lengths.tolist(), reverse=True)
    for group in groups:
        longest = int(lengths[group].max())
        assert len(group) == 1 or len(group) * longest <= 64


def test_no_groups_when_they_would_save_little():
    mask = torch.ones(16, 10, dtype=torch.long)  # no padding at all
    assert length_groups(mask, tokens_per_group=32) is None
    assert length_groups(torch.ones(2, 10, dtype=torch.long), tokens_per_group=1000) is None


def test_a_text_longer_than_the_budget_is_a_group_of_its_own():
    mask = torch.zeros(3, 100, dtype=torch.long)
    mask[0, :100], mask[1, :5], mask[2, :3] = 1, 1, 1
    groups = length_groups(mask, tokens_per_group=16)
    assert groups is not None and [g.tolist() for g in groups] == [[0], [1, 2]]


def test_take_rows_trims_token_tensors_only():
    batch = {"input_ids": torch.arange(12).view(3, 4), "attention_mask": torch.ones(3, 4),
             "row_feature": torch.arange(3)}
    taken = take_rows(batch, torch.tensor([2, 0]), width=2)
    assert taken["input_ids"].tolist() == [[8, 9], [0, 1]]
    assert taken["attention_mask"].shape == (2, 2)
    assert taken["row_feature"].tolist() == [2, 0]


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last"])
def test_grouped_forward_equals_one_pass(tiny_model_dir, pooling):
    """Dropout off: embeddings and every parameter's gradient agree with one padded pass."""
    encoder = TextEncoder.from_pretrained(str(tiny_model_dir), pooling=pooling).double().eval()
    batch = encoder.preprocess(TEXTS)
    weights = torch.randn(len(TEXTS), encoder.dim, dtype=torch.float64)

    def run(tokens_per_group: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        encoder.zero_grad()
        encoder.tokens_per_group = tokens_per_group
        embeddings = encoder(batch)
        (embeddings * weights).sum().backward()
        return embeddings.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters()
                                     if p.grad is not None}

    assert length_groups(batch["attention_mask"], 32) is not None  # the grouped path runs
    plain, plain_grads = run(None)
    grouped, grouped_grads = run(32)
    torch.testing.assert_close(grouped, plain, rtol=1e-10, atol=1e-12)
    assert plain_grads.keys() == grouped_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grouped_grads[name], grad, rtol=1e-9, atol=1e-12,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_left_padding_tokenizers_keep_one_pass(tiny_model_dir, monkeypatch):
    encoder = TextEncoder.from_pretrained(str(tiny_model_dir)).eval()
    encoder.tokens_per_group = 8
    monkeypatch.setattr(encoder.tokenizer, "padding_side", "left")
    calls = []
    monkeypatch.setattr(encoder, "_pooled", lambda batch: calls.append(batch) or
                        torch.zeros(len(batch["input_ids"]), encoder.dim))
    encoder(encoder.preprocess(TEXTS))
    assert len(calls) == 1


def test_auto_groups_on_cpus_only(tiny_model_dir):
    encoder = TextEncoder.from_pretrained(str(tiny_model_dir))
    set_length_groups(encoder, "auto", torch.device("cpu"))
    assert encoder.tokens_per_group == 256
    set_length_groups(encoder, "auto", torch.device("cuda"))
    assert encoder.tokens_per_group is None
    set_length_groups(encoder, 64, torch.device("cuda"))
    assert encoder.tokens_per_group == 64


def test_trim_padding_drops_only_unused_columns():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    batch = {"input_ids": torch.arange(8).view(2, 4), "attention_mask": mask}
    trimmed = trim_padding(batch)
    assert trimmed["input_ids"].tolist() == [[0, 1], [4, 5]]
    full = {"input_ids": torch.ones(2, 2), "attention_mask": torch.ones(2, 2, dtype=torch.long)}
    assert trim_padding(full) is full


@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_pad_rows_against_a_loop(left: bool) -> None:
    rows = [[5, 6, 7], [], [8], [9, 10, 11, 12]]
    expected = np.full((4, 5), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        if row:
            if left:
                expected[i, 5 - len(row):] = row
            else:
                expected[i, :len(row)] = row
    got = pad_rows(rows, 5, -1, left=left)
    assert got.dtype == np.int64 and np.array_equal(got, expected)
