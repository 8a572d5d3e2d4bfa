"""Bundled recipes: one YAML config per published system (``contralign recipes``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from contralign.core.config import parse_yaml


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    objective: str
    about: str  # the first comment line: system and paper


def recipes_dir() -> Path:
    return Path(str(resources.files("contralign") / "recipes"))


def list_recipes() -> list[Recipe]:
    recipes = []
    for path in sorted(recipes_dir().glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        first = next((line.lstrip("# ").strip() for line in text.splitlines()
                      if line.startswith("#")), "")
        head, sep, _ = first.partition("): ")  # "System (Authors, arXiv:id): what it does"
        about = head + ")" if sep else first.rstrip(".,")
        objective = (parse_yaml(text) or {}).get("objective", {}).get("name", "info_nce")
        recipes.append(Recipe(path.stem, path, objective, about))
    return recipes


def find_config(name_or_path: str | Path) -> Path:
    """A config path as given, or the bundled recipe of that name (``simcse-unsup``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    bundled = recipes_dir() / f"{path.stem}.yaml"
    return bundled if bundled.is_file() and path.parent == Path(".") else path
