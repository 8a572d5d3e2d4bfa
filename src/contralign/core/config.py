"""Config base: typed pydantic models that reject unknown keys, loaded from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from contralign.core.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound="StrictConfig")


class StrictConfig(BaseModel):
    """A config section: unknown keys and bad values are errors that name the key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One line naming the first offending key: ``source: key.path: what is wrong``."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    match first["type"]:
        case "extra_forbidden":
            what = "unknown key"
        case "missing":
            what = "required key is missing"
        case "value_error":
            # Our validators say "sub_key: what is wrong"; fold sub_key into the key path.
            text = str(first["msg"]).removeprefix("Value error, ")
            head, sep, tail = text.partition(": ")
            if sep and " " not in head:
                key, what = (head if key == "<root>" else f"{key}.{head}"), tail
            else:
                what = text
        case _:
            value = first.get("input")
            what = f"{first['msg']} (got {value!r})"
    return f"{source}: {key}: {what}"


def set_dotted(data: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set ``a.b.c = value`` inside nested dicts, creating the sections on the way."""
    *parents, leaf = dotted_key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted_key}: {part} is not a section")
        node = child
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; values are YAML scalars (``1e-4``, ``true``, ``[a]``)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected key=value")
        parsed.append((key.strip(), yaml.safe_load(raw) if raw else ""))
    return parsed


def load_config(
    cls: type[ConfigT], path: str | Path | None, overrides: list[str] | None = None
) -> ConfigT:
    """Read a YAML file (or start empty), apply ``--set`` overrides, and validate.

    Raises:
        ConfigError: unreadable YAML, an unknown key or a bad value; the message names the key.
    """
    source = str(path) if path is not None else "config"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}{line}: not valid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping of keys at the top level")
        data = loaded or {}
    for key, value in parse_overrides(overrides or []):
        set_dotted(data, key, value)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source)) from None
