"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

``checkpoints/step-N/`` holds the task weights, the optimiser and scheduler states, the RNG
states and the data position. It is written to a temporary folder and renamed, so a kill
never leaves a broken checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from contralign.core.errors import ContralignError
from contralign.core.io import atomic_directory

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Where training is: optimiser steps taken, and the next batch of which epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def save_checkpoint(
    folder: Path, task: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, state: TrainState,
) -> None:
    """Write ``folder`` atomically (temporary name, then rename)."""
    with atomic_directory(folder) as tmp:
        weights = {k: v.detach().contiguous() for k, v in task.state_dict().items()}
        save_file(_unshare(weights), str(tmp / "task.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        meta = {
            "state": asdict(state),
            "optimizer": opt_meta,
            "scheduler": scheduler.state_dict(),
            "python_random": _to_json(random.getstate()),
            "numpy_random": _numpy_state(),
        }
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")


def load_checkpoint(
    folder: Path, task: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
    """Restore everything ``save_checkpoint`` wrote; returns the training position.

    Raises:
        ContralignError: a missing or unreadable checkpoint file.
    """
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        task.load_state_dict(load_file(str(folder / "task.safetensors")))
        opt_tensors = load_file(str(folder / "optimizer.safetensors"))
        rng = load_file(str(folder / "rng.safetensors"))
    except (OSError, ValueError, RuntimeError) as err:
        raise ContralignError(f"{folder}: unreadable checkpoint ({err})") from None
    optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(rng["torch"])
    random.setstate(_from_json(meta["python_random"]))
    np.random.set_state(_numpy_state_from(meta["numpy_random"]))
    return TrainState(**meta["state"])


def list_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (``step-N`` folders), oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for child in checkpoints_dir.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    for _, folder in list_checkpoints(checkpoints_dir)[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied embeddings): store copies.
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        ptr = tensor.data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, tuple | list) else value


def _from_json(value: Any) -> Any:
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {"name": name, "keys": np.asarray(keys).tolist(), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from(data: dict[str, Any]) -> tuple:
    keys = np.array(data["keys"], dtype=np.uint32)
    return (data["name"], keys, data["pos"], data["has_gauss"], data["cached"])
