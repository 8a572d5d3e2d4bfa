"""Load any tower by name: a transformers text encoder or a static-embedding encoder."""

from __future__ import annotations

from typing import Any, Literal

from contralign.encoders.static import StaticEncoder, is_static_model
from contralign.encoders.text import TextEncoder

TowerKind = Literal["auto", "transformer", "static"]


def load_tower(name_or_path: str, kind: TowerKind = "auto",
               **overrides: Any) -> TextEncoder | StaticEncoder:
    """A ``StaticEncoder`` for static vectors or a static folder, else a ``TextEncoder``.

    Raises:
        ModelNotFoundError: nothing loadable under that name.
        ValueError: an override the tower does not have (e.g. ``pooling`` on a static tower).
    """
    static = kind == "static" or (kind == "auto" and is_static_model(name_or_path))
    if static:
        return StaticEncoder.from_pretrained(name_or_path, **overrides)
    return TextEncoder.from_pretrained(name_or_path, **overrides)
