"""Config base: typed pydantic models that reject unknown keys, loaded from YAML."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from contralign.core.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound="StrictConfig")


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but numbers written like ``5e-2``, ``1e5``, ``-3E-4`` or ``.5e1``
    are floats, as YAML 1.2 and every user read them; YAML 1.1 wants a dot and a signed exponent
    (``5.0e-2``) and makes the rest strings. Everything else is read as ``yaml.safe_load`` does.
    """


_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.1's float forms (with ``_`` separators, sexagesimal, .inf, .nan) with the exponent's
# sign and the mantissa's dot optional, and a sign allowed before a leading dot.
_FLOAT = re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """Parse YAML text with ``ConfigLoader``.

    Raises:
        yaml.YAMLError: text that is not YAML.
    """
    return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader: builds plain data only


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
    """Parse ``key=value`` strings; values are YAML (``1e-4``, ``true``, ``[a, b]``).

    Raises:
        ConfigError: an item without ``=`` or a key, or a value that is not YAML.
    """
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected key=value")
        try:
            value = parse_yaml(raw) if raw else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: the value is not valid YAML (quote it to give "
                              "a string)") from None
        parsed.append((key.strip(), value))
    return parsed


def read_config_text(path: str | Path) -> str:
    """The text of a config file, UTF-8.

    Raises:
        ConfigError: the file is missing, a folder, unreadable or not UTF-8 text; names it.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {err.object[err.start]:#04x} "
                          f"at offset {err.start})") from None
    except OSError as err:  # any other reason the system gives for not reading it
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None


def load_config(
    cls: type[ConfigT], path: str | Path | None, overrides: list[str] | None = None
) -> ConfigT:
    """Read a YAML file (or start empty), apply ``--set`` overrides, and validate.

    Raises:
        ConfigError: a file that cannot be read, a value that is not YAML, an unknown key or a
            bad value; the message names the file (or ``--set`` item) and the key.
    """
    source = str(path) if path is not None else "config"
    data: dict[str, Any] = {}
    if path is not None:
        text = read_config_text(path)
        try:
            loaded = parse_yaml(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}{line}: not valid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping of keys at the top level")
        data = loaded or {}
    parsed = parse_overrides(overrides or [])
    for key, value in parsed:
        set_dotted(data, key, value)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        # A bad value given with --set is the --set item's fault, not the file's.
        loc = ".".join(str(part) for part in err.errors()[0]["loc"])
        overridden = [key for key, _ in parsed if loc == key or loc.startswith(key + ".")]
        where = "--set" if overridden else source
        raise ConfigError(describe_validation_error(err, where)) from None
