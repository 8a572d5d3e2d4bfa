"""``contralign check``: do the fast paths train like the plain path on this configuration?

A few optimiser steps of a training config, from the same weights on the same batches, along:

* ``plain``: one process, the whole batch, ``task(batch)["loss"].backward()``: the reference;
* ``cached``: the gradient cache (``training.cached``) in chunks smaller than the batch;
* ``tiled``: the objective's tiled loss (``objectives.tiled``), where the objective has one;
* ``distributed``: two gloo processes launched by ``torchrun``, each embedding half of every
  batch (``training.distributed``); this module's ``main`` is their worker;
* ``compiled``: the plain path with the towers under ``torch.compile`` (``train.compile``);
  checked by default only when the config turns it on (compiling takes a minute).

Each path is compared with ``plain`` on the loss of every step, the gradient of the first step
(before clipping: AdamW divides a gradient by its own scale, so a gradient off by a constant
factor would leave the weights as they are), and the update ``θ_T − θ_0`` of every tensor after
the last step (the weights themselves hardly move in a few steps).

The check compares arithmetic, so every path runs with dropout off (masks are drawn per chunk
and per process, so with dropout on the paths agree only in distribution), in float32, on the
CPU. Text views are drawn from the batch position, so every path sees the same ones.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from contralign.core.dist import is_main_process
from contralign.core.errors import ConfigError
from contralign.data import PairBatcher, Record, load_records
from contralign.objectives import OBJECTIVES
from contralign.training.batches import collator_for
from contralign.training.build import (
    batchnorm_towers,
    build_model,
    build_task,
    check_compiler,
)
from contralign.training.config import ObjectiveConfig, TrainConfig
from contralign.training.distributed import (
    destroy_process_group,
    init_process_group,
)
from contralign.training.loop import (
    apply_gradients,
    draw_loader_seed,
    seed_everything,
    step_gradients,
    total_steps,
)
from contralign.training.optim import build_optimizer, build_scheduler
from contralign.training.task import ContrastiveTask

PATHS = ("cached", "tiled", "distributed", "compiled")
SETTINGS = {"cached": "chunks of {}", "tiled": "tiles of {}", "distributed": "{} processes",
            "compiled": "torch.compile"}
# The largest relative difference of a path that agrees. Float32 summation order alone gives up
# to 2e-4 (measured on the tiny test BERT, wordllama-256 at batch 64 to 4,096 and MiniLM at
# batch 32: README, "Checking a configuration"); an error (a gradient scaled by 1 %, one row's
# gradient wrong) gives 1e-2 and more.
TOLERANCE = 1e-3
# The compiled path's: inductor also reorders the reductions inside each layer (BatchNorm's
# statistics, the convolutions' backward). On simclr-images (Fashion-MNIST, batch 256, 3 steps)
# it lands 2.6e-3 from eager in the stem BatchNorm's gradient (loss 2e-7, updates 1.3e-4), where
# eager float32 itself lies up to 3.2e-3 from float64 (a step of that ResNet, largest entry).
PATH_TOLERANCES = {"compiled": 5e-3}
# Each tensor is compared with its own norm, or with this share of the norm of all tensors when
# that is larger: a small tensor (a temperature, a bias) holds a sum with much cancellation.
NOISE_FLOOR = 1e-2
# A gradient below this share of the norm of all gradients is rounding noise: the true gradient
# is 0 (the attention key bias: a softmax ignores a shift). AdamW divides it by its own scale,
# so its update differs in every run; such tensors are left out of the parameter comparison.
GRADIENT_NOISE = 1e-6


@dataclass
class Trace:
    """One path's run: the loss of each step, the first step's gradients (before clipping), and
    every floating-point tensor of the task's state after the last step."""

    losses: list[float]
    grads: dict[str, Tensor]
    final: dict[str, Tensor]


