"""benchmarks/flops.py: FLOP counts equal the known ``2 m n k`` per product of a forward and
backward pass, a meta copy of a transformer counts what the real model counts, the passes
``probes.TrainingProbe`` records are split at a run's first step, and the matmul peak is a
positive finite figure."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from tests.conftest import REPO
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as a module (benchmarks are scripts, not part of the package)."""
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


flops, probes = load_benchmark("flops"), load_benchmark("probes")


def test_linear_forward_backward_count_is_six_n_in_out() -> None:
    # Forward x @ W^T: 2*n*i*o; backward dL/dx = g @ W and dL/dW = g^T @ x: 2*n*i*o each.
    n, i, o = 5, 8, 4
    layer = nn.Linear(i, o)
    x = torch.randn(n, i, requires_grad=True)
    assert flops.count_flops(lambda: layer(x).sum().backward()) == 6 * n * i * o
    # Without a gradient for the input only dL/dW is computed.
    x_fixed = torch.randn(n, i)
    assert flops.count_flops(lambda: layer(x_fixed).sum().backward()) == 4 * n * i * o


def test_matmul_forward_backward_count() -> None:
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(4, 5, requires_grad=True)
    assert flops.count_flops(lambda: (a @ b).sum()) == 2 * 3 * 4 * 5
    assert flops.count_flops(lambda: (a @ b).sum().backward()) == 3 * 2 * 3 * 4 * 5


def test_meta_copy_counts_what_the_real_model_counts(tiny_model_dir: Path) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dir).train()
    counter = flops.TransformerFlops(model)
    ids = torch.randint(5, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0  # padding does not change the count: every product is computed in full

    def real_step() -> None:
        model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()

    real = flops.count_flops(real_step)
    assert real > 0
    assert counter.count(3, 7) == real
    assert counter(3, 7) == real  # 3 x the count of one row: every product is batched over rows
    assert counter.total([(3, 7), (3, 7)]) == 2 * real
    assert all(p.device.type == "cpu" for p in model.parameters())  # the model is not moved


class TokenModel(nn.Module):
    """A stand-in transformer: takes ``input_ids`` (B, T), returns one value per row."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids).sum(dim=(1, 2))  # (B,)


def test_the_probe_gives_the_pass_shapes_after_the_first_step() -> None:
    model = TokenModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = [[(2, 3)], [(4, 5), (1, 6)], [(3, 2)]]  # passes of each step
    with probes.TrainingProbe(model.embed) as recorded:
        for passes in steps:
            for rows, width in passes:
                model(input_ids=torch.zeros(rows, width, dtype=torch.long)).sum().backward()
            optimizer.step()
    model.forward(torch.zeros(7, 7, dtype=torch.long))  # after the block: not recorded
    assert [tuple(t.shape) for t in recorded.inputs] == [(2, 3), (4, 5), (1, 6), (3, 2)]
    assert recorded.passes_at_step_end == [1, 3, 4]
    assert recorded.timed_shapes() == [(4, 5), (1, 6), (3, 2)]


def test_matmul_peak_is_positive_and_finite() -> None:
    peak = flops.matmul_peak(sizes=(16, 32), repeats=2)
    assert set(peak["by_size"]) == {16, 32}
    assert all(math.isfinite(g) and g > 0 for g in peak["by_size"].values())
    assert peak["gflops"] == max(peak["by_size"].values())
    assert peak["threads"] == torch.get_num_threads()


def test_onnxruntime_matmul_peak_is_positive_and_finite() -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    peak = flops.ort_matmul_peak(threads=1, sizes=(16, 32), repeats=2)
    assert set(peak["by_size"]) == {16, 32} and peak["threads"] == 1
    assert all(math.isfinite(g) and g > 0 for g in peak["by_size"].values())
    assert peak["gflops"] == max(peak["by_size"].values())


def test_machine_peak_is_the_larger_library() -> None:
    peak = flops.machine_peak(sizes=(16, 32), threads=1)
    assert "torch" in peak["by_library"]
    assert peak["gflops"] == max(r["gflops"] for r in peak["by_library"].values())
