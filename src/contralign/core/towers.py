"""The tower contract: one for every modality (``docs/design.md``, Towers).

A tower turns raw items of one modality (texts, images) into embeddings ``(B, D)``::

    preprocess(items) -> batch       CPU only; ``tower.preprocessor`` is the same function as a
                                     small picklable object, so it runs in DataLoader workers
    features(batch) -> (B, F)        the backbone's pooled output (what a locked tower caches)
    project(features) -> (B, D)      the projection head and normalisation (identity without)
    forward(batch)                   = project(features(batch))
    encode(items, batch_size)        float32 numpy ``(N, D)`` in input order, batched by size
    save(folder, extra) / load(folder)
    fingerprint()                    stored in ``contralign.json``; recomputed only after the
                                     weights changed

Every command and the Python API load a tower through the registry in ``encoders.loading``,
keyed by ``contralign.json``'s ``tower`` kind. Evaluation and the index need only ``Encoder``:
``encode`` (and, to guard an index, ``fingerprint``).

This module imports no torch at run time, so ``contralign.evaluation`` and ``contralign.index``
stay light.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from contralign.core.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

Modality = Literal["text", "image"]
MODALITIES: tuple[str, ...] = ("text", "image")
Batch = dict[str, "Tensor"]
Settings = TypeVar("Settings")


class Preprocessor(Protocol):
    """Raw items -> a batch of tensors whose first dimension is the item (picklable)."""

    def __call__(self, items: Sequence[Any]) -> Batch: ...


@runtime_checkable
class Encoder(Protocol):
    """What evaluation and the index need of a tower: embed items (texts, images)."""

    def encode(self, items: list[Any], batch_size: int) -> np.ndarray:
        """``(N, D)`` float embeddings of ``items`` in input order."""
        ...


@runtime_checkable
class FingerprintedEncoder(Encoder, Protocol):
    """What an index needs of a tower: embed items, and say which weights embed them (an index
    refuses queries from a tower that embeds differently from the one that built it)."""

    def fingerprint(self) -> str: ...


@runtime_checkable
class Tower(Protocol):
    """An encoder of one modality: raw items in, embeddings ``(B, D)`` out.

    Attributes:
        kind: the registry key written to ``contralign.json`` (``text``, ``static``, ``image``).
        modality: what it embeds (``text`` or ``image``).
        preprocessor: ``preprocess`` as a picklable object (DataLoader workers run it).
    """

    kind: str
    modality: Modality
    preprocessor: Preprocessor

    @property
    def dim(self) -> int: ...

    def preprocess(self, items: Sequence[Any]) -> Batch: ...

    def features(self, batch: Batch) -> Tensor:
        """``(B, F)``: the backbone's pooled output, before the head."""
        ...

    def project(self, features: Tensor) -> Tensor:
        """``(B, D)``: the head and normalisation applied to ``features``."""
        ...

    def forward(self, batch: Batch) -> Tensor: ...

    def encode(self, items: Sequence[Any], batch_size: int = 32,
               show_progress: bool | None = None) -> np.ndarray: ...

    def fingerprint(self) -> str: ...

    def save(self, path: Any, extra: dict[str, Any] | None = None) -> None: ...


def modality_of(encoder: object) -> str:
    """An encoder's modality; ``text`` for one that does not say (a mock, a wrapper)."""
    return str(getattr(encoder, "modality", "text"))


class StoredFingerprint:
    """A tower's fingerprint, kept until its weights change.

    Hashing every weight costs a pass over the model, so the value read from ``contralign.json``
    (or computed once) is kept together with the version counters of the module's parameters
    and buffers; any in-place change (an optimiser step, ``load_state_dict``) moves a counter,
    and the next ``get`` computes the fingerprint again.
    """

    def __init__(self) -> None:
        self._value: str | None = None
        self._versions: tuple[int, ...] | None = None

    def get(self, module: nn.Module, compute: Callable[[], str]) -> str:
        versions = _versions(module)
        if self._value is None or versions != self._versions:
            self._value, self._versions = compute(), versions
        return self._value

    def set(self, module: nn.Module, value: str | None) -> None:
        """Take ``value`` (from ``contralign.json``) as the fingerprint of the current weights."""
        self._value, self._versions = value, (_versions(module) if value else None)


def _versions(module: nn.Module) -> tuple[int, ...]:
    tensors = [*module.parameters(), *module.buffers()]
    return tuple(int(t._version) for t in tensors)


def with_settings(settings: Settings, overrides: dict[str, Any], kind: str) -> Settings:
    """``settings`` (a tower's settings dataclass) with ``overrides`` replaced.

    Raises:
        ConfigError: a key the tower does not have, named as ``model.<key>``.
    """
    accepted = [field.name for field in dataclasses.fields(settings)]  # type: ignore[arg-type]
    for key in overrides:
        if key not in accepted:
            raise ConfigError(f"model.{key}: the {kind} tower has no such setting (it takes "
                              f"{', '.join(accepted)})")
    return dataclasses.replace(settings, **overrides)  # type: ignore[type-var]
