"""``fit(config) -> RunResult``: the training loop, with logging, evaluation and checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from contralign.core.config import describe_validation_error, load_config
from contralign.core.dist import barrier, is_main_process, world_size
from contralign.core.errors import ConfigError
from contralign.core.io import remove_temporaries
from contralign.core.towers import modality_of
from contralign.data import (
    PairBatcher,
    Record,
    RecordSet,
    load_records,
    rejects_path_for,
)
from contralign.encoders.loading import Tower
from contralign.training.batches import loader_for, to_device
from contralign.training.build import (
    build_model,
    build_task,
    check_compiler,
    check_fast_paths,
    check_modalities,
    check_roles,
)
from contralign.training.cached import ChunkSize, accumulate_gradients
from contralign.training.checkpoint import (
    TrainState,
    list_checkpoints,
    load_latest,
    prune_checkpoints,
    save_checkpoint,
)
from contralign.training.config import TrainConfig
from contralign.training.dev import DevSets
from contralign.training.distributed import (
    broadcast_state,
    destroy_process_group,
    init_process_group,
    resolve_device,
    sync_random_state,
)
from contralign.training.layout import METRICS_FILE
from contralign.training.monitor import RunMonitor, check_loggers, objective_temperature
from contralign.training.optim import build_optimizer, build_scheduler
from contralign.training.rundir import (
    RunDir,
    check_not_finished,
    check_same_data,
    open_run,
    records_sha256,
    truncate_metrics,
    write_environment,
)
from contralign.training.task import ContrastiveTask


@dataclass
class RunResult:
    """What a run leaves behind."""

    run_dir: Path
    model_dir: Path
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    skipped_records: int = 0
    rejects_path: Path | None = None
    seconds: float = 0.0
    pairs_per_second: float = 0.0
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # with eval.ci


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    config: TrainConfig | dict[str, Any] | str | Path, *, resume: bool = False,
    overwrite: bool = False, progress: bool = True, encoder: Tower | None = None,
    inputs: Sequence[str | Path] = (),
) -> RunResult:
    """Train a text tower on ``config.data`` and save the run directory.

    Nothing is written until config, data, dev sets and model are validated; a new run is
    prepared beside ``output_dir`` and appears there only once it has started, and an
    ``overwrite`` run replaces the old run only when it finishes (``training.rundir``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls ``fit``: it joins the process
    group (gloo on CPUs, NCCL on GPUs) and leaves it at the end; each process embeds its share
    of every batch, and only rank 0 writes the run directory (``training.distributed``).

    Args:
        config: the run: a ``TrainConfig``, a dict of the same keys, or a YAML file.
        resume: continue from the latest intact checkpoint in ``config.output_dir``.
        overwrite: replace an existing run directory (of ours) instead of refusing.
        progress: show a progress bar.
        encoder: an already-loaded starting encoder (skips loading ``config.model.name``).
        inputs: other files the caller read (its config file): never written over.

    Raises:
        ContralignError: bad data, a missing model, an output directory that is not ours to
            write, nothing to resume, or a resume with a changed config.
    """
    if isinstance(config, str | Path):
        inputs = [*inputs, config]
    config = _as_config(config)
    check_loggers(config)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)
    _check_precision(config, device)
    check_compiler(config, device)
    created = init_process_group(device)
    try:
        run = open_run(config, resume=resume, overwrite=overwrite, writer=is_main_process(),
                       inputs=inputs)
        with run.guard():
            return _fit(config, device, run, progress=progress, encoder=encoder)
    finally:
        if created:
            destroy_process_group()


def _fit(config: TrainConfig, device: torch.device, run: RunDir, *, progress: bool,
         encoder: Tower | None) -> RunResult:
    main = run.writer
    seed_everything(config.train.seed)
    # Every rank reads the records; only rank 0 of a new run writes the rejects file (a resumed
    # run's was written when it started, from the same data: checked in _restore).
    writes_rejects = main and run.mode != "resume"
    data = config.data if writes_rejects else config.data.model_copy(
        update={"rejects": os.devnull})
    records = load_records(data, rejects_dir=run.path)
    dev = DevSets.from_config(config.eval, rejects_dir=run.path) if main else DevSets()
    model = build_model(config, encoder)
    task = build_task(config, model).to(device)
    check_roles(config, records.roles)
    check_modalities(config, model, records.modalities)
    check_fast_paths(config, model, world_size())
    steps = total_steps(config, len(records.records))
    optimizer = build_optimizer(task, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, steps)
    # Seed again once the model is built, as transformers' Trainer does when training starts: a
    # model that draws while loading (a fresh head) must not shift the dropout draws.
    seed_everything(config.train.seed)
    state = _restore(run, config, records.records, task, optimizer, scheduler, steps)
    barrier()  # every rank validated and restored before rank 0 puts the run in place
    run.start(config, records.records)
    broadcast_state(task)  # identical starting weights (a fresh head is drawn on every rank)
    monitor = _open_monitor(run, config, dev, model, device, state.step) if main else None
    try:
        if monitor is not None and dev and state.step == 0 \
                and (run.mode != "resume" or not _evaluated_at(run.path, 0)):
            monitor.evaluate(0, model)  # the untrained model, the start of every curve
        started = time.perf_counter()
        pairs = _train(task, records, config, optimizer, scheduler, state, steps, run.path,
                       monitor, progress and main)
        seconds = time.perf_counter() - started
        barrier()
        metrics: dict[str, float] = {}
        intervals: dict[str, tuple[float, float]] = {}
        if monitor is not None and dev:
            metrics, intervals = monitor.evaluate(state.step, model, config.eval.ci)
    finally:
        if monitor is not None:
            monitor.close()
    if main:
        model.save(run.path / "model",
                     extra={"training": _training_fingerprint(config, records, state)})
    run.finish(state.step)
    barrier()  # when fit returns on any rank, the model folder is complete
    rejects = rejects_path_for(config.data, run.path) if main and records.skipped else None
    return RunResult(run.path, run.path / "model", state.step, metrics, records.skipped,
                     rejects, seconds, pairs / seconds if seconds else 0.0, intervals)


def _open_monitor(run: RunDir, config: TrainConfig, dev: DevSets, model: Any,
                  device: torch.device, step: int) -> RunMonitor:
    """Rank 0's recorder, once the run has started at ``step``; ``environment.json`` with
    it."""
    write_environment(run.path, device, world_size())
    modalities = {role: modality_of(model.side(role)) for role in ("anchor", "positive")}
    resumed = step if run.mode == "resume" else None
    return RunMonitor(run.path, config, dev, modalities, resume_step=resumed)


def _evaluated_at(run_dir: Path, step: int) -> bool:
    return any(entry.get("step") == step and "eval" in entry for entry in _metric_lines(run_dir))


def _metric_lines(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _restore(
    run: RunDir, config: TrainConfig, records: Sequence[Record], task: ContrastiveTask,
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int,
) -> TrainState:
    """A new run's starting state, or a resumed run's newest intact checkpoint (after checking
    that it reads the same data and is not finished)."""
    if run.mode != "resume":
        return TrainState()
    checkpoints = run.path / "checkpoints"
    if run.writer:  # what a kill left half-written: ours, and never used
        remove_temporaries(run.path)
        remove_temporaries(checkpoints)
    check_same_data(run, records, config.data.path)
    check_not_finished(run, steps, bool(list_checkpoints(checkpoints)))
    state = load_latest(checkpoints, task, optimizer, scheduler) or TrainState()
    if steps < state.step:
        raise ConfigError(f"train.max_steps: the run would end at step {steps}, before its "
                          f"checkpoint at step {state.step}")
    if run.writer:
        truncate_metrics(run.path / METRICS_FILE, state.step)
    return state


def _check_precision(config: TrainConfig, device: torch.device) -> None:
    if config.train.precision == "bf16" and device.type == "cuda" \
            and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: bf16 is not supported on this GPU; use fp32")


def _as_config(config: TrainConfig | dict[str, Any] | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        try:
            return TrainConfig.model_validate(config)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, "config")) from None
    return load_config(TrainConfig, config)


def draw_loader_seed() -> None:
    """Take one number from torch's global generator, as a DataLoader does at each epoch start.

    PyTorch's DataLoader draws its workers' base seed from the global generator whenever an
    epoch's iterator starts. Drawing the same keeps the dropout masks of a run identical to a
    DataLoader-based trainer's (transformers, sentence-transformers) with the same seed.
    """
    torch.empty((), dtype=torch.int64).random_()


def _train(
    task: ContrastiveTask, records: RecordSet, config: TrainConfig,
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
    state: TrainState, total_steps: int, run_dir: Path, monitor: RunMonitor | None,
    progress: bool,
) -> int:
    """Run optimiser steps until ``total_steps``; returns the number of pairs trained on."""
    loop = config.train
    batcher = PairBatcher(records.records, loop.batch_size, loop.seed, drop_last=loop.drop_last)
    _check_shards(batcher, world_size())
    device = next(task.parameters()).device
    loader = loader_for(task, config, batcher, device)
    task.train()
    pairs = 0
    with _progress_bar(progress, total_steps, state.step) as advance:
        while state.step < total_steps:
            if state.batch_in_epoch == 0:
                draw_loader_seed()
            for batch in loader.batches(state.epoch, start=state.batch_in_epoch):
                losses = _step(task, to_device(batch, device), optimizer, scheduler, config)
                pairs += int(batch["anchor_ids"].shape[0])
                state.step += 1
                state.batch_in_epoch += 1
                advance(losses["loss"])
                _after_step(task, losses, config, state, optimizer, scheduler, run_dir, monitor,
                            last=state.step >= total_steps)
                if state.step >= total_steps:
                    break
            if state.batch_in_epoch >= len(batcher):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return pairs


def _step(
    task: ContrastiveTask, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR, config: TrainConfig,
) -> dict[str, float]:
    grad_cache = config.train.grad_cache
    losses = step_gradients(task, batch, grad_cache.chunk_size if grad_cache.enabled else None)
    apply_gradients(task, optimizer, scheduler, config.optim.max_grad_norm)
    return losses


def step_gradients(task: ContrastiveTask, batch: dict[str, Any],
                   chunk_size: ChunkSize | None) -> dict[str, float]:
    """One step's losses, its gradients accumulated into ``.grad`` (averaged over ranks), with
    the gradient cache's ``chunk_size`` (None: no cache)."""
    if world_size() > 1:
        sync_random_state(next(task.parameters()).device)  # rank 0's: resumes draw the same
    return accumulate_gradients(task, batch, chunk_size=chunk_size)


def apply_gradients(
    task: ContrastiveTask, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR, max_grad_norm: float | None,
) -> None:
    """The rest of a step once ``.grad`` holds the batch's gradients: clip their norm, step
    the optimiser and the schedule, clear the gradients, move the momentum tower."""
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(task.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    task.after_step()


def _check_shards(batcher: PairBatcher, world: int) -> None:
    """Every rank needs at least one row of every batch.

    Raises:
        ConfigError: a batch with fewer records than processes.
    """
    if world == 1:
        return
    smallest = min(batcher.batch_size, len(batcher.records) % batcher.batch_size
                   or batcher.batch_size)
    if batcher.drop_last:
        smallest = batcher.batch_size
    if smallest < world:
        raise ConfigError(f"train.batch_size: a batch of {smallest} records cannot be split over "
                          f"{world} processes (set train.drop_last: true, or a batch size whose "
                          "last batch holds at least one record per process)")


def _after_step(
    task: ContrastiveTask, losses: dict[str, float], config: TrainConfig, state: TrainState,
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
    run_dir: Path, monitor: RunMonitor | None, *, last: bool = False,
) -> None:
    loop = config.train
    if monitor is None:  # only rank 0 logs, evaluates and writes checkpoints
        return
    if state.step % loop.log_every == 0:
        entry = {"step": state.step, "epoch": state.epoch, **losses,
                 "lr": scheduler.get_last_lr()[0]}
        temperature = objective_temperature(task.objective)
        if temperature is not None:
            entry["temperature"] = temperature
        monitor.train(entry)
    # the last step's evaluation is fit's own (with intervals): not twice in metrics.jsonl
    if config.eval.every_steps and state.step % config.eval.every_steps == 0 and monitor.dev \
            and not last:
        monitor.evaluate(state.step, task.model)
        task.train()
    if loop.checkpoint_every and state.step % loop.checkpoint_every == 0:
        folder = run_dir / "checkpoints" / f"step-{state.step}"
        save_checkpoint(folder, task, optimizer, scheduler, state)
        prune_checkpoints(run_dir / "checkpoints", loop.keep_checkpoints)


def total_steps(config: TrainConfig, n_records: int) -> int:
    """The optimiser steps of a run on ``n_records``: ``train.max_steps``, else the epochs'.

    Raises:
        ConfigError: a batch larger than the records with ``drop_last`` on.
    """
    steps_per_epoch = _steps_per_epoch(n_records, config)
    return config.train.max_steps or steps_per_epoch * config.train.epochs


def _steps_per_epoch(n_records: int, config: TrainConfig) -> int:
    size = config.train.batch_size
    steps = n_records // size if config.train.drop_last else math.ceil(n_records / size)
    if steps == 0:
        raise ConfigError(f"train.batch_size: {size} is larger than the {n_records} records "
                          "with drop_last on")
    return steps


def _training_fingerprint(config: TrainConfig, records: RecordSet, state: TrainState) -> dict:
    return {"config_sha256": hashlib.sha256(
                json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest(),
            "data_sha256": records_sha256(records.records), "records": len(records.records),
            "steps": state.step, "base_model": config.model.name}


@contextmanager
def _progress_bar(show: bool, total: int, done: int) -> Iterator[Any]:
    if not show:
        yield lambda loss: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task_id = bar.add_task("train", total=total, completed=done, loss="…")
        try:
            yield lambda loss: bar.update(task_id, advance=1, loss=f"{loss:.4f}")
        except BaseException:
            bar.live.transient = True  # a failed run's error stays the one line it prints
            raise
