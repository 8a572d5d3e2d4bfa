"""The one loader of towers: every command and the Python API load a model through it.

A folder contralign saved names its tower kind in ``contralign.json`` (``"tower"``), and
``TOWERS`` maps that kind to the class that loads it. Other names are recognised by what they are:
image backbones (``efficientnet-lite0``, ``timm/<model name>``) load as an image tower,
pretrained static vectors or a static-embedding folder as a static tower, anything else
(a transformers or sentence-transformers folder, an installed model package, a hub id) as a text
transformer. A run directory stands for its ``model/`` folder. A model of several towers (its
``contralign.json`` says ``"tower": "model"``) loads whole with ``load_model``, or one of its
towers with ``load_tower(..., tower=NAME)`` (a tower's name, or its modality).

``backend`` chooses what runs a tower: ``torch`` (the tower itself), ``onnx`` (its fp32 ONNX
export under onnxruntime, ``encoders.onnx_tower``: the same model, the same fingerprint) or
``onnx-int8`` (its dynamically quantised export: another fingerprint). The ONNX backends need a
folder ``contralign export MODEL --onnx`` wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from contralign.core.errors import ConfigError, ModelNotFoundError
from contralign.core.outputs import MODEL, RUN, is_owned, read_manifest
from contralign.core.towers import with_settings
from contralign.encoders.folder import TextEncoderConfig
from contralign.encoders.image import ImageTower, ImageTowerConfig, is_image_model
from contralign.encoders.model import MULTI_TOWER, AlignmentModel, read_model
from contralign.encoders.onnx_tower import OnnxTower
from contralign.encoders.static import StaticEncoder, StaticEncoderConfig, is_static_model
from contralign.encoders.text import TextEncoder

TowerKind = Literal["auto", "transformer", "static", "image"]
Backend = Literal["torch", "onnx", "onnx-int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)
Tower = TextEncoder | StaticEncoder | ImageTower

# contralign.json's tower kind -> (the class that loads it, the settings it takes).
TOWERS: dict[str, tuple[type[TextEncoder] | type[StaticEncoder] | type[ImageTower], type]] = {
    "text": (TextEncoder, TextEncoderConfig),
    "static": (StaticEncoder, StaticEncoderConfig),
    "image": (ImageTower, ImageTowerConfig),
}


def load_tower(name_or_path: str | Path, kind: TowerKind = "auto", *, tower: str | None = None,
               backend: Backend = "torch", **overrides: Any) -> Tower | OnnxTower:
    """Load the tower ``name_or_path`` names, whatever its kind.

    Args:
        name_or_path: a model folder (ours, sentence-transformers' or transformers'), a run
            directory (its ``model/``), pretrained static vectors (``wordllama-256``), an
            installed model package or a hub id.
        kind: ``auto`` (decide from the folder), or force ``transformer`` / ``static`` /
            ``image``.
        tower: in a model of several towers, the one to load (its name or its modality).
        backend: ``torch``, ``onnx`` or ``onnx-int8`` (an exported folder's graph under
            onnxruntime).
        overrides: settings that replace the folder's (``pooling``, ``normalize``,
            ``max_length``, ...); each must be one the tower has (torch backend only).

    Raises:
        ModelNotFoundError: nothing loadable under that name; for an ONNX backend, a folder
            without that export.
        ConfigError: an override the tower does not have (``model.pooling`` on a static tower),
            an unknown backend, or overrides with an ONNX backend.
    """
    check_backend(backend)
    name = choose_tower(model_source(str(name_or_path)), tower)
    if backend != "torch":
        if overrides:
            raise ConfigError(f"model.{next(iter(overrides))}: an ONNX export's settings are fixed "
                              "in its graph; export again with the setting, or use --backend "
                              "torch")
        return OnnxTower.load(name, int8=backend == "onnx-int8")
    match kind:
        case "transformer":
            tower_kind = "text"
        case "static" | "image":
            tower_kind = kind
        case _:
            tower_kind = detect_kind(name)
    cls, settings = TOWERS[tower_kind]
    with_settings(settings(), overrides, tower_kind)  # a key the tower lacks: before any loading
    return cls.from_pretrained(name, **overrides)


def load_model(name_or_path: str | Path, *, backend: Backend = "torch") -> AlignmentModel:
    """Every tower of a model and its role map: a model of several towers as saved, or one
    tower for every role; each tower run by ``backend`` (see ``load_tower``).

    Raises:
        ModelNotFoundError: nothing loadable under that name (or without that export).
        ConfigError: an unknown backend.
    """
    check_backend(backend)
    name = model_source(str(name_or_path))
    if multi_tower(name) is not None:
        return read_model(name, load=lambda folder: load_tower(folder, backend=backend))
    return AlignmentModel.single(load_tower(name, backend=backend))


def check_backend(backend: str) -> None:
    """Raises: ConfigError: ``backend`` is none of ``BACKENDS`` (naming it)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend: {backend!r} is not a backend; choose one of "
                          f"{', '.join(BACKENDS)}")


