"""contralign: contrastive representation alignment.

``import contralign`` stays light: heavy libraries (transformers, faiss, typer) load lazily
inside the one module that wraps each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["TextEncoder", "TrainConfig", "fit", "load_tower", "__version__"]

if TYPE_CHECKING:
    from contralign.encoders.loading import load_tower
    from contralign.encoders.text import TextEncoder
    from contralign.training.config import TrainConfig
    from contralign.training.loop import fit


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import contralign` from importing torch and transformers.
    if name == "TextEncoder":
        from contralign.encoders.text import TextEncoder

        return TextEncoder
    if name == "TrainConfig":
        from contralign.training.config import TrainConfig

        return TrainConfig
    if name == "load_tower":
        from contralign.encoders.loading import load_tower

        return load_tower
    if name == "fit":
        from contralign.training.loop import fit

        return fit
    raise AttributeError(f"module 'contralign' has no attribute {name!r}")
