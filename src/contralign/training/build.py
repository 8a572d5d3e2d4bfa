"""What a config builds before training: the towers and role map (``build_model``), the task
(``build_task``), and the checks that data, towers and objective fit together."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from contralign.core.errors import ConfigError
from contralign.encoders.heads import ProjectionHead, has_batchnorm
from contralign.encoders.loading import Tower, load_tower
from contralign.encoders.model import AlignmentModel
from contralign.encoders.momentum import MomentumEncoder
from contralign.encoders.onnx_tower import OnnxTower
from contralign.encoders.text import TextEncoder
from contralign.objectives import OBJECTIVES, build_objective
from contralign.training.config import TowerConfig, TrainConfig
from contralign.training.distributed import resolve_device
from contralign.training.task import ContrastiveTask


def build_tower(config: TowerConfig) -> Tower:
    """The tower a tower config names (static vectors or folder, an image network, or a
    transformers model), with the config's settings in place of the folder's.

    Raises:
        ModelNotFoundError: nothing loadable under that name.
        ConfigError: a setting the tower does not have (``pooling`` on a static tower), or
            ``freeze_embeddings`` on a tower that is not a transformer text tower.
    """
    tower = load_tower(config.name, config.tower, **config.overrides())
    assert not isinstance(tower, OnnxTower)  # only backend="onnx" loads one
    if config.freeze_embeddings:
        if not isinstance(tower, TextEncoder):
            raise ConfigError(f"freeze_embeddings: {config.name} is a {tower.kind} tower; only a "
                              "transformer text tower has a token embedding matrix to freeze")
        tower.model.get_input_embeddings().weight.requires_grad_(False)
    return tower


def build_head(config: TowerConfig, tower: Tower) -> ProjectionHead | None:
    """The training head ``config.head`` asks for on ``tower``'s embedding, if any."""
    if config.head is None:
        return None
    return ProjectionHead(tower.dim, config.head.dims, config.head.batch_norm)


def build_encoder(config: TrainConfig) -> Tower:
    """The tower of a one-tower config (``build_model`` for any config)."""
    return build_tower(config.model)


def build_model(config: TrainConfig, encoder: Tower | None = None) -> AlignmentModel:
    """The towers and role map ``config.model`` describes; ``encoder``: an already-loaded
    tower for a one-tower config.

    Raises:
        ConfigError: towers of different widths (the objective compares their embeddings, the
            saved model the towers' own), or training heads of different widths.
    """
    spec = config.model
    if not spec.towers:
        tower = encoder if encoder is not None else build_tower(spec)
        return AlignmentModel.single(tower, config.objective.momentum, frozen=spec.frozen,
                                     head=build_head(spec, tower))
    towers: dict[str, Any] = {name: build_tower(tower) for name, tower in spec.towers.items()
                              if tower.momentum_of is None}
    heads = {name: head for name, tower in towers.items()
             if (head := build_head(spec.towers[name], tower)) is not None}
    dims = {name: tower.dim for name, tower in towers.items()}
    trained = {name: heads[name].out_features if name in heads else dims[name]
               for name in towers}
    teacher = spec.roles.get("teacher")
    if teacher is not None:
        _check_teacher_width(trained, teacher, spec.roles["anchor"])
    if len(set(dims.values())) > 1:
        raise ConfigError(f"model.towers: the towers embed to different widths ({dims}); give "
                          "them a common projection_dim")
    if len(set(trained.values())) > 1:
        raise ConfigError(f"model.towers: the training heads make different widths ({trained}); "
                          "give every trained tower a head of the same last width (head.dims)")
    for name, source in spec.sources.items():
        towers[name] = MomentumEncoder(towers[source], spec.towers[name].momentum)
    frozen = [name for name, tower in spec.towers.items() if tower.frozen]
    return AlignmentModel(towers, spec.roles, frozen, sources=spec.sources, heads=heads)


def _check_teacher_width(dims: Mapping[str, int], teacher: str, student: str) -> None:
    """The student learns the teacher's embeddings: it must embed to the teacher's width.

    Raises:
        ConfigError: the widths differ, naming the key that fixes it.
    """
    if dims[student] != dims[teacher]:
        raise ConfigError(f"model.towers.{student}.projection_dim: the teacher {teacher} embeds "
                          f"{dims[teacher]}-d and the student {student} {dims[student]}-d; set "
                          f"projection_dim: {dims[teacher]} on the student")


