"""Read a run directory for a report: every file is optional except what makes it a run.

A run directory (``training.rundir``) holds ``run.json`` (the manifest), ``config.yaml``,
``metrics.jsonl`` (train lines ``{"step", "epoch", "loss", ..., "lr", "temperature"}`` and eval
lines ``{"step", "eval": {...}, "ci": {...}, "confidence"}``), ``environment.json`` and
``diagnostics/`` (``sample.json`` and ``step-<N>.npz`` snapshots of the sample's embeddings).
A run from before one of these files existed reads as a run without it; a malformed line or
file is one ``DataError`` naming ``file:line`` (or the file). Nothing is unpickled: the
snapshots are read with ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from contralign.core.errors import DataError
from contralign.core.outputs import RUN, is_owned
from contralign.training.layout import (
    CONFIG_FILE,
    DIAGNOSTICS_DIR,
    ENVIRONMENT_FILE,
    METRICS_FILE,
    SAMPLE_FILE,
    SNAPSHOT,
    is_run,
)


@dataclass
class EvalPoint:
    """One evaluation: ``metrics`` by name, bootstrap intervals ``ci`` (name -> (lo, hi)) when
    the run computed them at ``confidence``."""

    step: int
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    confidence: float | None = None


@dataclass
class Sample:
    """The fixed dev pairs the snapshots embed, in order (``diagnostics/sample.json``)."""

    source: str
    anchors: list[str]
    positives: list[str]
    labels: list[str] | None
    modalities: dict[str, str]


@dataclass
class Snapshot:
    """The sample embedded at ``step``: ``anchors`` and ``positives`` (n, D) float32, L2-normed;
    row i of both is pair i of the sample."""

    step: int
    anchors: np.ndarray
    positives: np.ndarray


@dataclass
class Run:
    """What a report draws from one run directory (``None`` or empty where the run lacks it).

    Attributes:
        train: the train lines' numeric values by step (``loss``, ``lr``, ``temperature``, ...).
        evals: the evaluations by step, one per step (the last line for a step wins).
        snapshots: the step-0 and newest snapshots (at most two), oldest first.
    """

    path: Path
    name: str
    manifest: dict[str, Any]
    config_text: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] | None = None
    train: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    evals: list[EvalPoint] = field(default_factory=list)
    sample: Sample | None = None
    snapshots: list[Snapshot] = field(default_factory=list)

    @property
    def final(self) -> EvalPoint | None:
        """The newest evaluation (after training, for a finished run)."""
        return self.evals[-1] if self.evals else None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one train-line value, where it was logged."""
        points = [(step, values[key]) for step, values in self.train if key in values]
        return [s for s, _ in points], [v for _, v in points]

    def eval_series(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one dev metric, where it was measured."""
        points = [(p.step, p.metrics[key]) for p in self.evals if key in p.metrics]
        return [s for s, _ in points], [v for _, v in points]


def read_run(path: str | Path) -> Run:
    """Read the run directory ``path``.

    Raises:
        DataError: ``path`` is not a run directory of contralign's, or one of its files is
            malformed (naming the file, and the line for ``metrics.jsonl``).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(folder, None, None, "not found, or not a folder (a run directory "
                        "holds run.json, config.yaml and metrics.jsonl)")
    if not is_run(folder):
        raise DataError(folder, None, None, "not a contralign run directory (no run.json, "
                        "nor config.yaml with a model or checkpoints)")
    manifest = _read_json_object(folder / RUN.manifest) if is_owned(folder, RUN) else {}
    run = Run(folder, folder.resolve().name, manifest)
    if (folder / CONFIG_FILE).is_file():
        run.config_text = _read_text(folder / CONFIG_FILE)
        run.config = _parse_config(folder / CONFIG_FILE, run.config_text)
    if (folder / ENVIRONMENT_FILE).is_file():
        run.environment = _read_json_object(folder / ENVIRONMENT_FILE)
    if (folder / METRICS_FILE).is_file():
        run.train, run.evals = read_metrics(folder / METRICS_FILE)
    diagnostics = folder / DIAGNOSTICS_DIR
    if (diagnostics / SAMPLE_FILE).is_file():
        run.sample = read_sample(diagnostics / SAMPLE_FILE)
        run.snapshots = read_snapshots(diagnostics, len(run.sample.anchors))
    return run



def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(path, None, None, f"not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise DataError(path, None, None, f"cannot read ({err.strerror})") from None


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, None, f"not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise DataError(path, None, None, "expected a JSON object")
    return data


def read_metrics(path: Path) -> tuple[list[tuple[int, dict[str, float]]], list[EvalPoint]]:
    """The train lines and evaluations of ``metrics.jsonl``, each sorted by step.

    A last line cut short (no newline, not valid JSON: a run still writing, or killed while it
    wrote) is left out with a warning; any other malformed line is an error.

    Raises:
        DataError: ``metrics.jsonl:LINE: what is wrong``.
    """
    text = _read_text(path)
    lines = text.splitlines()
    train: dict[int, dict[str, float]] = {}
    evals: dict[int, EvalPoint] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                warnings.warn(f"{path}:{number}: an incomplete last line (a run still writing, "
                              "or killed) is left out", stacklevel=2)
                break
            raise DataError(path, number, None, f"not valid JSON ({err.msg})") from None
        if not isinstance(entry, dict):
            raise DataError(path, number, None, "expected a JSON object")
        step = entry.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise DataError(path, number, "step", f"expected a step number, got {step!r}")
        if "eval" in entry:
            evals[step] = _eval_point(path, number, step, entry)
        else:  # numbers only: a later run may log a string (a phase) this report does not draw
            train[step] = {key: float(value) for key, value in entry.items()
                           if key != "step" and _is_number(value)}
    return sorted(train.items()), [evals[s] for s in sorted(evals)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _eval_point(path: Path, number: int, step: int, entry: dict[str, Any]) -> EvalPoint:
    """One eval line: metrics (numbers; null for a metric that could not be computed), and the
    optional ``ci`` intervals and ``confidence``."""
    metrics = entry["eval"]
    if not isinstance(metrics, dict):
        raise DataError(path, number, "eval", "expected an object of metric: value")
    values: dict[str, float] = {}
    for key, value in metrics.items():
        if value is None:
            continue
        if not _is_number(value):
            raise DataError(path, number, f"eval.{key}", f"expected a number, got {value!r}")
        values[key] = float(value)
    ci: dict[str, tuple[float, float]] = {}
    raw = entry.get("ci") or {}
    if not isinstance(raw, dict):
        raise DataError(path, number, "ci", "expected an object of metric: [low, high]")
    for key, bounds in raw.items():
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(_is_number, bounds))):
            raise DataError(path, number, f"ci.{key}", f"expected [low, high], got {bounds!r}")
        ci[key] = (float(bounds[0]), float(bounds[1]))
    confidence = entry.get("confidence")
    if confidence is not None and not (_is_number(confidence) and 0 < confidence < 1):
        raise DataError(path, number, "confidence", f"expected a level in (0, 1), got "
                        f"{confidence!r}")
    return EvalPoint(step, values, ci, None if confidence is None else float(confidence))


def read_sample(path: Path) -> Sample:
    """``diagnostics/sample.json``.

    Raises:
        DataError: not a JSON object with ``anchors`` and ``positives`` lists of equal length
            (and ``labels`` of that length, when given), naming the field.
    """
    data = _read_json_object(path)
    anchors, positives = data.get("anchors"), data.get("positives")
    for key, value in (("anchors", anchors), ("positives", positives)):
        if not isinstance(value, list):
            raise DataError(path, None, key, "expected a list of items")
    assert isinstance(anchors, list) and isinstance(positives, list)
    if len(anchors) != len(positives):
        raise DataError(path, None, "positives", f"{len(positives)} items for {len(anchors)} "
                        "anchors")
    labels = data.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != len(anchors)):
        raise DataError(path, None, "labels", f"expected null or a list of {len(anchors)} "
                        "labels")
    modalities = data.get("modalities") or {}
    if not isinstance(modalities, dict):
        raise DataError(path, None, "modalities", "expected an object of role: modality")
    return Sample(str(data.get("source", "")), [str(a) for a in anchors],
                  [str(p) for p in positives],
                  None if labels is None else [str(label) for label in labels],
                  {str(k): str(v) for k, v in modalities.items()})


