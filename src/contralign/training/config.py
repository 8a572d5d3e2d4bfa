"""The training config: typed sections, unknown keys rejected (``contralign train CONFIG.yaml``)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from contralign.core.config import StrictConfig
from contralign.data.records import DataConfig
from contralign.encoders.loading import TowerKind
from contralign.encoders.pooling import PoolingMode
from contralign.encoders.resolve import DEFAULT_MODEL
from contralign.objectives.registry import OBJECTIVES

# No text model reads more tokens than this; a larger ``model.max_length`` is a typo. The model's
# own limit (its position embeddings) is checked when it is loaded (``TextEncoder``).
MAX_LENGTH_LIMIT = 131_072

# The roles a model maps to its towers (``model.roles``).
RoleName = Literal["anchor", "positive", "teacher"]


class HeadConfig(StrictConfig):
    """A training-only projection head on a tower's embedding (``encoders.heads``): the loss
    reads it, the saved model, ``encode`` and dev evaluation do not (SimCLR's ``g``).

    ``dims``: the hidden widths then the output width (``[2048, 128]``: Linear, BatchNorm,
    ReLU, Linear; ``[128]``: one linear layer). ``batch_norm``: after each hidden layer
    (SimCLR: true; MoCo v2: false).
    """

    dims: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)
    batch_norm: bool = True


class TowerConfig(StrictConfig):
    """One tower. Unset fields keep the model folder's own settings.

    ``frozen`` locks the backbone (LiT): no gradient, no optimiser state, eval mode, features
    cached per item; its projection head (``projection_dim``), if any, trains.
    ``freeze_embeddings`` locks only a text tower's token embedding matrix. ``momentum_of``
    makes the tower a momentum copy of another tower (MoCo keys), moved by ``momentum`` after
    each step; a copy takes no other key (its training head copies its source's). ``head``: a
    training-only head (``HeadConfig``), dropped when the model is saved; ``projection_dim`` is
    the linear head saved with the tower.
    """

    name: str = DEFAULT_MODEL
    tower: TowerKind = "auto"  # auto: from the name or folder; transformer | static | image
    pooling: PoolingMode | None = None
    normalize: bool | None = None
    max_length: int | None = Field(default=None, gt=0, le=MAX_LENGTH_LIMIT)
    projection_dim: int | None = Field(default=None, gt=0)
    image_size: int | None = Field(default=None, gt=0, le=4096)  # image towers: input pixels
    frozen: bool = False
    # A text tower's token embedding matrix gets no gradient and no optimiser state (the rest
    # trains): 96M of multilingual-e5-small's 118M weights, and every language's tokens.
    freeze_embeddings: bool = False
    momentum_of: str | None = None
    momentum: float = Field(default=0.999, ge=0, le=1)
    head: HeadConfig | None = None

    def overrides(self) -> dict[str, Any]:
        """The settings that replace the folder's (those set, of the tower's own keys)."""
        keys = ("pooling", "normalize", "max_length", "projection_dim", "image_size")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}


class ModelConfig(TowerConfig):
    """The towers: one tower's keys (``name``, ``pooling``, ...), or ``towers`` naming several
    and ``roles`` mapping ``anchor`` and ``positive`` to them (``image``/``text``: LiT, CLIP),
    and optionally ``teacher`` to a locked tower that embeds the anchors as targets
    (distillation: ``{anchor: student, positive: student, teacher: teacher}``)."""

    towers: dict[str, TowerConfig] = {}
    roles: dict[RoleName, str] = {}

    @model_validator(mode="after")
    def _check_towers(self) -> ModelConfig:
        if not self.towers:
            if self.roles:
                raise ValueError("roles: name the towers under model.towers first")
            if self.momentum_of is not None:
                raise ValueError("momentum_of: a one-tower model has no other tower to follow")
            return self
        # Keys of the one-tower form set to something else than their default (a config
        # written back with every key, as config.yaml is, keeps them at their defaults).
        defaults = TowerConfig()
        one_tower = [key for key in TowerConfig.model_fields
                     if getattr(self, key) != getattr(defaults, key)]
        if one_tower:
            raise ValueError(f"{one_tower[0]}: with model.towers, set it per tower "
                             f"(model.towers.<name>.{one_tower[0]})")
        if not {"anchor", "positive"} <= set(self.roles):
            raise ValueError("roles: map both anchor and positive to a tower, e.g. "
                             "{anchor: image, positive: text}")
        for role, name in self.roles.items():
            if name not in self.towers:
                raise ValueError(f"roles.{role}: {name!r} is not one of the towers "
                                 f"({', '.join(self.towers)})")
        for name, tower in self.towers.items():
            _check_name(name)
            _check_copy(name, tower, self.towers)
        _check_teacher(self.roles, self.towers)
        return self

    @property
    def sources(self) -> dict[str, str]:
        """Momentum copy -> the tower it follows."""
        return {name: tower.momentum_of for name, tower in self.towers.items()
                if tower.momentum_of is not None}


def _check_name(name: str) -> None:
    """A tower's name is a folder name in the saved model and a module name in the task."""
    from torch import nn

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name) or hasattr(nn.ModuleDict, name):
        raise ValueError(f"towers: {name!r} cannot name a tower (letters, digits, _ and -, "
                         "starting with a letter; not a reserved word such as keys or items)")