def check_compiler(config: TrainConfig, device: torch.device) -> None:
    """``train.compile`` on a CPU needs a C++ compiler (inductor builds its kernels with one):
    refuse before anything is written, naming the key, rather than fail at the first step.

    Raises:
        ConfigError: ``train.compile`` is on, the device is a CPU and no compiler is found.
    """
    if not config.train.compile or device.type != "cpu":
        return
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()  # $CXX, else g++ (torch's own search)
    except InvalidCxxCompiler:
        raise ConfigError("train.compile: torch.compile on a CPU builds C++ kernels and no C++ "
                          "compiler was found (install g++ or set CXX); or set train.compile: "
                          "false") from None


def build_task(config: TrainConfig, model: AlignmentModel | Tower) -> ContrastiveTask:
    """The task ``fit`` trains: ``model`` (a one-tower config's tower, or the model of
    ``build_model``), its text towers in length groups as ``train.tokens_per_group`` says for
    ``train.device``, and the objective the config names."""
    if not isinstance(model, AlignmentModel):
        model = build_model(config, encoder=model)
    for tower in model.online().values():
        set_length_groups(tower, config.train.tokens_per_group,
                          resolve_device(config.train.device))
    info = OBJECTIVES[config.objective.name]
    dim = model.trained_dim("anchor")  # the training head's width when there is one
    objective = build_objective(config.objective.name, config.objective.params, dim=dim)
    return ContrastiveTask(model, objective, views_only="views" in info.requires,
                           precision=config.train.precision,
                           mask_duplicates=config.objective.mask_duplicates,
                           split=info.split_for(config.objective.params),
                           bn_splits=config.objective.bn_splits,
                           symmetric=config.objective.symmetric,
                           compile=config.train.compile)


# What an objective reads (``ObjectiveInfo.requires``) -> where a run gets it from.
_SOURCES = {"labels": ("label", "data.columns: {label: <column>}"),
            "scores": ("score", "data.columns: {score: <column>}")}


def check_roles(config: TrainConfig, roles: Sequence[str]) -> None:
    """The data and views give the objective what it reads.

    Raises:
        ConfigError: a role the objective needs is not mapped, or it needs views and the config
            has none.
    """
    name = config.objective.name
    for needed in OBJECTIVES[name].requires:
        if needed == "views" and not config.views:
            raise ConfigError(f"views: objective {name} contrasts each anchor with its views; "
                              "list at least one (e.g. views: [{name: identity}])")
        if needed in _SOURCES and _SOURCES[needed][0] not in roles:
            role, how = _SOURCES[needed]
            raise ConfigError(f"data.columns: objective {name} needs the {role} role, which "
                              f"{config.data.path} does not map; set {how}")


def check_modalities(config: TrainConfig, model: AlignmentModel,
                     modalities: Mapping[str, str]) -> None:
    """Each role's tower embeds what the data's role holds; text views need texts.

    Raises:
        ConfigError: a tower of one modality mapped to a role that holds the other, or views
            on a role that holds images.
    """
    if model.teacher is not None and "anchor" in modalities:  # it embeds the anchors
        modalities = {**modalities, "teacher": modalities["anchor"]}
    for role, modality in modalities.items():
        if role not in ("anchor", "positive", "negative", "teacher"):
            continue
        tower = model.side(role)
        if getattr(tower, "modality", "text") != modality:
            key = "model.roles" if config.model.towers else "model.name"
            raise ConfigError(f"{key}: the {role} role's tower embeds {tower.modality}, but "
                              f"{config.data.path}'s {role} holds {modality}s; map the role to "
                              f"a {modality} tower (data.modalities says what a column holds)")
    _check_view_modality(config, model, modalities)


