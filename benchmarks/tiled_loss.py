"""Tiled InfoNCE against open_clip's ``ClipLoss``: time and peak memory of the loss alone.

Both sides compute the symmetric CLIP loss (image → text and text → image cross-entropy, learned
logit scale, CLIP's initial 1/0.07) on the same random ``(N, D)`` float32 features on the CPU,
forward and backward. contralign runs ``tiled_info_nce(..., symmetric=True, tile_size=T)``,
which never holds the ``N × N`` logits (arXiv:2410.17243); open_clip's ``ClipLoss`` materialises
them (two ``N × N`` logits matrices and their log-softmax outputs, then their gradients).

Each (implementation, N) runs in a fresh subprocess, so its peak resident memory is its own: the
figure is the growth of its peak resident memory from just after the inputs exist (and a small
warm-up) to the end of the backward pass (``VmHWM`` reset through ``/proc/self/clear_refs``;
``ru_maxrss`` minus its value at that point where that is unavailable); it includes the two
``(N, D)`` input gradients both sides must produce. Cases open_clip cannot hold are not tried:
their need is estimated first as ``N² × 4 bytes × 3 buffers`` (a lower bound) and reported as
out of memory.

Run: ``python benchmarks/tiled_loss.py [--sizes 4096,16384,65536] [--json] [--dim 384]
[--tile-size 4096] [--threads N] [--memory-gb 24]`` with an interpreter that has open_clip
(``open_clip_torch``); without it only the tiled side runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import cpu_model, print_json, ratio

IMPLEMENTATIONS = ("tiled", "open_clip")
LOGIT_SCALE = 1 / 0.07  # CLIP's initial logit scale (temperature 0.07)
SAFETY_CAP_GB = 18.0  # never try to allocate more than this, whatever the machine has
OPEN_CLIP_BUFFERS = 3  # N × N float32 buffers open_clip holds at once, at the very least
WARMUP_ROWS = 256
GB = 1e9


def total_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return None


def machine(threads: int) -> dict[str, Any]:
    import torch

    import contralign

    try:
        import open_clip

        open_clip_version: str | None = open_clip.__version__
    except ImportError:
        open_clip_version = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(total_memory_gb() or float("nan"), 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip_version,
        "contralign": contralign.__version__,
        "torch_threads": threads,
    }


# --- one case, in its own process ---------------------------------------------------------------


def status_bytes(field: str) -> int | None:
    """``VmRSS`` or ``VmHWM`` (peak RSS) of this process from ``/proc/self/status``."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def start_peak() -> tuple[int, str]:
    """The baseline to subtract from the later peak, and how the peak is read.

    Linux resets the peak RSS (``VmHWM``) to the current RSS when ``5`` is written to
    ``/proc/self/clear_refs``; the baseline is then the current RSS. ``ru_maxrss`` alone would
    also carry the import-time peak and, after ``exec``, the parent's.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
        rss = status_bytes("VmRSS")
        if rss is not None:
            return rss, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"  # KiB on Linux


def read_peak(method: str) -> int:
    if method == "VmHWM":
        return status_bytes("VmHWM") or 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def loss_function(implementation: str, tile_size: int) -> Any:
    """``(image, text, logit_scale) -> loss`` for one implementation, on raw features."""
    import torch.nn.functional as F

    if implementation == "tiled":
        from contralign.objectives.tiled import tiled_info_nce

        def tiled(image: Any, text: Any, logit_scale: Any) -> Any:
            return tiled_info_nce(image, text, temperature=1 / logit_scale, symmetric=True,
                                  tile_size=tile_size)

        return tiled
    from open_clip.loss import ClipLoss

    clip_loss = ClipLoss()

    def reference(image: Any, text: Any, logit_scale: Any) -> Any:
        # open_clip's model normalises the features before the loss; ours does it inside.
        return clip_loss(F.normalize(image, dim=-1), F.normalize(text, dim=-1), logit_scale)

    return reference


def run_case(implementation: str, size: int, dim: int, tile_size: int, threads: int) -> None:
    """Time forward and backward once and print one JSON line with the figures."""
    import torch

    torch.set_num_threads(threads)
    loss_fn = loss_function(implementation, tile_size)

    def inputs(rows: int) -> tuple[Any, Any, Any]:
        generator = torch.Generator().manual_seed(rows)
        image = torch.randn(rows, dim, generator=generator).requires_grad_()
        text = torch.randn(rows, dim, generator=generator).requires_grad_()
        log_scale = torch.tensor(math.log(LOGIT_SCALE), requires_grad=True)
        return image, text, log_scale

    image, text, log_scale = inputs(WARMUP_ROWS)  # load kernels and thread pools first
    loss_fn(image, text, log_scale.exp()).backward()
    image, text, log_scale = inputs(size)
    baseline, method = start_peak()
    start = time.perf_counter()
    loss = loss_fn(image, text, log_scale.exp())
    forward = time.perf_counter() - start
    loss.backward()
    total = time.perf_counter() - start
    peak = read_peak(method)
    assert image.grad is not None and text.grad is not None and log_scale.grad is not None
    print(json.dumps({
        "seconds": total, "forward_seconds": forward, "backward_seconds": total - forward,
        "peak_growth_bytes": peak - baseline, "peak_method": method, "loss": float(loss),
        "grad_norm": float(torch.cat([image.grad, text.grad]).norm()),
        "scale_grad": float(log_scale.grad),
    }))


# --- the driver ---------------------------------------------------------------------------------


def estimate_bytes(implementation: str, size: int, dim: int, tile_size: int) -> float:
    if implementation == "open_clip":
        return size * size * 4 * OPEN_CLIP_BUFFERS
    # Normalised copies, gradients and accumulators of the features, and a few tiles.
    return size * dim * 4 * 10 + min(tile_size, size) ** 2 * 4 * 4


def measure(implementation: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    case: dict[str, Any] = {"implementation": implementation, "n": size}
    need = estimate_bytes(implementation, size, args.dim, args.tile_size)
    limit = min(args.memory_gb, SAFETY_CAP_GB)
    if need > limit * GB:
        case["out_of_memory"] = (f"would need at least {need / GB:.1f} GB "
                                 f"(> {args.memory_gb:g} GB)" if need > args.memory_gb * GB
                                 else f"would need at least {need / GB:.1f} GB (> the "
                                 f"{SAFETY_CAP_GB:g} GB this benchmark allows itself)")
        return case
    command = [sys.executable, str(Path(__file__).resolve()), "--case", implementation,
               "--sizes", str(size), "--dim", str(args.dim), "--tile-size", str(args.tile_size),
               "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        killed = done.returncode in (-9, 137)
        case["error"] = "out of memory (killed)" if killed else lines[-1]
        return case
    case.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return case


def gb(value: float | None) -> str:
    return "-" if value is None else f"{value / GB:.2f} GB"


def print_row(size: int, cases: dict[str, dict[str, Any]]) -> None:
    ours, reference = cases["tiled"], cases.get("open_clip", {})

    def cell(case: dict[str, Any], key: str, fmt: str) -> str:
        if key in case:
            return fmt.format(case[key] / GB if key == "peak_growth_bytes" else case[key])
        if "out_of_memory" in case:
            return "OOM*"
        return "error*" if "error" in case else "-"

    time_ratio = mem_ratio = "-"
    if "seconds" in ours and "seconds" in reference:
        time_ratio = f"{ratio(ours['seconds'], reference['seconds']):.2f}"
        mem_ratio = f"{ratio(ours['peak_growth_bytes'], reference['peak_growth_bytes']):.3f}"
    print(f"{size:>7,} | {cell(ours, 'seconds', '{:.1f} s'):>8} | "
          f"{cell(reference, 'seconds', '{:.1f} s'):>8} | {time_ratio:>5} | "
          f"{cell(ours, 'peak_growth_bytes', '{:.2f} GB'):>8} | "
          f"{cell(reference, 'peak_growth_bytes', '{:.2f} GB'):>8} | {mem_ratio:>6}")


def print_notes(size: int, cases: dict[str, dict[str, Any]]) -> None:
    for name, case in cases.items():
        note = case.get("out_of_memory") or case.get("error")
        if note:
            print(f"  * {name} at N={size:,}: {note}; not measured")


def print_agreement(size: int, cases: dict[str, dict[str, Any]]) -> None:
    ours, reference = cases["tiled"], cases.get("open_clip", {})
    if "loss" in ours and "loss" in reference:
        print(f"  N={size:,}: loss {ours['loss']:.6f} vs {reference['loss']:.6f}; "
              f"input-gradient norm {ours['grad_norm']:.6e} vs {reference['grad_norm']:.6e}; "
              f"logit-scale gradient {ours['scale_grad']:.6e} vs {reference['scale_grad']:.6e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,16384,65536",
                        help="batch sizes N, comma-separated")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--tile-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory-gb", type=float, default=24.0,
                        help="the memory a case may use; open_clip cases needing more are skipped")
    parser.add_argument("--json", action="store_true", help="also print one JSON object at the end")
    parser.add_argument("--case", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(value) for value in args.sizes.split(",")]
    if args.case:  # a subprocess: one implementation, one size
        run_case(args.case, sizes[0], args.dim, args.tile_size, args.threads)
        return

    import torch

    args.threads = args.threads or torch.get_num_threads()
    info = machine(args.threads)
    implementations = IMPLEMENTATIONS if info["open_clip"] else ("tiled",)
    print(f"machine: {info['cpu']}; {info['cores']} cores ({info['cores_usable']} usable); "
          f"{info['memory_gb']} GB memory; load average (1 min) {info['load_average_1m']}")
    print(f"versions: python {info['python']}, torch {info['torch']}, open_clip "
          f"{info['open_clip'] or 'not installed'}, contralign {info['contralign']}; "
          f"torch threads {info['torch_threads']}")
    print(f"symmetric CLIP loss, forward + backward, D={args.dim}, float32 CPU; tiled: "
          f"tile_size={args.tile_size}; peak = growth of max RSS in a fresh process per case; "
          f"ratio = tiled / open_clip")
    print(f"{'N':>7} | {'tiled':>8} | {'open_clip':>8} | {'ratio':>5} | {'tiled':>8} | "
          f"{'open_clip':>8} | {'ratio':>6}")
    print(f"{'':>7} | {'time':>8} | {'time':>8} | {'':>5} | {'peak':>8} | {'peak':>8} | "
          f"{'':>6}")
    results: list[dict[str, Any]] = []
    by_size: dict[int, dict[str, dict[str, Any]]] = {}
    for size in sizes:
        by_size[size] = {name: measure(name, size, args) for name in implementations}
        results.extend(by_size[size].values())
        print_row(size, by_size[size])
    for size in sizes:
        print_notes(size, by_size[size])
    print("agreement (same inputs on both sides):")
    for size in sizes:
        print_agreement(size, by_size[size])
    target = by_size.get(65536, {}).get("tiled", {})
    if "peak_growth_bytes" in target:
        met = target["peak_growth_bytes"] < 2 * GB
        print(f"target: tiled peak at N=65,536 under 2 GB: {gb(target['peak_growth_bytes'])}, "
              f"{'met' if met else 'NOT met'}")
    load_after = round(os.getloadavg()[0], 2)
    print(f"load average (1 min) at the end: {load_after}; timings on a busy machine are noisy")
    if args.json:
        print_json({"machine": info, "dim": args.dim, "tile_size": args.tile_size,
                    "load_average_end": load_after, "cases": results})


if __name__ == "__main__":
    main()
