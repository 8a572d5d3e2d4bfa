"""What a run records as it trains, beside its checkpoints: the metrics log, the geometry
snapshots of a fixed sample of dev pairs, and TensorBoard event files.

Only rank 0 makes a ``RunMonitor``, and only once the run has started (``RunDir.start``), so a
run that fails validation writes none of it. In the run directory:

- ``metrics.jsonl``: train lines (``loss``, its parts, ``lr``, and ``temperature`` when the
  objective has one) and eval lines (``{"step", "eval": {...}}``; the final one may carry
  ``"ci"`` and ``"confidence"``). Always written: a resume reads it.
- ``diagnostics/sample.json``: the dev pairs the snapshots embed (``training.dev.DevSample``);
  ``diagnostics/step-N.npz``: their L2-normalised float32 embeddings (``anchors``,
  ``positives``, ``(n, D)`` each) at every evaluation. The step-0 file and the newest are kept,
  the ones between are removed; a resume removes those after its checkpoint.
- ``tensorboard/``: with ``train.loggers`` naming ``tensorboard``, scalars (``train/<key>``,
  ``eval/<metric>``) and, at each evaluation, histograms of the sample's positive-pair and
  negative-pair cosine similarity; a resume purges the events after its checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from contralign.core.errors import ConfigError
from contralign.core.io import atomic_file, atomic_write_json
from contralign.encoders.model import AlignmentModel
from contralign.training.config import TrainConfig
from contralign.training.dev import DevSets
from contralign.training.layout import DIAGNOSTICS_DIR, SAMPLE_FILE, SNAPSHOT, pair_cosines
from contralign.training.rundir import log_metrics

TENSORBOARD_DIR = "tensorboard"


def check_loggers(config: TrainConfig) -> None:
    """Refuse a logger whose package is not installed, before anything is written.

    Raises:
        ConfigError: ``tensorboard`` is asked for and not installed.
    """
    if "tensorboard" in config.train.loggers and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError('train.loggers: tensorboard is not installed; pip install '
                          '"contralign[tensorboard]", or remove it from train.loggers')


def objective_temperature(objective: nn.Module) -> float | None:
    """The objective's current softmax temperature ``τ``, or None when it has none.

    Objectives hold it as ``temperature`` (a float, or a tensor property over a learned log
    scale: InfoNCE, CWCL, 1-to-K, the debiased and decoupled losses, MoCo, NT-Xent, SwAV) or as
    a logit scale ``1/τ`` (CLIP's ``logit_scale``, SigLIP's ``log_scale`` = log t).
    """
    value = getattr(objective, "temperature", None)
    if isinstance(value, Tensor):
        return float(value.detach())
    if isinstance(value, int | float):
        return float(value)
    scale = getattr(objective, "logit_scale", None)
    if isinstance(scale, Tensor):
        return 1.0 / float(scale.detach())
    log_scale = getattr(objective, "log_scale", None)
    if isinstance(log_scale, Tensor):
        return 1.0 / math.exp(float(log_scale.detach()))
    return None


class RunMonitor:
    """Rank 0's recorder: the metrics log, the snapshots, TensorBoard (see the module
    docstring).

    Args:
        run_dir: where the run writes now (``RunDir.path``).
        config: the run's config (``train.loggers``, ``eval.batch_size``).
        dev: the dev sets and their sample of pairs.
        modalities: role -> modality of the model (for ``sample.json``).
        resume_step: the checkpoint step a resumed run continues from; None for a new run.
    """

    def __init__(self, run_dir: Path, config: TrainConfig, dev: DevSets,
                 modalities: dict[str, str], resume_step: int | None = None) -> None:
        self.run_dir = run_dir
        self.dev = dev
        self.batch_size = config.eval.batch_size
        self.folder = run_dir / DIAGNOSTICS_DIR
        self.writer: Any = None
        if resume_step is not None:
            drop_snapshots_after(self.folder, resume_step)
        if dev.sample is not None:
            manifest = dev.sample.manifest(modalities)
            if _read_json(self.folder / SAMPLE_FILE) != manifest:
                # New dev pairs (eval may change on resume): the old snapshots embed others.
                drop_snapshots_after(self.folder, -1)
                atomic_write_json(self.folder / SAMPLE_FILE, manifest)
        if "tensorboard" in config.train.loggers:
            from torch.utils.tensorboard import SummaryWriter

            # A resume drops the events after its checkpoint, as truncate_metrics drops lines.
            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge)

    def train(self, entry: dict[str, Any]) -> None:
        """Log one train line (``step``, ``epoch``, losses, ``lr``, ``temperature``)."""
        log_metrics(self.run_dir, entry)
        if self.writer is not None:
            for key, value in entry.items():
                if key not in ("step", "epoch"):
                    self.writer.add_scalar(f"train/{key}", value, entry["step"])

    def evaluate(self, step: int, model: AlignmentModel,
                 confidence: float | None = None,
                 ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
        """Evaluate the dev sets (with bootstrap intervals at ``confidence``), log the eval
        line, snapshot the sample's embeddings; returns the metrics and their intervals
        (empty without ``confidence``)."""
        entry: dict[str, Any] = {"step": step}
        intervals: dict[str, tuple[float, float]] = {}
        if confidence is None:
            metrics = self.dev.evaluate(model)
            entry["eval"] = metrics
        else:
            metrics, intervals = self.dev.evaluate_with_intervals(model, confidence)
            entry.update({"eval": metrics, "ci": {k: list(v) for k, v in intervals.items()},
                          "confidence": confidence})
        log_metrics(self.run_dir, entry)
        snapshot = self.snapshot(step, model) if self.dev.sample is not None else None
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"eval/{key}", value, step)
            if snapshot is not None:
                positive, negative = pair_cosines(*snapshot)
                self.writer.add_histogram("similarity/positive_pairs", positive, step)
                self.writer.add_histogram("similarity/negative_pairs", negative, step)
            self.writer.flush()
        return metrics, intervals

    def snapshot(self, step: int, model: AlignmentModel) -> tuple[np.ndarray, np.ndarray]:
        """Write ``diagnostics/step-<step>.npz`` and prune the ones between step 0 and it."""
        anchors, positives = self.dev.embed_sample(model, self.batch_size)
        with atomic_file(self.folder / f"step-{step}.npz") as f:
            np.savez(f, anchors=anchors, positives=positives)
        for old, path in snapshots(self.folder):
            if old not in (0, step):
                path.unlink(missing_ok=True)
        return anchors, positives

    def close(self) -> None:
        """Flush and close the TensorBoard writer (before the run directory is swapped in)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None



def snapshots(folder: Path) -> list[tuple[int, Path]]:
    """The ``step-N.npz`` files in ``folder``, by step."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in folder.iterdir()
             if (m := SNAPSHOT.fullmatch(path.name))]
    return sorted(found)


def drop_snapshots_after(folder: Path, step: int) -> None:
    """Remove the snapshots of steps after ``step`` (a resume's checkpoint; -1: all)."""
    for old, path in snapshots(folder):
        if old > step:
            path.unlink(missing_ok=True)


def _read_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
