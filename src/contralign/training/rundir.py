"""The run directory: made only once a run has really started, one writer at a time, resumed
only with the config and data it started with, replaced only when the new run is complete.

Layout::

    run.json         the manifest: format, contralign version, when, the data's fingerprint,
                     the step the run finished at (null while it runs)
    .lock            locked by the process that writes the run (released by the OS when it dies)
    config.yaml      the resolved config
    environment.json versions, machine, device and start time (written when the run starts)
    metrics.jsonl    one line per logged step and per evaluation (a new run with dev sets
                     evaluates at step 0; the final line may carry bootstrap intervals)
    diagnostics/     sample.json (the dev pairs the snapshots embed) and step-N.npz snapshots
                     of their embeddings at each evaluation (``training.monitor``)
    tensorboard/     TensorBoard event files, with ``train.loggers: [jsonl, tensorboard]``
    checkpoints/     step-N/ folders (``training.checkpoint``)
    model/           the final model folder
    *.rejects.jsonl  skipped records

``fit`` opens the run (``open_run``: every check of the output path, and of the stored config
when resuming), loads and validates data, dev sets and model, and only then calls
``RunDir.start``. A new run (also one that replaces an old run with ``--overwrite``) is prepared
in ``.NAME.partial`` beside the target: a failed start removes it and leaves nothing behind; a
fresh run's folder is renamed into place at the start, while an ``--overwrite`` run trains there
and is swapped in by ``RunDir.finish``, so until it finishes the old run stays intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from contralign.core.config import describe_validation_error, parse_yaml
from contralign.core.errors import ConfigError, ContralignError
from contralign.core.io import atomic_write_json, atomic_write_text, swap_in
from contralign.core.outputs import (
    RUN,
    OutputError,
    check_output_folder,
    hold_lock,
    is_owned,
    make_parent,
    read_manifest,
)
from contralign.data import Record, record_fingerprint
from contralign.training.config import TrainConfig
from contralign.training.layout import CONFIG_FILE, ENVIRONMENT_FILE, METRICS_FILE, is_run

Mode = Literal["fresh", "overwrite", "resume"]
RUN_FORMAT = 1
# Keys a resumed run may change: how long it trains (extend it), how often it logs, evaluates
# and checkpoints, and its CPU threads. Anything else would make the resumed run a different run
# from the one its checkpoints belong to. (output_dir: the same folder, perhaps spelled another
# way.)
RESUMABLE_KEYS = ("train.max_steps", "train.epochs", "train.log_every", "train.checkpoint_every",
                  "train.keep_checkpoints", "train.threads", "train.loggers", "eval",
                  "output_dir")


@dataclass
class RunDir:
    """Where a run writes, and how it came to be there.

    Attributes:
        target: the run directory the config names (``output_dir``).
        path: where the run writes now: ``target``, or the staging folder beside it.
        mode: ``fresh`` (a new run), ``overwrite`` (a new run replacing an old one) or
            ``resume``.
        writer: whether this process writes (rank 0); the others only read.
    """

    target: Path
    path: Path
    mode: Mode
    writer: bool
    keep_staging: bool = False  # a finished run that could not be swapped in stays there
    locks: ExitStack = field(default_factory=ExitStack)

    @property
    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path, RUN) or {}

    @contextmanager
    def guard(self) -> Iterator[RunDir]:
        """Release the locks at the end; a new run that fails removes what it staged (before
        its start, or an ``--overwrite`` run at any point: the old run stays as it was)."""
        try:
            with self.locks:
                yield self
        except BaseException:
            if self.writer and self.path != self.target and not self.keep_staging:
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    def start(self, config: TrainConfig, records: Sequence[Record]) -> None:
        """The point of no return, once config, data and model are validated: write
        ``config.yaml``, record the data's fingerprint, and put a fresh run in place."""
        if not self.writer:
            if self.mode == "fresh":
                self.path = self.target
            return
        atomic_write_text(self.path / CONFIG_FILE,
                          yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        if self.mode != "resume":
            manifest = {**self.manifest, "data_sha256": records_sha256(records),
                        "records": len(records), "finished_step": None}
            atomic_write_json(self.path / RUN.manifest, manifest)
        if self.mode == "fresh":
            try:  # the target is absent or an empty folder: one rename, which a file refuses
                os.replace(self.path, self.target)
            except OSError as err:
                raise OutputError(f"output_dir: {self.target} was filled by something else while "
                                  f"the run started ({err.strerror}); choose another output_dir"
                                  ) from None
            self.path = self.target

    def finish(self, step: int) -> None:
        """Record the final step; an ``--overwrite`` run now replaces the old run."""
        if not self.writer:
            self.path = self.target
            return
        atomic_write_json(self.path / RUN.manifest, {**self.manifest, "finished_step": step})
        if self.mode == "overwrite":
            if not is_owned(self.target, RUN) and self.target.exists():
                self.keep_staging = True
                raise OutputError(f"output_dir: {self.target} changed while the run trained "
                                  f"beside it; the new run is in {self.path}")
            swap_in(self.path, self.target)
            self.path = self.target


def open_run(config: TrainConfig, *, resume: bool, overwrite: bool, writer: bool,
             inputs: Sequence[str | Path] = ()) -> RunDir:
    """Check the run directory for this run and lock it; stage a new run beside it.

    Args:
        config: the validated config (``output_dir`` names the run directory).
        resume: continue the run there.
        overwrite: replace the run there (once the new one finishes).
        writer: this process writes the directory (rank 0); the others check only.
        inputs: the files this command read besides the config's own (the config file).

    Raises:
        ContralignError: both ``resume`` and ``overwrite``; nothing to resume; a stored
            config that differs in keys a resume may not change.
        OutputError: an output path that is not ours to write, or is in use.
    """
    target = Path(config.output_dir)
    _check_rejects(config, [*run_inputs(config), *inputs])
    if resume and overwrite:
        raise ContralignError("--resume and --overwrite: choose one (continue the run, or "
                              "replace it)")
    if resume:
        check_resumable(target, config)
        run = RunDir(target, target, "resume", writer)
        if writer:
            run.locks.enter_context(hold_lock(target, "output_dir"))
        return run
    replacing = check_output_folder(
        target, RUN, "output_dir", inputs=[*run_inputs(config), *inputs], replace=overwrite,
        flag="--overwrite to replace it (once the new run finishes), or --resume to continue")
    run = RunDir(target, target.with_name(_staging_name(target)),
                 "overwrite" if replacing else "fresh", writer)
    if writer:
        if replacing:
            run.locks.enter_context(hold_lock(target, "output_dir"))
        _make_staging(run)
    return run


def run_inputs(config: TrainConfig) -> list[str]:
    """The files and folders a run reads: data, dev sets, and a local model folder."""
    paths = [config.data.path]
    paths += [dev.path for dev in (config.eval.sts, config.eval.retrieval, config.eval.bitext)
              if dev is not None]
    if Path(config.model.name).expanduser().exists():
        paths.append(config.model.name)
    return paths


def _check_rejects(config: TrainConfig, inputs: Sequence[str | Path]) -> None:
    """``data.rejects`` must not name a file the run reads (it is written while data is read).

    Raises:
        ConfigError: it resolves to an input.
    """
    if config.data.rejects is None or config.data.rejects == os.devnull:
        return
    rejects = Path(config.data.rejects).expanduser().resolve()
    for item in inputs:
        if Path(item).expanduser().resolve() == rejects:
            raise ConfigError(f"data.rejects: {config.data.rejects} is {item}, an input of this "
                              "run; name a new file for the skipped records")


def check_resumable(target: Path, config: TrainConfig) -> None:
    """Refuse a resume with nothing to resume, or with a config that changes more than the
    ``RESUMABLE_KEYS``; the message names the keys.

    Raises:
        ContralignError: no run at ``target``, an unreadable stored config, or changed keys.
    """
    if not is_run(target):
        raise ContralignError(f"--resume: nothing to resume: {target} holds no contralign run "
                              "(drop --resume to start one)")
    stored_path = target / CONFIG_FILE
    try:
        stored = TrainConfig.model_validate(
            parse_yaml(stored_path.read_text(encoding="utf-8")) or {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ContralignError(f"{stored_path}: unreadable ({err})") from None
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, str(stored_path))) from None
    changed = changed_keys(stored.model_dump(mode="json"), config.model_dump(mode="json"))
    refused = [key for key in changed
               if not any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)]
    if refused:
        raise ConfigError(f"--resume: {', '.join(refused)}: changed since the run started "
                          f"(a resume may change only {', '.join(RESUMABLE_KEYS)}); undo the "
                          "change, or start a new run with another output_dir")


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts (a key only one has
    counts as changed)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [changed for key in keys
                for changed in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def check_same_data(run: RunDir, records: Sequence[Record], data_path: str) -> None:
    """A resumed run must read the records its checkpoints were trained on.

    Raises:
        ConfigError: the data's fingerprint differs from the one recorded at the start.
    """
    recorded = run.manifest.get("data_sha256")
    if recorded is not None and recorded != records_sha256(records):
        raise ConfigError(f"data.path: {data_path} changed since the run started ({len(records)} "
                          f"records now, {run.manifest.get('records')} then, or other texts); "
                          "resume with the same data, or start a new run")


def check_not_finished(run: RunDir, total_steps: int, has_checkpoint: bool) -> None:
    """A finished run resumes only when the config extends it and a checkpoint is left.

    Raises:
        ContralignError: the run finished at or after ``total_steps``, or cannot be extended.
    """
    finished = run.manifest.get("finished_step")
    if finished is None and (run.path / "model").is_dir() and not has_checkpoint:
        finished = total_steps  # a run from before run.json recorded its last step
    if finished is None:
        return
    if total_steps <= finished:
        raise ContralignError(f"--resume: {run.target} finished already at step {finished}; "
                              "raise train.max_steps or train.epochs to train it further")
    if not has_checkpoint:
        raise ContralignError(f"--resume: {run.target} finished at step {finished} and kept no "
                              "checkpoint to continue from (set train.checkpoint_every)")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, keep the log lines up to the checkpoint's ``step``; a line cut short by a
    kill (not valid JSON) is dropped with them."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a kill during the write
        if isinstance(entry, dict) and entry.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def write_environment(run_dir: Path, device: Any, world: int) -> None:
    """``environment.json``: the versions and machine a run started on (once per run; a
    resume keeps the first one)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    path = run_dir / ENVIRONMENT_FILE
    if path.exists():
        return

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    gpu = torch.cuda.get_device_name(device) if getattr(device, "type", "") == "cuda" else None
    atomic_write_json(path, {
        "format": 1, "contralign": installed("contralign"), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": installed("transformers"),
        "numpy": installed("numpy"), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "device": str(device), "gpu": gpu, "world_size": world,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def log_metrics(run_dir: Path, entry: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def records_sha256(records: Sequence[Record]) -> str:
    """A fingerprint of the records (items, labels, scores, lines), equal across machines."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(record_fingerprint(record).encode())
    return digest.hexdigest()


def _staging_name(target: Path) -> str:
    return f".{target.name}.partial"



def _make_staging(run: RunDir) -> None:
    """Create ``run.path`` with its manifest and lock it; a stale one (ours, unlocked: left by
    a killed start) is removed first."""
    staging = run.path
    if staging.exists():
        if not (staging.is_dir() and (is_owned(staging, RUN) or not any(staging.iterdir()))):
            raise OutputError(f"output_dir: {staging} is in the way and is not contralign's; "
                              "move it, or choose another output_dir")
        with hold_lock(staging, "output_dir"):  # refuses one that a live run holds
            pass
        shutil.rmtree(staging)
    make_parent(staging, "output_dir")
    try:
        staging.mkdir()
    except FileExistsError:
        raise OutputError(f"output_dir: {run.target} is being started by another contralign "
                          "process; wait for it, or choose another output_dir") from None
    except OSError as err:
        raise OutputError(f"output_dir: cannot create {staging} ({err.strerror})") from None
    from contralign import __version__

    atomic_write_json(staging / RUN.manifest, {
        "run_format": RUN_FORMAT, "contralign": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    run.locks.enter_context(hold_lock(staging, "output_dir"))