def _check_teacher(roles: dict[RoleName, str], towers: dict[str, TowerConfig]) -> None:
    """A teacher is a locked tower of its own, without a head: its embeddings are targets that
    nothing trains (a head would learn to meet the student halfway)."""
    name = roles.get("teacher")
    if name is None:
        return
    tower = towers[name]
    if name in (roles["anchor"], roles["positive"]):
        raise ValueError(f"roles.teacher: {name!r} also embeds the anchor or the positive; the "
                         "teacher is a tower of its own (a locked copy for self-distillation)")
    if tower.momentum_of is not None or not tower.frozen:
        raise ValueError(f"towers.{name}.frozen: the teacher's tower must be locked "
                         "(frozen: true, not a momentum copy)")
    if tower.head is not None:
        raise ValueError(f"towers.{name}.head: a teacher's embeddings are the targets as they "
                         "are; it takes no training head")
    if tower.projection_dim is not None:
        raise ValueError(f"towers.{name}.projection_dim: a teacher's embeddings are the targets "
                         "as they are; give the student the teacher's width instead "
                         f"(towers.{roles['anchor']}.projection_dim)")


def _check_copy(name: str, tower: TowerConfig, towers: dict[str, TowerConfig]) -> None:
    if tower.momentum_of is None:
        return
    source = towers.get(tower.momentum_of)
    if source is None or source.momentum_of is not None:
        raise ValueError(f"towers.{name}.momentum_of: {tower.momentum_of!r} must name another "
                         "tower that is not a momentum copy itself")
    defaults = TowerConfig()
    extra = [key for key in TowerConfig.model_fields if key not in ("momentum_of", "momentum")
             and getattr(tower, key) != getattr(defaults, key)]
    if extra:
        raise ValueError(f"towers.{name}.{extra[0]}: a momentum copy takes only momentum_of and "
                         "momentum (it copies its tower's settings)")


class ObjectiveConfig(StrictConfig):
    """The objective, chosen by name from the registry; its other keys are the objective's own
    parameters (``contralign objectives`` lists them), checked against its constructor."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "info_nce"

    @model_validator(mode="after")
    def _check_params(self) -> ObjectiveConfig:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; known: "
                             f"{', '.join(sorted(OBJECTIVES))}")
        info = OBJECTIVES[self.name]
        accepted = info.parameters()
        accepted["mask_duplicates"] = (bool, True)  # a task setting every objective takes
        if info.momentum_keys or info.optional_momentum_keys:
            accepted["momentum"] = (float, 0.999 if info.momentum_keys else None)
        if info.momentum_keys:
            accepted["bn_splits"] = (Annotated[int, Field(ge=1)], 1)
        if info.swappable:
            accepted["symmetric"] = (bool, False)
        extra = self.__pydantic_extra__ or {}
        for key, value in extra.items():
            if key not in accepted:
                raise ValueError(f"{key}: unknown parameter of {self.name}; its parameters: "
                                 f"{', '.join(accepted) or 'none'}")
            # The constructor's annotation carries its bounds (Annotated[float, Gt(0)], a
            # Literal of choices), so a bad value is caught here, naming the key.
            try:
                # Keep the converted value: "5e-2" -> 0.05, "false" -> False, 2.0 -> 2.
                extra[key] = TypeAdapter(accepted[key][0]).validate_python(value, strict=False)
            except ValidationError as err:
                raise ValueError(f"{key}: {_what_is_wrong(err, value)} (got {value!r})") from None
        momentum = (self.model_extra or {}).get("momentum")
        if momentum is not None and not 0.0 <= float(momentum) <= 1.0:  # also rejects NaN
            raise ValueError(f"momentum: must be in [0, 1] (1 freezes the key tower), got "
                             f"{momentum!r}")
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The objective module's own parameters (every key but ``name`` and the task's)."""
        task_keys = ("momentum", "mask_duplicates", "bn_splits", *self._swap_key)
        return {k: v for k, v in (self.model_extra or {}).items() if k not in task_keys}

    @property
    def mask_duplicates(self) -> bool:
        """Never use a duplicate of a row's positive (same text or label) as its negative."""
        return bool((self.model_extra or {}).get("mask_duplicates", True))

    @property
    def bn_splits(self) -> int:
        """Shuffle-BN in one process (MoCo, with a key tower): the towers' BatchNorm normalises
        ``bn_splits`` groups of the batch apart, the keys' groups drawn at random; 1 = the whole
        batch."""
        return int((self.model_extra or {}).get("bn_splits", 1))

    @property
    def _swap_key(self) -> tuple[str, ...]:
        # ``symmetric`` is a task setting for a swappable objective (MoCo), but info_nce's own
        # parameter (its key -> query direction).
        return ("symmetric",) if OBJECTIVES[self.name].swappable else ()

    @property
    def symmetric(self) -> bool:
        """Score each item in both directions (a swappable objective, MoCo): the anchor's view
        against the positive's key, and the positive's view against the anchor's key (the
        authors' CIFAR demo)."""
        return bool(self._swap_key and (self.model_extra or {}).get("symmetric", False))

    @property
    def momentum(self) -> float | None:
        """The momentum of the key encoder, for objectives whose keys come from one: always for
        MoCo (default 0.999), on request for CWCL (``momentum: 1.0`` = a frozen copy of the
        starting tower gives the keys and their soft targets, as the paper's frozen tower)."""
        info = OBJECTIVES[self.name]
        momentum = (self.model_extra or {}).get("momentum")
        if info.momentum_keys:
            return float(0.999 if momentum is None else momentum)
        if info.optional_momentum_keys and momentum is not None:
            return float(momentum)
        return None