@dataclass
class PathResult:
    """One path against ``plain``: the largest relative differences (None when not run), the
    verdict (None when the path does not apply), and why it was not run or how it failed."""

    setting: str
    loss: float | None = None
    gradient: float | None = None
    parameters: float | None = None
    worst_tensor: str | None = None
    ok: bool | None = None
    seconds: float = 0.0
    reason: str | None = None


@dataclass
class CheckReport:
    """Every path's result, and what the check changed in the config to compare them."""

    objective: str
    steps: int
    batch_size: int
    losses: list[float]  # the plain path's
    seconds: float
    tolerance: float
    paths: dict[str, PathResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(result.ok is not False for result in self.paths.values())

    def to_json(self) -> dict[str, Any]:
        paths = {name: {k: round(v, 2) if k == "seconds" else v for k, v in vars(r).items()}
                 for name, r in self.paths.items()}
        return {**paths, "ok": self.ok, "objective": self.objective, "steps": self.steps,
                "batch_size": self.batch_size, "tolerance": self.tolerance,
                "plain": {"losses": self.losses, "seconds": round(self.seconds, 2)},
                "notes": self.notes, "dropout": "off", "precision": "fp32", "device": "cpu"}


def default_paths(config: TrainConfig) -> list[str]:
    """The paths ``check`` compares unless told: all but ``compiled``, and that one too when
    ``config`` compiles."""
    return [name for name in PATHS if name != "compiled" or config.train.compile]


def check(config: TrainConfig, *, steps: int = 3, paths: Sequence[str] | None = None,
          tolerance: float = TOLERANCE) -> CheckReport:
    """Run ``steps`` optimiser steps of ``config`` along ``plain`` and each of ``paths``
    (default: ``default_paths``), and compare each with ``plain``. Nothing is written to
    ``config.output_dir``.

    Raises:
        ConfigError: an unknown path, or fewer than one step.
        ContralignError: bad data or a model that cannot be loaded (as ``fit`` raises them).
    """
    paths = default_paths(config) if paths is None else paths
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        raise ConfigError(f"--paths: unknown path {unknown[0]!r}; known: {', '.join(PATHS)}")
    if steps < 1:
        raise ConfigError(f"--steps: must be at least 1, got {steps}")
    sizes = split_sizes(config)
    config, notes = reference_config(config)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    records = load_records(config.data).records
    task = build_check_task(config)
    initial = {name: value.detach().clone() for name, value in task.state_dict().items()}
    if still_random(task, next(_batches(task, records, config))):
        notes.append("the tower draws random numbers even with dropout off: paths can differ "
                     "by that alone")
    started = time.perf_counter()
    plain = run_steps(config, records, initial, steps)
    report = CheckReport(config.objective.name, steps, config.train.batch_size, plain.losses,
                         time.perf_counter() - started, tolerance, notes=notes)
    normalised = batchnorm_towers(task.model)
    for name in paths:
        started = time.perf_counter()
        if name in ("cached", "distributed") and (why := _refused(config, normalised, name)):
            report.paths[name] = PathResult("-", reason=why)
            continue
        result = _run_path(name, config, records, initial, steps, sizes[name])
        if isinstance(result, Trace):
            setting = SETTINGS[name].format(sizes[name])
            allowed = max(tolerance, PATH_TOLERANCES.get(name, tolerance))
            if allowed != tolerance:
                setting += f" (tolerance {allowed:g})"
            result = compare(result, plain, initial, setting, allowed)
        result.seconds = time.perf_counter() - started
        report.paths[name] = result
    return report


def _refused(config: TrainConfig, normalised: list[str], path: str) -> str | None:
    """Why training refuses ``path`` (cached or distributed) for this config, if it does."""
    if normalised:
        return (f"tower {normalised[0]} trains BatchNorm layers, which training refuses on the "
                f"{path} path")
    if config.objective.bn_splits > 1:
        return f"objective.bn_splits embeds in groups, which training refuses on the {path} path"
    return None


def reference_config(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """The plain path's config (no cache, untiled, eager, fp32, CPU, nothing written), and a
    note for each setting of ``config`` that no path keeps (the cache, tiling and compilation
    have their own)."""
    train = config.train
    notes = [f"{key}: {old} -> {new}" for key, old, new in (
        ("train.precision", train.precision, "fp32"), ("train.device", train.device, "cpu"),
        ("train.compile", train.compile, False))
        if old != new]
    objective = config.objective.model_dump()
    if "tiled" in objective:
        objective["tiled"] = False
    data = config.model_dump()
    data.update(objective=objective, output_dir=os.devnull, eval={},
                data={**data["data"], "rejects": os.devnull})
    data["train"].update(grad_cache={"enabled": False}, precision="fp32", device="cpu",
                         checkpoint_every=0, compile=False)
    return TrainConfig.model_validate(data), notes


def split_sizes(config: TrainConfig) -> dict[str, int]:
    """Rows per chunk (``cached``) and per tile (``tiled``): the config's own when it turns
    them on and they split the batch, else a third of the batch (two or three pieces, the last
    one shorter when the batch does not divide). ``distributed``: the number of processes."""
    batch = config.train.batch_size
    cache, params = config.train.grad_cache, config.objective.params
    chunk = cache.chunk_size if cache.enabled and isinstance(cache.chunk_size, int) else batch
    tile = int(params.get("tile_size", batch)) if params.get("tiled") else batch
    third = math.ceil(batch / 3)
    return {"cached": chunk if chunk < batch else third,
            "tiled": tile if tile < batch else third, "distributed": 2, "compiled": batch}


def build_check_task(config: TrainConfig, state: dict[str, Tensor] | None = None
                     ) -> ContrastiveTask:
    """The task ``fit`` builds from ``config`` (seeded first), dropout off, in training mode,
    with ``state`` loaded when given."""
    seed_everything(config.train.seed)
    task = build_task(config, build_model(config))
    turn_off_dropout(task)
    if state is not None:
        task.load_state_dict(state)
    return task.train()


def turn_off_dropout(module: nn.Module) -> int:
    """Set every dropout probability in ``module`` to 0: each dropout layer's ``p``, and the
    float attributes named ``*dropout*`` that some attention implementations read instead (on
    modules and on a transformers ``config``). Returns how many were above 0."""
    changed = 0
    for child in module.modules():
        if isinstance(child, nn.modules.dropout._DropoutNd):
            changed += child.p > 0
            child.p = 0.0
        config = getattr(child, "config", None)
        for owner in (child,) if config is None else (child, config):
            for name, value in list(vars(owner).items()):
                if "dropout" in name and isinstance(value, float) and value > 0:
                    setattr(owner, name, 0.0)
                    changed += 1
    return changed


@torch.no_grad()
def still_random(task: ContrastiveTask, batch: dict[str, Any]) -> bool:
    """Whether the task's tower embeds the same rows differently twice in training mode."""
    role = task.roles(batch)[0]
    first = task.embed_role(role, slice(0, 4))  # (≤4, D)
    return not torch.equal(first, task.embed_role(role, slice(0, 4)))


def run_steps(config: TrainConfig, records: Sequence[Record], state: dict[str, Tensor],
              steps: int, *, chunk_size: int | None = None) -> Trace:
    """``steps`` optimiser steps of ``config`` from ``state`` on the batches ``fit`` draws, in
    one process or on every rank of a process group (random state synchronised, gradients
    averaged, as ``fit`` does); ``chunk_size``: the gradient cache's, None for none."""
    task = build_check_task(config, state)
    optimizer = build_optimizer(task, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total_steps(config, len(records)))
    seed_everything(config.train.seed)  # as fit does once the model is built
    losses: list[float] = []
    grads: dict[str, Tensor] = {}
    for step, batch in zip(range(steps), _batches(task, records, config), strict=False):
        loss = step_gradients(task, batch, chunk_size)
        losses.append(loss["loss"])
        if step == 0:
            grads = {name: p.grad.detach().clone() for name, p in task.named_parameters()
                     if p.grad is not None}
        apply_gradients(task, optimizer, scheduler, config.optim.max_grad_norm)
    final = {name: value.detach().clone() for name, value in task.state_dict().items()}
    return Trace(losses, grads, final)


def _batches(task: ContrastiveTask, records: Sequence[Record], config: TrainConfig
             ) -> Iterator[dict[str, Any]]:
    """``fit``'s batches, epoch after epoch, with its random draw at each epoch start."""
    loop = config.train
    batcher = PairBatcher(records, loop.batch_size, loop.seed, drop_last=loop.drop_last)
    collator = collator_for(task, config)  # as fit: each process preprocesses its own rows
    for epoch in itertools.count():
        draw_loader_seed()
        for index, batch_records in enumerate(batcher.batches(epoch)):
            yield collator(batch_records, (loop.seed, epoch, index))


def _run_path(name: str, config: TrainConfig, records: Sequence[Record],
              state: dict[str, Tensor], steps: int, size: int) -> Trace | PathResult:
    """One path's trace, or the result of a path that does not apply or failed."""
    objective = config.objective.name
    if name == "cached":
        return run_steps(config, records, state, steps, chunk_size=size)
    if name == "compiled":
        compiled = config.model_copy(
            update={"train": config.train.model_copy(update={"compile": True})})
        check_compiler(compiled, torch.device("cpu"))
        return run_steps(compiled, records, state, steps)
    if name == "tiled":
        if not OBJECTIVES[objective].tiled:
            tiled = [n for n, info in OBJECTIVES.items() if info.tiled]
            return PathResult("-", reason=f"{objective} has no tiled loss ({', '.join(tiled)} "
                                          "have one)")
        params = {**config.objective.model_dump(), "tiled": True, "tile_size": size}
        tiled_config = config.model_copy(update={"objective": ObjectiveConfig(**params)})
        return run_steps(tiled_config, records, state, steps)
    single = _single_record_batch(len(records), config, steps)
    if single is not None:
        return PathResult("-", reason=f"batch {single} holds 1 record: it cannot be split "
                                      f"over {size} processes")
    try:
        return run_distributed(config, state, steps, size)
    except RuntimeError as err:
        return PathResult(SETTINGS[name].format(size), ok=False, reason=f"failed: {err}")


def _single_record_batch(n_records: int, config: TrainConfig, steps: int) -> int | None:
    """The number (from 1) of the first of ``steps`` batches that holds a single record."""
    size = config.train.batch_size
    rest = n_records % size if not config.train.drop_last else 0
    sizes = [size] * (n_records // size) + ([rest] if rest else [])
    used = itertools.islice(itertools.cycle(sizes), steps)
    return next((i + 1 for i, rows in enumerate(used) if rows < 2), None)


def compare(trace: Trace, plain: Trace, initial: dict[str, Tensor], setting: str,
            tolerance: float) -> PathResult:
    """A path's trace against ``plain``'s, both started from ``initial``."""
    loss = max(abs(a - e) / max(abs(e), 1e-12)
               for a, e in zip(trace.losses, plain.losses, strict=True))
    gradient, worst_gradient = relative_difference(trace.grads, plain.grads)
    noise = noise_tensors(plain.grads)
    parameters, worst_parameter = relative_difference(
        *({name: value - initial[name] for name, value in run.final.items()
           if value.is_floating_point() and name not in noise} for run in (trace, plain)))
    return PathResult(setting, loss, gradient, parameters,
                      worst_gradient if gradient > parameters else worst_parameter,
                      ok=max(loss, gradient, parameters) <= tolerance)


def noise_tensors(grads: dict[str, Tensor]) -> set[str]:
    """The tensors whose gradient is below ``GRADIENT_NOISE`` of the norm of all gradients."""
    norms = {name: float(grad.double().norm()) for name, grad in grads.items()}
    total = math.sqrt(sum(norm * norm for norm in norms.values()))
    return {name for name, norm in norms.items() if norm <= GRADIENT_NOISE * total}


def relative_difference(actual: dict[str, Tensor], expected: dict[str, Tensor]
                        ) -> tuple[float, str | None]:
    """The largest ``‖a − e‖ / max(‖e‖, NOISE_FLOOR · ‖E‖)`` over the tensors of ``expected``
    (``‖E‖``: the norm of all of them), and that tensor's name; ``inf`` and the first tensor
    that one side lacks or holds in another shape."""
    for name in sorted(set(actual) | set(expected)):
        if name not in actual or name not in expected or \
                actual[name].shape != expected[name].shape:
            return math.inf, name
    norms = {name: float(value.double().norm()) for name, value in expected.items()}
    floor = NOISE_FLOOR * math.sqrt(sum(norm * norm for norm in norms.values()))
    worst, worst_name = 0.0, None
    for name, value in expected.items():
        error = float((actual[name].double() - value.double()).norm())
        scale = max(norms[name], floor)
        difference = error / scale if scale > 0 else (0.0 if error == 0 else math.inf)
        if worst_name is None or difference > worst:
            worst, worst_name = difference, name
    return worst, worst_name


def run_distributed(config: TrainConfig, state: dict[str, Tensor], steps: int,
                    processes: int = 2) -> Trace:
    """``run_steps`` on ``processes`` gloo processes that ``torchrun --standalone`` launches
    (on a free port), in a temporary folder; rank 0's trace.

    Raises:
        RuntimeError: torchrun failed (the message ends with the workers' last error line).
    """
    with tempfile.TemporaryDirectory(prefix="contralign-check-") as folder:
        work = Path(folder)
        spec = {"config": config.model_dump(mode="json"), "steps": steps}
        (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        save_file({k: v.contiguous() for k, v in state.items()}, str(work / "initial.st"))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(processes), "-m", "contralign.training.check",
                   str(work)]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0 or not (work / "trace.st").is_file():
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            errors = [line for line in lines if "Error" in line] or lines or ["no output"]
            raise RuntimeError(f"torchrun exited with {done.returncode}: {errors[-1]}")
        tensors = load_file(str(work / "trace.st"))
    parts = {prefix: {k.removeprefix(prefix): v for k, v in tensors.items()
                      if k.startswith(prefix)} for prefix in ("grad.", "final.")}
    return Trace(tensors["losses"].tolist(), parts["grad."], parts["final."])


def main(argv: Sequence[str]) -> None:
    """The distributed path's worker, under torchrun: ``python -m contralign.training.check
    WORKDIR`` runs the steps of ``WORKDIR/spec.json`` from ``WORKDIR/initial.st``; rank 0
    writes ``WORKDIR/trace.st``."""
    work = Path(argv[0])
    spec = json.loads((work / "spec.json").read_text(encoding="utf-8"))
    config = TrainConfig.model_validate(spec["config"])
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    records = load_records(config.data).records
    created = init_process_group(torch.device("cpu"))
    try:
        main_process = is_main_process()  # before the group is gone
        trace = run_steps(config, records, load_file(str(work / "initial.st")), spec["steps"])
    finally:
        if created:
            destroy_process_group()
    if main_process:
        tensors = {"losses": torch.tensor(trace.losses, dtype=torch.float64)}
        tensors.update({f"grad.{k}": v.contiguous() for k, v in trace.grads.items()})
        tensors.update({f"final.{k}": v.contiguous() for k, v in trace.final.items()})
        save_file(tensors, str(work / "trace.st"))


if __name__ == "__main__":
    main(sys.argv[1:])