def multi_tower(name: str) -> dict[str, Any] | None:
    """The ``model`` section of a model folder of several towers, or None for anything else."""
    folder = Path(name).expanduser()
    manifest = read_manifest(folder, MODEL) if folder.is_dir() else None
    if manifest is None or manifest.get("tower") != MULTI_TOWER:
        return None
    spec = manifest.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("towers"), dict):
        raise ModelNotFoundError(f"model: {folder / MODEL.manifest}: no towers listed")
    return spec


def choose_tower(name: str, tower: str | None) -> str:
    """The folder of one tower: ``name`` itself, or the subfolder of a model of several towers
    that ``tower`` names (by tower name, or by modality when one tower has it).

    Raises:
        ModelNotFoundError: a model of several towers without a (matching) choice, or a choice
            for a model of one tower that does not match it.
    """
    spec = multi_tower(name)
    if spec is None:
        return name
    kinds: dict[str, str] = {str(k): str(v) for k, v in spec["towers"].items()}
    listed = ", ".join(f"{n} ({k})" for n, k in kinds.items())
    if tower is None:
        raise ModelNotFoundError(f"model: {name} holds several towers: {listed}; choose one "
                                 "with --tower NAME")
    if tower in kinds:
        return str(Path(name) / tower)
    modality = [n for n, k in kinds.items() if _modality(k) == tower]
    if len(modality) == 1:
        return str(Path(name) / modality[0])
    raise ModelNotFoundError(f"--tower: {tower!r} names no single tower of {name} ({listed})")


def tower_modality(name_or_path: str | Path, tower: str | None = None) -> str:
    """What the tower ``name_or_path`` (and ``tower``) would embed, found without loading any
    weights: ``image`` or ``text``.

    Raises:
        ModelNotFoundError: as ``load_tower`` for the same arguments.
    """
    return _modality(detect_kind(choose_tower(model_source(str(name_or_path)), tower)))


def role_modalities(name_or_path: str | Path) -> dict[str, str]:
    """What the model ``name_or_path`` embeds for each role (``anchor``, ``positive``), found
    without loading any weights.

    Raises:
        ModelNotFoundError: as ``load_model`` for the same name.
    """
    name = model_source(str(name_or_path))
    spec = multi_tower(name)
    if spec is None:
        modality = _modality(detect_kind(name))
        return {"anchor": modality, "positive": modality}
    kinds = {str(k): str(v) for k, v in spec["towers"].items()}
    return {role: _modality(kinds.get(str(tower), "text"))
            for role, tower in dict(spec.get("roles", {})).items()}


def _modality(kind: str) -> str:
    return "image" if kind == "image" else "text"


def detect_kind(name: str) -> str:
    """The tower kind of a model name: ``contralign.json``'s, else image, static or text.

    Raises:
        ModelNotFoundError: ``contralign.json`` names a kind no loader knows.
    """
    folder = Path(name).expanduser()
    manifest = read_manifest(folder, MODEL) if folder.is_dir() else None
    if manifest is not None:
        kind = str(manifest["tower"])
        if kind == MULTI_TOWER:
            raise ModelNotFoundError(f"model: {name} holds several towers; load it with "
                                     "load_model, or choose one tower")
        if kind not in TOWERS:
            raise ModelNotFoundError(f"model: {folder / MODEL.manifest}: unknown tower kind "
                                     f"{kind!r} (known: {', '.join(TOWERS)})")
        return kind
    if is_image_model(name):
        return "image"
    return "static" if is_static_model(name) else "text"


def model_source(name: str) -> str:
    """``name``, or the ``model/`` folder of the run directory ``name``.

    Raises:
        ModelNotFoundError: a run directory whose run has not finished (no model yet).
    """
    folder = Path(name).expanduser()
    if not is_owned(folder, RUN):
        return name
    model = folder / "model"
    if not is_owned(model, MODEL):
        raise ModelNotFoundError(f"model: {name} is a run directory without a model yet (the "
                                 "run has not finished; --resume it first)")
    return str(model)