def _what_is_wrong(error: ValidationError, value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):  # pydantic: "less than inf"
        return "not a number" if math.isnan(value) else "must be finite"
    return str(error.errors()[0]["msg"])


# An Adam β: the decay of a moving average, in [0, 1).
Beta = Annotated[float, Field(ge=0, lt=1)]


class OptimConfig(StrictConfig):
    """AdamW with weight-decay groups, warmup then decay, gradient clipping."""

    lr: float = Field(default=2e-5, gt=0, lt=math.inf)
    weight_decay: float = Field(default=0.01, ge=0, lt=math.inf)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0, lt=math.inf)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int | None = Field(default=None, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)


class GradCacheConfig(StrictConfig):
    """The gradient cache (GradCache, arXiv:2101.06983): the exact gradient of a large batch
    with the activation memory of one chunk (see ``contralign.training.cached``).

    ``chunk_size: auto`` picks the largest chunk whose estimated activations fit in half of the
    free memory of the device (``contralign.training.cached.auto_chunk_size``).
    """

    enabled: bool = False
    chunk_size: Annotated[int, Field(gt=0)] | Literal["auto"] = 64


class LoopConfig(StrictConfig):
    """How long to train, in what batches, and how often to log and checkpoint.

    ``batch_size`` is the global batch: under ``torchrun`` each of the N processes embeds a
    contiguous 1/N of it, and the loss and gradients are those of the whole batch.
    """

    epochs: int = Field(default=1, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=32, gt=1)
    drop_last: bool = False
    seed: int = 0
    log_every: int = Field(default=10, gt=0)
    checkpoint_every: int = Field(default=0, ge=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    threads: int | None = Field(default=None, gt=0)
    grad_cache: GradCacheConfig = GradCacheConfig()
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast the towers, losses in fp32
    # torch.compile the towers' training embeds (forward and backward; a CPU needs a C++
    # compiler): faster steps, not bitwise eager (contralign check compares them)
    compile: bool = False
    # Transformer towers embed each batch in length-sorted groups of at most this many padded
    # positions (encoders.lengths): equal embeddings, less padding. auto: 256 on CPUs, off on
    # GPUs (unmeasured there); null: one forward pass per batch.
    tokens_per_group: Annotated[int, Field(gt=0)] | Literal["auto"] | None = "auto"
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # cuda under torchrun: cuda:LOCAL_RANK
    # DataLoader worker processes that preprocess batches (tokenize, decode and resize images)
    # while the model trains; 0: in the training process (the same batches either way).
    num_workers: int = Field(default=0, ge=0)
    # Where the metrics go: metrics.jsonl always (resume reads it); "tensorboard" also writes
    # TensorBoard event files in run_dir/tensorboard (pip install "contralign[tensorboard]").
    loggers: list[Literal["jsonl", "tensorboard"]] = ["jsonl"]


class LabelledImagesConfig(StrictConfig):
    """Labelled images for a classifier: an ``.npz`` file (images, labels) or an IDX images file
    with its labels file beside it (``data.labelled``)."""

    path: str
    limit: int | None = Field(default=None, gt=0)  # a fixed random sample (seed 0) of this many


class KNNConfig(StrictConfig):
    """Weighted k-NN accuracy of the test images against the training images
    (``evaluation.knn``)."""

    train: LabelledImagesConfig
    test: LabelledImagesConfig
    k: int = Field(default=200, gt=0)
    temperature: float = Field(default=0.1, gt=0)


class LinearProbeConfig(StrictConfig):
    """Linear-probe accuracy (``evaluation.linear_probe``); ``c``: one inverse L2 strength or a
    grid chosen on held-out training images (default: the evaluator's grid)."""

    train: LabelledImagesConfig
    test: LabelledImagesConfig
    c: list[Annotated[float, Field(gt=0)]] | None = Field(default=None, min_length=1)


class EvalConfig(StrictConfig):
    """Dev sets evaluated during and after training."""

    sts: DataConfig | None = None
    retrieval: DataConfig | None = None
    bitext: DataConfig | None = None  # translation pairs: Tatoeba accuracy both ways (cosine)
    knn: KNNConfig | None = None  # labelled images: weighted k-NN top-1 (top-5)
    linear_probe: LinearProbeConfig | None = None  # labelled images: linear-probe top-1
    every_steps: int = Field(default=0, ge=0)
    batch_size: int = Field(default=64, gt=0)
    # The final evaluation adds bootstrap intervals at this level (evaluation.bootstrap: 1000
    # resamples, a fixed seed) to its metrics.jsonl line: "ci": {metric: [lo, hi]}.
    ci: float | None = Field(default=None, gt=0, lt=1)


class TrainConfig(StrictConfig):
    """A whole run. See the README for every key."""

    model: ModelConfig = ModelConfig()
    data: DataConfig
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    train: LoopConfig = LoopConfig()
    eval: EvalConfig = EvalConfig()
    # text views, e.g. [{name: identity}, {name: word_deletion}], or image view presets, e.g.
    # [{name: simclr}] (data.image_views: simclr, moco-v2, swav, byol; each makes several views)
    views: list[dict[str, Any]] = []
    output_dir: str = "runs/contralign"

    @model_validator(mode="after")
    def _check_views(self) -> TrainConfig:
        from contralign.data.image_views import is_image_view, make_image_views
        from contralign.data.views import make_view

        images = [is_image_view(view.get("name")) for view in self.views]
        if any(images) and not all(images):
            raise ValueError("views: image views (simclr, moco-v2, swav, byol) and text views "
                             "do not mix in one list")
        count = 0
        for i, view in enumerate(self.views):
            make = make_image_views if images[i] else make_view
            try:
                made = make(str(view.get("name")), **{k: v for k, v in view.items()
                                                      if k != "name"})
            except ValueError as err:  # both name the view and the parameter
                raise ValueError(f"views.{i}: {err}") from None
            count += len(made) if isinstance(made, tuple) else 1  # a preset makes several
        views_only = "views" in OBJECTIVES[self.objective.name].requires
        if self.views and count < 2 and not views_only:
            raise ValueError("views: give at least two views (one per side of each pair)")
        return self

    @model_validator(mode="after")
    def _check_momentum(self) -> TrainConfig:
        towers = self.model.towers
        if not towers:
            return self
        if "momentum" in (self.objective.model_extra or {}):
            raise ValueError("objective.momentum: with model.towers, make the key tower a "
                             "momentum copy: model.towers.<name>: {momentum_of: <tower>, "
                             "momentum: 0.999}, mapped to the positive role")
        if OBJECTIVES[self.objective.name].momentum_keys \
                and towers[self.model.roles["positive"]].momentum_of is None:
            raise ValueError(f"model.roles.positive: {self.objective.name} takes its keys from a "
                             "momentum copy: map positive to a tower with momentum_of")
        return self

    @model_validator(mode="after")
    def _check_teacher(self) -> TrainConfig:
        reads_targets = "targets" in OBJECTIVES[self.objective.name].requires
        has_teacher = "teacher" in self.model.roles
        if reads_targets and not has_teacher:
            raise ValueError(f"model.roles: objective {self.objective.name} learns from a "
                             "teacher: add model.towers.teacher: {name: <model>, frozen: true} "
                             "and model.roles.teacher: teacher")
        if has_teacher and not reads_targets:
            raise ValueError(f"model.roles.teacher: objective {self.objective.name} does not "
                             "read a teacher's embeddings (distill_mse does); remove the role")
        if has_teacher and self.views:
            raise ValueError("views: a teacher embeds the anchor as it is in the data; drop "
                             "views (or the teacher)")
        return self

    @model_validator(mode="after")
    def _check_warmup(self) -> TrainConfig:
        if self.optim.warmup_steps is not None and self.train.max_steps is not None:
            if self.optim.warmup_steps > self.train.max_steps:
                raise ValueError("optim.warmup_steps: exceeds train.max_steps")
        return self
