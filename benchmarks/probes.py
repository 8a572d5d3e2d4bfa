"""Instruments for comparing two training loops from the outside, without editing either.

``TrainingProbe`` times a run and records what it did (learning rates, token ids); the switches
below remove one source of difference at a time (our duplicate masking) for diagnosis; dropout
is switched off with ``contralign.training.check.turn_off_dropout``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


@dataclass
class TrainingProbe:
    """Times a training run and records its learning rates and inputs, the same way for any loop.

    A forward pre-hook on the transformer's embedding layer marks the first forward pass and keeps
    each batch's token ids; a global optimiser post-hook marks the end of every step and the
    learning rate it used. ``seconds`` = end of the last step - start of the first forward, so
    model loading, setup and saving are outside, and batching, tokenization (after the first
    batch), forward, backward and the optimiser are inside, for both sides alike.

    Args:
        embeddings: the embedding layer of the transformer being trained (called once per forward).
    """

    embeddings: nn.Module
    first_forward: float | None = None
    last_step: float | None = None
    lrs: list[float] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)
    step_ends: list[float] = field(default_factory=list)  # perf_counter at each step's end
    passes_at_step_end: list[int] = field(default_factory=list)  # len(inputs) at each step's end

    def __enter__(self) -> TrainingProbe:
        self._handles = [
            self.embeddings.register_forward_pre_hook(self._on_forward, with_kwargs=True),
            register_optimizer_step_post_hook(self._on_step),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.first_forward is None:
            self.first_forward = time.perf_counter()
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None:
            self.inputs.append(input_ids.detach().to("cpu", copy=True))  # (B, T)

    def _on_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.last_step = time.perf_counter()
        self.step_ends.append(self.last_step)
        self.passes_at_step_end.append(len(self.inputs))
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def timed_shapes(self) -> list[tuple[int, int]]:
        """The ``(rows, width)`` of each forward pass from the end of the first step to the end
        of the last one (the window ``step_ends`` times)."""
        if len(self.passes_at_step_end) < 2:
            return []
        first, last = self.passes_at_step_end[0], self.passes_at_step_end[-1]
        return [(int(t.shape[0]), int(t.shape[1])) for t in self.inputs[first:last]]

    @property
    def seconds(self) -> float:
        if self.first_forward is None or self.last_step is None:
            return float("nan")
        return self.last_step - self.first_forward

    def rows(self, pad_id: int) -> list[tuple[int, ...]]:
        """Every text the model saw, in order, as token ids without padding.

        One forward of anchors then one of positives (ours) and one merged forward of anchors
        followed by positives (sentence-transformers) give the same list.
        """
        rows: list[tuple[int, ...]] = []
        for batch in self.inputs:
            for row in batch.tolist():
                while row and row[-1] == pad_id:
                    row.pop()
                rows.append(tuple(row))
        return rows


@contextmanager
def duplicate_masking(enabled: bool) -> Iterator[None]:
    """Within the block, ``fit`` builds its task with ``mask_duplicates=enabled``.

    ``fit`` has no switch for it (``ContrastiveTask`` masks by default), so for diagnosis this
    wraps ``contralign.training.loop.build_task``; nothing changes when ``enabled``.
    """
    if enabled:
        yield
        return
    from contralign.training import loop

    original = loop.build_task

    def build_task(config: Any, encoder: Any) -> Any:
        task = original(config, encoder)
        task.mask_duplicates = False
        return task

    loop.build_task = build_task
    try:
        yield
    finally:
        loop.build_task = original