def _check_view_modality(config: TrainConfig, model: AlignmentModel,
                         modalities: Mapping[str, str]) -> None:
    """Text views need texts and text towers, image views images and image towers.

    Raises:
        ConfigError: views of one modality on data or towers of the other.
    """
    if not config.views:
        return
    from contralign.data.image_views import is_image_view

    wanted = "image" if is_image_view(config.views[0].get("name")) else "text"
    held = {modalities.get(role, "text") for role in ("anchor", "positive") if role in modalities}
    if held - {wanted}:
        other = "image" if wanted == "text" else "text"
        names = "simclr, moco-v2, swav, byol" if other == "image" else "identity, ..."
        raise ConfigError(f"views: {wanted} views need {wanted}s, but {config.data.path} holds "
                          f"{other}s; use {other} views ({names})")
    for role in ("anchor", "positive"):
        tower = model.side(role)
        if getattr(tower, "modality", "text") != wanted:
            raise ConfigError(f"views: {wanted} views need a {wanted} tower for the {role} role, "
                              f"but it embeds {tower.modality}")


# Padded positions per length group on a CPU (train.tokens_per_group: auto): the fastest of
# none, 128, 256 and 512 for all-MiniLM-L6-v2 at batch 64 on SICK-E and STS-B pairs, 2 cores
# (`benchmarks/train_throughput.py --sweep none,128,256,512 --batch-sizes 64`: 46 / 54 / 59 /
# 55 and 67 / 66 / 75 / 68 pairs/s).
CPU_TOKENS_PER_GROUP = 256


def set_length_groups(encoder: Any, tokens_per_group: int | str | None,
                      device: torch.device) -> None:
    """Let a transformer tower embed batches in length groups (``encoders.lengths``)."""
    if not isinstance(encoder, TextEncoder):
        return  # a static tower pools an embedding bag: padding costs it nothing
    if tokens_per_group == "auto":
        tokens_per_group = CPU_TOKENS_PER_GROUP if device.type == "cpu" else None
    encoder.tokens_per_group = tokens_per_group  # type: ignore[assignment]


def batchnorm_towers(model: AlignmentModel) -> list[str]:
    """The towers whose trainable backbone holds BatchNorm layers (a locked one runs in eval
    mode, on its running statistics, and is not listed)."""
    return [name for name, tower in model.online().items() if name not in model.frozen
            and has_batchnorm(tower)]


def batchnorm_heads(model: AlignmentModel) -> list[str]:
    """The towers whose training head holds BatchNorm layers (it trains, locked tower or not)."""
    return [name for name in model.online() if name in model.heads
            and has_batchnorm(model.heads[name])]


def check_fast_paths(config: TrainConfig, model: AlignmentModel, processes: int) -> None:
    """Refuse the fast paths whose step would differ from the plain one: a trainable BatchNorm
    tower normalises each chunk (gradient cache) or each process's rows (torchrun) by their own
    statistics, and updates its running statistics once per pass.

    Raises:
        ConfigError: the gradient cache or several processes with a trainable BatchNorm tower
            or a training head with BatchNorm, or with ``objective.bn_splits`` (shuffle-BN in
            one process: the plain path embeds in groups, the fast paths do not).
    """
    if config.objective.bn_splits > 1 and (config.train.grad_cache.enabled or processes > 1):
        path = "train.grad_cache" if config.train.grad_cache.enabled else "torchrun"
        raise ConfigError(f"{path}: objective.bn_splits simulates several devices' BatchNorm in "
                          "one process, and takes neither the gradient cache nor torchrun; "
                          "set bn_splits: 1 or train in one process without the cache")
    towers, heads = batchnorm_towers(model), batchnorm_heads(model)
    if not towers and not heads:
        return
    many = bool(config.model.towers)
    if towers:
        tower = f"tower {towers[0]}" if many else "the tower"
    else:  # the head's own key names it
        tower = f"model.towers.{heads[0]}.head" if many else "model.head"
    why = (f"{tower} has BatchNorm layers and trains: they normalise with the statistics of the "
           "rows they see")
    if config.train.grad_cache.enabled:
        raise ConfigError(f"train.grad_cache: {why}, so each chunk would be normalised "
                          "differently from the whole batch; "
                          f"{_fix(bool(towers))} or turn the cache off")
    if processes > 1:
        raise ConfigError(f"torchrun: {why}, so each process would normalise only its own rows; "
                          f"{_fix(bool(towers))} or train in one process")


def _fix(tower: bool) -> str:
    """How to keep BatchNorm off the trained rows: lock the tower, or drop the head's."""
    return "lock the tower (frozen: true)" if tower else "set head.batch_norm: false"
