"""The names of a run directory's files and what recognises a run of ours: one place for the
trainer that writes them (``training.rundir``, ``training.monitor``) and the report that reads
them (``report.runs``). Light on purpose (no torch): ``contralign report`` imports it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from contralign.core.outputs import RUN, is_owned

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
DIAGNOSTICS_DIR = "diagnostics"  # sample.json and step-<N>.npz snapshots
SAMPLE_FILE = "sample.json"
SNAPSHOT = re.compile(r"step-(\d+)\.npz")


def is_run(folder: Path) -> bool:
    """Ours: a run.json, or a run from before run.json (config.yaml and checkpoints or a
    model folder of ours)."""
    if is_owned(folder, RUN):
        return True
    legacy = (folder / CONFIG_FILE).is_file() and ((folder / "checkpoints").is_dir()
                                                   or (folder / "model" / "contralign.json")
                                                   .is_file())
    return folder.is_dir() and legacy


def pair_cosines(anchors: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of the ``n`` positive pairs ``(n,)`` and of the ``n (n - 1)`` other
    (anchor, positive) combinations ``(n (n - 1),)`` (an in-batch objective's negatives), from
    unit rows ``(n, D)``."""
    similarity = anchors.astype(np.float64) @ positives.astype(np.float64).T  # (n, n)
    off_diagonal = ~np.eye(len(similarity), dtype=bool)
    return np.diag(similarity).copy(), similarity[off_diagonal]