def read_snapshots(folder: Path, n: int) -> list[Snapshot]:
    """The oldest and newest ``step-<N>.npz`` in ``folder`` (the untrained model and the latest
    evaluation; one when there is only one).

    Raises:
        DataError: a snapshot that is not an npz of two (n, D) float arrays ``anchors`` and
            ``positives`` with finite values, or that needs pickle to read.
    """
    steps = sorted(int(m.group(1)) for p in folder.iterdir()
                   if (m := SNAPSHOT.fullmatch(p.name)) and p.is_file())
    chosen = sorted({steps[0], steps[-1]}) if steps else []
    return [_read_snapshot(folder / f"step-{step}.npz", step, n) for step in chosen]


def _read_snapshot(path: Path, step: int, n: int) -> Snapshot:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key], dtype=np.float32)
                      for key in ("anchors", "positives")}
    except KeyError as err:
        raise DataError(path, None, None, f"no array {err.args[0]!r} (expected 'anchors' and "
                        "'positives')") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(path, None, None, f"not a readable .npz of plain arrays ({err})"
                        ) from None
    for key, array in arrays.items():
        if array.ndim != 2 or array.shape[0] != n:
            raise DataError(path, None, key, f"expected ({n}, D) for the {n} sample pairs, got "
                            f"{array.shape}")
        if not np.isfinite(array).all():
            raise DataError(path, None, key, "holds NaN or infinite values")
    if arrays["anchors"].shape != arrays["positives"].shape:
        raise DataError(path, None, "positives", f"shape {arrays['positives'].shape} differs "
                        f"from the anchors' {arrays['anchors'].shape}")
    return Snapshot(step, arrays["anchors"], arrays["positives"])


def final_metrics(run: Run) -> dict[str, Any]:
    """The newest evaluation as JSON-ready data: ``{"step", "metrics", "ci", "confidence"}``
    (NaN metrics as null), or an empty dict when the run has none."""
    point = run.final
    if point is None:
        return {}
    return {"step": point.step,
            "metrics": {k: (None if math.isnan(v) else v) for k, v in point.metrics.items()},
            "ci": {k: list(v) for k, v in point.ci.items()}, "confidence": point.confidence}


def _parse_config(path: Path, text: str) -> dict[str, Any]:
    """The resolved config as a dict.

    Raises:
        DataError: not YAML, or not a mapping (naming the line where YAML says).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise DataError(path, None if mark is None else mark.line + 1, None,
                        f"not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(path, None, None, "expected a mapping of config keys")
    return data
