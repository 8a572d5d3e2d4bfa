"""What every benchmark shares: the machine report, the real-data folder and the output helpers.

A benchmark runs contralign and the reference library on the same model, data and settings in
one process, and reports both figures and their ratio (STYLE.md, "Tests that can fail"). Figures
from a busy machine are noisy; the machine report (load average included) says how busy it was.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def data_dir() -> Path:
    """The real-data folder ``../shared/data``; exits with a one-line message when it is absent."""
    if not SHARED_DATA.is_dir():
        sys.exit(f"benchmark: real data folder {SHARED_DATA} is absent; this benchmark needs it")
    return SHARED_DATA


def read_tsv(path: Path, quoting: int = csv.QUOTE_MINIMAL) -> list[dict[str, str]]:
    """The rows of a tab-separated file with a header (``require``-d first), as dicts.

    STS-B keeps literal quote characters in its sentences: read it with ``csv.QUOTE_NONE``.
    """
    with open(require(path), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=quoting))


def require(path: Path) -> Path:
    """``path`` itself; exits with a one-line message when the file is missing."""
    if not path.is_file():
        sys.exit(f"benchmark: data file {path} is missing")
    return path


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(threads: int | None = None) -> dict[str, Any]:
    """Describe the machine and library versions; sets torch's thread count when given.

    Args:
        threads: torch CPU threads for the whole process (both sides); None keeps torch's default.
    """
    import sentence_transformers
    import torch
    import transformers

    import contralign

    if threads:
        torch.set_num_threads(threads)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "contralign": contralign.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def print_machine(info: dict[str, Any]) -> None:
    print(f"machine: {info['cpu']}; {info['cores']} cores ({info['cores_usable']} usable); "
          f"load average (1 min) {info['load_average_1m']}")
    print(f"versions: python {info['python']}, torch {info['torch']}, transformers "
          f"{info['transformers']}, sentence-transformers {info['sentence_transformers']}, "
          f"contralign {info['contralign']}; torch threads {info['torch_threads']}")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; returns ``(seconds, result)``."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def ratio(ours: float, reference: float) -> float:
    return ours / reference if reference else float("nan")


def print_json(result: dict[str, Any]) -> None:
    """The ``--json`` output: one JSON object on one line, last on stdout."""
    print(json.dumps(result, sort_keys=False, default=str))


def cifar_per_class(per_class: int, skip: int = 0) -> tuple[Any, Any, Any]:
    """``(images (N, 32, 32, 3) uint8, labels (N,) int64, class names (10,))`` from
    ``../shared/data/images/cifar10-part-a.npz``: for each class that has images, its images
    number ``skip`` to ``skip + per_class - 1`` in file order (a deterministic per-class split:
    two calls with disjoint ranges give disjoint images). Exits with a one-line message when the
    file is absent or a class has fewer images than asked for."""
    import numpy as np

    path = require(data_dir() / "images" / "cifar10-part-a.npz")
    with np.load(path) as data:
        images, labels, classes = data["images"], data["labels"], data["classes"]
    rows = []
    for label in np.unique(labels):
        own = np.flatnonzero(labels == label)
        if len(own) < skip + per_class:
            sys.exit(f"benchmark: class {classes[label]} has {len(own)} images in {path.name}; "
                     f"asked for images {skip} to {skip + per_class - 1}")
        rows.append(own[skip:skip + per_class])
    chosen = np.concatenate(rows)
    return images[chosen], labels[chosen].astype(np.int64), classes
