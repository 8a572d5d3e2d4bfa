"""Model FLOPs of a training run, counted by torch, and this machine's fp32 matmul peak.

A throughput figure says how fast a side is; model FLOP/s over the machine's measured matmul
peak says how far it is from what the hardware can do. Both numbers come from the same process:

- ``count_flops`` runs a callable under ``torch.utils.flop_counter.FlopCounterMode`` (torch's own
  formulas for ``mm``/``addmm``/``bmm``/attention: ``2 m n k`` per product), so nothing is a hand
  formula. Element-wise work (activations, layer norm, softmax, the optimiser) is not counted,
  as in the usual model-FLOPs utilisation.
- ``probes.TrainingProbe.timed_shapes`` gives the ``(rows, width)`` of every forward pass of a
  transformers model in a run's timed steps, recorded from the outside by a hook on its
  embedding block, which runs once per pass however the model is called (sentence-transformers
  calls ``model.forward`` itself, which skips hooks on the model).
- ``TransformerFlops`` counts one forward and backward pass of that model on one row of a given
  width on a ``meta`` copy (shapes only, no arithmetic), cached per width; a pass over ``rows``
  rows is ``rows`` times that, exactly, since every product of a transformer is batched over rows
  (``tests/test_flops.py`` checks it against a count of the whole batch). Without an attention
  mask the count is the same as with one: the attention products are counted in full either way.
- ``matmul_peak`` times ``torch.matmul`` of square fp32 matrices at the current thread count, and
  ``ort_matmul_peak`` onnxruntime's ``MatMul`` (another kernel library; the larger of the two is
  the machine's peak).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PEAK_SIZES = (1024, 2048, 4096)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn`` runs (forward and, if it calls it, backward), as torch counts
    them: ``2 m n k`` per ``(m, k) @ (k, n)`` product; other ops count 0."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class TransformerFlops:
    """FLOPs of one training pass (forward, then backward from the last hidden state) of a
    transformers encoder on ``(rows, width)`` token ids, counted on a ``meta`` copy of it.

    The copy has the model's own modules and settings (attention implementation included) but
    no data, so a count costs Python time, not arithmetic. The pooler's forward is counted (it
    runs in training), its backward is not (its output is unused), as in the real run.

    Args:
        model: a transformers ``PreTrainedModel`` taking ``input_ids`` and returning
            ``last_hidden_state``; it is copied, not changed.
    """

    def __init__(self, model: nn.Module) -> None:
        self.meta = copy.deepcopy(model).to("meta").train()
        self._per_row: dict[int, int] = {}
        self.seconds = 0.0  # spent counting (a count runs the model's Python code, ~0.1 s)

    def __call__(self, rows: int, width: int) -> int:
        """FLOPs of a training pass over ``rows`` rows of ``width`` tokens: ``rows`` times the
        counted pass over one row (every product is batched over rows)."""
        if width not in self._per_row:
            start = time.perf_counter()
            self._per_row[width] = self.count(1, width)
            self.seconds += time.perf_counter() - start
        return rows * self._per_row[width]

    def count(self, rows: int, width: int) -> int:
        """FLOPs of a training pass over ``(rows, width)`` token ids, counted, not cached."""
        ids = torch.zeros(rows, width, dtype=torch.long, device="meta")  # (rows, width)

        def step() -> None:
            self.meta(input_ids=ids).last_hidden_state.sum().backward()  # (rows, width, H)

        flops = count_flops(step)
        self.meta.zero_grad(set_to_none=True)
        return flops

    def total(self, shapes: Sequence[tuple[int, int]]) -> int:
        """FLOPs of training passes at each of ``shapes`` (summed)."""
        return sum(self(rows, width) for rows, width in shapes)


def matmul_seconds(size: int, repeats: int) -> float:
    """The fastest of ``repeats`` timed ``(size, size) @ (size, size)`` fp32 products, after one
    untimed warm-up product, at torch's current thread count."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)  # (n, n) float32
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    torch.matmul(a, b, out=out)  # warm-up: first-touch pages, thread pool, kernel choice
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(sizes: Sequence[int] = PEAK_SIZES, repeats: int = 3) -> dict[str, Any]:
    """This machine's measured fp32 matmul peak: ``2 n^3`` FLOPs (as ``count_flops`` counts a
    product) over the fastest of ``repeats`` products, for each size ``n``; ``gflops`` is the
    best size's figure.

    Returns:
        ``{"gflops": float, "by_size": {n: GFLOP/s}, "repeats": int, "threads": int}``.
    """
    by_size = {size: 2 * size**3 / matmul_seconds(size, repeats) / 1e9 for size in sizes}
    return {"gflops": max(by_size.values()), "by_size": by_size, "repeats": repeats,
            "threads": torch.get_num_threads()}


def ort_matmul_peak(threads: int, sizes: Sequence[int] = PEAK_SIZES, repeats: int = 3,
                    spin: bool = True) -> dict[str, Any]:
    """The fp32 matmul peak as onnxruntime reaches it: ``2 n^3`` FLOPs over the fastest of
    ``repeats`` runs of a one-node ``MatMul`` graph of ``(n, n)`` inputs (after a warm-up run),
    ``threads`` intra-op threads (``spin``: idle threads busy-wait, onnxruntime's default).
    Measured beside ``matmul_peak`` because the two use different kernels (onnxruntime's MLAS,
    torch's MKL), which on some CPUs differ by a wide margin: on an AMD EPYC, 2 threads, MKL
    reached 179 GFLOP/s and MLAS 364. Needs onnx and onnxruntime.

    Returns:
        ``{"gflops": float, "by_size": {n: GFLOP/s}, "repeats": int, "threads": int}``.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    by_size = {}
    for size in sizes:
        shape = [size, size]
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "ab"],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = min(model.ir_version, onnx.IR_VERSION)
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feed = {name: rng.standard_normal(shape, dtype=np.float32) for name in "ab"}
        session.run(None, feed)  # warm-up
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            best = min(best, time.perf_counter() - start)
        by_size[size] = 2 * size**3 / best / 1e9
    return {"gflops": max(by_size.values()), "by_size": by_size, "repeats": repeats,
            "threads": threads}


def machine_peak(sizes: Sequence[int] = PEAK_SIZES, threads: int | None = None,
                 spin: bool = True) -> dict[str, Any]:
    """This machine's fp32 matmul peak: ``matmul_peak`` and, where onnx and onnxruntime import,
    ``ort_matmul_peak`` at ``threads`` (default torch's); ``gflops`` is the larger.

    Returns:
        ``{"gflops": float, "by_library": {"torch": record, "onnxruntime": record}}``.
    """
    import importlib.util

    threads = threads or torch.get_num_threads()
    by_library = {"torch": matmul_peak(sizes)}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        by_library["onnxruntime"] = ort_matmul_peak(threads, sizes, spin=spin)
    return {"gflops": max(peak["gflops"] for peak in by_library.values()),
            "by_library": by_library}
