"""The one loader of towers: every command and the Python API load a model through it.

A folder contralign saved names its tower kind in ``contralign.json`` (``"tower"``), and
``TOWERS`` maps that kind to the class that loads it. Other names are recognised by what they are:
image backbones (``efficientnet-lite0``, ``timm/<model name>``) load as an image tower,
pretrained static vectors or a static-embedding folder as a static tower, anything else
(a transformers or sentence-transformers folder, an installed model package, a hub id) as a text
transformer. A run directory stands for its ``model/`` folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from contralign.core.errors import ConfigError, ModelNotFoundError
from contralign.core.outputs import MODEL, RUN, is_owned, read_manifest
from contralign.encoders.folder import TextEncoderConfig
from contralign.encoders.image import ImageTower, ImageTowerConfig, is_image_model
from contralign.encoders.static import StaticEncoder, StaticEncoderConfig, is_static_model
from contralign.encoders.text import TextEncoder

TowerKind = Literal["auto", "transformer", "static"]
Tower = TextEncoder | StaticEncoder | ImageTower

# contralign.json's tower kind -> (the class that loads it, the settings it takes).
TOWERS: dict[str, tuple[type[TextEncoder] | type[StaticEncoder] | type[ImageTower], type]] = {
    "text": (TextEncoder, TextEncoderConfig),
    "static": (StaticEncoder, StaticEncoderConfig),
    "image": (ImageTower, ImageTowerConfig),
}


def load_tower(name_or_path: str | Path, kind: TowerKind = "auto", **overrides: Any) -> Tower:
    """Load the tower ``name_or_path`` names, whatever its kind.

    Args:
        name_or_path: a model folder (ours, sentence-transformers' or transformers'), a run
            directory (its ``model/``), pretrained static vectors (``wordllama-256``), an
            installed model package or a hub id.
        kind: ``auto`` (decide from the folder), or force ``transformer`` / ``static``.
        overrides: settings that replace the folder's (``pooling``, ``normalize``,
            ``max_length``, ...); each must be one the tower has.

    Raises:
        ModelNotFoundError: nothing loadable under that name.
        ConfigError: an override the tower does not have (``model.pooling`` on a static tower).
    """
    name = model_source(str(name_or_path))
    match kind:
        case "static":
            tower_kind = "static"
        case "transformer":
            tower_kind = "text"
        case _:
            tower_kind = detect_kind(name)
    cls, settings = TOWERS[tower_kind]
    accepted = [f.name for f in dataclasses.fields(settings)]
    for key in overrides:
        if key not in accepted:
            raise ConfigError(f"model.{key}: a {tower_kind} tower has no such setting (it takes "
                              f"{', '.join(accepted)})")
    return cls.from_pretrained(name, **overrides)


def detect_kind(name: str) -> str:
    """The tower kind of a model name: ``contralign.json``'s, else image, static or text.

    Raises:
        ModelNotFoundError: ``contralign.json`` names a kind no loader knows.
    """
    folder = Path(name).expanduser()
    manifest = read_manifest(folder, MODEL) if folder.is_dir() else None
    if manifest is not None:
        kind = str(manifest["tower"])
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
