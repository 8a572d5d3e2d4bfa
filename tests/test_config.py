"""Configs: YAML numbers, unreadable files, values checked where they enter (naming the key), the
objective registry read without torch, and examples/train.yaml = the README block = the defaults."""

from __future__ import annotations

import inspect
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.core.config import load_config, parse_overrides, parse_yaml
from contralign.core.errors import ConfigError
from contralign.objectives import OBJECTIVES, build_objective
from contralign.training.config import ObjectiveConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train.yaml"
runner = CliRunner()


def _write(tmp_path: Path, config: dict[str, Any] | str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    path.write_text(text, encoding="utf-8")
    return path




# --- YAML numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "number"), [
    ("5e-2", 0.05), ("1e5", 1e5), ("-3E-4", -3e-4), (".5e1", 5.0), ("+2e+3", 2000.0),
    ("1.e5", 1e5), ("5.0e-2", 0.05), ("1.5", 1.5), ("-.5", -0.5), (".inf", math.inf),
])
def test_scientific_notation_reads_as_a_float(text, number):
    value = parse_yaml(f"x: {text}")["x"]
    assert type(value) is float and value == number
    assert parse_overrides([f"optim.lr={text}"]) == [("optim.lr", number)]


@pytest.mark.parametrize(("text", "value"), [
    ("12", 12), ("1_000", 1000), ("0x1A", 26), ("1e", "1e"), ("e5", "e5"), ("1e-", "1e-"),
    ("1.2.3", "1.2.3"), ("'5e-2'", "5e-2"), ("true", True), ("null", None), (".nan", None),
])
def test_other_scalars_read_as_before(text, value):
    got = parse_yaml(f"x: {text}")["x"]
    if text == ".nan":
        assert math.isnan(got)
        return
    assert got == value and type(got) is type(value)


def test_the_loader_leaves_pyyaml_itself_alone():
    assert yaml.safe_load("x: 5e-2")["x"] == "5e-2"  # our resolver is on our loader only


def test_temperature_written_5e_minus_2_trains_as_a_float(tmp_path):
    path = _write(tmp_path, "data: {path: x.jsonl}\nobjective: {name: info_nce, "
                            "temperature: 5e-2}\noptim: {lr: 1e-5, eps: 1e-8}\n")
    config = load_config(TrainConfig, path, ["objective.learnable_temperature=false"])
    assert config.objective.params["temperature"] == 0.05 and config.optim.lr == 1e-5
    objective = build_objective("info_nce", config.objective.params)
    assert float(objective.log_scale) == pytest.approx(math.log(20.0))


def test_objective_values_are_kept_converted():
    """A value pydantic accepts by conversion reaches the objective converted: the string
    "false" is False (a non-empty string would be truthy), 2.0 is the int 2."""
    config = ObjectiveConfig.model_validate({"name": "info_nce", "temperature": "0.1",
                                             "symmetric": "false", "tile_size": 2.0})
    assert config.params == {"temperature": 0.1, "symmetric": False, "tile_size": 2}
    assert type(config.params["tile_size"]) is int


def test_recipes_read_numbers_the_same_way(tmp_path, monkeypatch):
    from contralign.training import recipes

    (tmp_path / "sci.yaml").write_text("# Sci (A, arXiv:1): x\nobjective: {name: supcon, "
                                       "temperature: 1e-1}\n", encoding="utf-8")
    monkeypatch.setattr(recipes, "recipes_dir", lambda: tmp_path)
    [recipe] = recipes.list_recipes()
    assert recipe.objective == "supcon"
    assert load_config(TrainConfig, recipe.path, ["data.path=x"]).objective.params == {
        "temperature": 0.1}


# --- files and --set items that cannot be read ------------------------------------------------


def test_set_value_that_is_not_yaml_names_the_item(tmp_path):
    path = _write(tmp_path, {"data": {"path": "x.jsonl"}})
    with pytest.raises(ConfigError, match=re.escape("--set optim.lr=[1,: ") + ".*not valid YAML"):
        load_config(TrainConfig, path, ["optim.lr=[1,"])
    result = runner.invoke(app, ["train", str(path), "--set", "optim.betas=[0.9, 0.99"])
    assert "--set optim.betas=[0.9, 0.99: " in one_line_error(result)


def test_config_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("data:\n  path: caf\xe9.jsonl\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml:2: not UTF-8 text \(byte 0xe9"):
        load_config(TrainConfig, path)
    assert "latin1.yaml:2: not UTF-8" in one_line_error(runner.invoke(app, ["train", str(path)]))


def test_config_that_is_a_folder_names_it(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    with pytest.raises(ConfigError, match="configs: is a folder, not a config file"):
        load_config(TrainConfig, folder)
    line = one_line_error(runner.invoke(app, ["train", str(folder)]))
    assert line.endswith("configs: is a folder, not a config file")


def test_config_that_cannot_be_read_names_it(tmp_path, monkeypatch):
    path = _write(tmp_path, {"data": {"path": "x.jsonl"}}, "locked.yaml")
    read_text = Path.read_text

    def refuse(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == path:  # tests run as root, where chmod 000 does not stop a read
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(ConfigError, match="locked.yaml: permission denied"):
        load_config(TrainConfig, path)
    assert "locked.yaml: permission denied" in one_line_error(
        runner.invoke(app, ["train", str(path)]))


# --- values checked when the config is read ---------------------------------------------------


@pytest.mark.parametrize("bad", ["0", "-0.1", ".nan", ".inf", "-.inf"])
def test_temperature_must_be_finite_and_positive(tmp_path, bad):
    path = _write(tmp_path, {"data": {"path": "x.jsonl"}})
    with pytest.raises(ConfigError, match=r"c.yaml: objective.temperature: "):
        load_config(TrainConfig, path, [f"objective.temperature={bad}"])
    line = one_line_error(runner.invoke(app, ["train", str(path), "--set",
                                               f"objective.temperature={bad}"]))
    assert "c.yaml: objective.temperature: " in line


@pytest.mark.parametrize(("betas", "key"), [("[0.9, 1.0]", "optim.betas.1"),
                                            ("[-0.1, 0.999]", "optim.betas.0"),
                                            ("[0.9, .nan]", "optim.betas.1")])
def test_adam_betas_must_be_in_0_1(tmp_path, betas, key):
    path = _write(tmp_path, {"data": {"path": "x.jsonl"}})
    with pytest.raises(ConfigError, match=rf"^--set: {re.escape(key)}: "):
        load_config(TrainConfig, path, [f"optim.betas={betas}"])
    assert load_config(TrainConfig, path, ["optim.betas=[0, 0.99]"]).optim.betas == (0, 0.99)


def test_max_length_has_a_config_level_bound(tmp_path):
    path = _write(tmp_path, {"data": {"path": "x.jsonl"}})
    with pytest.raises(ConfigError, match=r"^--set: model.max_length: .*131072"):
        load_config(TrainConfig, path, ["model.max_length=1e9"])
    assert load_config(TrainConfig, path, ["model.max_length=8192"]).model.max_length == 8192


def test_max_length_beyond_the_model_positions(tiny_model_dir, tmp_path):
    from contralign.encoders.text import TextEncoder

    with pytest.raises(ConfigError, match=r"^model.max_length: 1000 exceeds the 128 positions "
                                          rf"of {re.escape(str(tiny_model_dir))}$"):
        TextEncoder.from_pretrained(str(tiny_model_dir), max_length=1000)
    assert TextEncoder.from_pretrained(str(tiny_model_dir), max_length=128).config.max_length \
        == 128
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"anchor": "a", "positive": "b"}\n' * 4, encoding="utf-8")
    path = _write(tmp_path, {"data": {"path": str(data)}, "output_dir": str(tmp_path / "run"),
                             "model": {"name": str(tiny_model_dir), "max_length": 1000}})
    line = one_line_error(runner.invoke(app, ["train", str(path)]))
    assert line == f"error: model.max_length: 1000 exceeds the 128 positions of {tiny_model_dir}"


def test_build_objective_leaves_a_bad_call_as_it_is():
    """A config checks parameters first; a direct call with a wrong one is a programming error
    and keeps the constructor's own exception (not a ValueError dressed as a config error)."""
    with pytest.raises(TypeError, match="tempreature"):
        build_objective("info_nce", {"tempreature": 0.1})
    with pytest.raises(ValueError, match="info_nce: temperature must be finite and > 0"):
        build_objective("info_nce", {"temperature": 0.0})


_FLOATS = (-1.0, 0.0, 1e-3, 0.5, 0.999, 1.0, 2.0, 1e6, math.nan, math.inf, -math.inf)
_INTS = (-1, 0, 1, 3)


def _probes(annotation: Any) -> tuple[Any, ...]:
    """Values to try for a constructor parameter: around every usual bound, plus None/a wrong
    choice where they apply."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _probes(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is typing.Literal:
        return (*typing.get_args(annotation), "no_such_choice")
    args = typing.get_args(annotation)
    if type(None) in args:  # X | None
        [inner] = [arg for arg in args if arg is not type(None)]
        return (None, *_probes(inner))
    return {float: _FLOATS, int: _INTS, bool: (True, False)}[annotation]


_CASES = [pytest.param(name, key, value, id=f"{name}.{key}={value!r}")
          for name, info in sorted(OBJECTIVES.items())
          for key, (annotation, _) in info.parameters().items()
          for value in _probes(annotation)]


@pytest.mark.parametrize(("name", "key", "value"), _CASES)
def test_config_accepts_exactly_what_the_objective_accepts(name, key, value):
    """Every check a constructor makes (range, choice, finiteness) fires when the config is read,
    naming ``objective.<key>``; every value the config accepts builds."""
    try:
        config = ObjectiveConfig.model_validate({"name": name, key: value})
    except ValueError as err:
        accepted, message = False, str(err)
    else:
        accepted, message = True, ""
    try:
        build_objective(name, {key: value}, dim=8)
    except ValueError:
        built = False
    else:
        built = True
    assert accepted == built, (name, key, value, message)
    if accepted:
        build_objective(name, config.params, dim=8)  # the converted values build too
    else:
        assert f"{key}: " in message


# --- the registry lists without torch ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_listed_defaults_are_the_constructor_defaults(name):
    """``defaults()`` reads the source (no import); it must say what the signature says."""
    info = OBJECTIVES[name]
    signature = inspect.signature(info.module.__init__)
    expected = {key: param.default for key, param in signature.parameters.items()
                if key not in ("self", "dim")}
    assert info.defaults() == expected
    assert {key: default for key, (_, default) in info.parameters().items()} == expected


# --- examples/train.yaml, the README and the config model -------------------------------------


def _readme_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Training config\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```yaml\n", 1)[1].split("```\n", 1)[0]


def _example_keys(text: str) -> set[str]:
    """Dotted keys whose comment starts with ``example:`` (the file's stated convention)."""
    marked, stack = set(), []  # stack: (indent, key) of the enclosing keys
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z_]\w*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3]
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, key)]
        comment = rest.partition(" # ")[2].strip() if " # " in rest else ""
        if comment.startswith("example:"):
            marked.add(".".join(k for _, k in stack))
    return marked


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        found: dict[str, Any] = {}
        for key, value in data.items():
            found |= _leaves(value, f"{prefix}{key}.")
        return found
    return {prefix.rstrip("."): data}


def _sections(data: Any, prefix: str = "") -> set[str]:
    keys = set()
    if isinstance(data, dict):
        for key, value in data.items():
            keys |= {f"{prefix}{key}"} | _sections(value, f"{prefix}{key}.")
    return keys


def _model_keys(cls: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field of ``cls``, and of each section that is itself a config (not optional)."""
    keys = set()
    for name, field in cls.model_fields.items():
        keys.add(f"{prefix}{name}")
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys |= _model_keys(field.annotation, f"{prefix}{name}.")
    return keys


def _value_at(config: BaseModel, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part) if part in type(node).model_fields else node.model_extra[part]
    return node


def test_readme_block_is_examples_train_yaml_byte_for_byte():
    assert _readme_block() == EXAMPLE.read_text(encoding="utf-8")


def test_example_config_validates(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(TrainConfig, EXAMPLE)
    assert Path(config.data.path).is_file()
    assert config.eval.retrieval is not None and Path(config.eval.retrieval.path).is_file()


def test_example_config_shows_every_key():
    shown = _sections(parse_yaml(EXAMPLE.read_text(encoding="utf-8")))
    missing = _model_keys(TrainConfig) - shown
    assert not missing, f"examples/train.yaml lacks {sorted(missing)}"
    assert "train.grad_cache.chunk_size" in shown  # nested sections count
    objective = parse_yaml(EXAMPLE.read_text(encoding="utf-8"))["objective"]
    parameters = {*OBJECTIVES[objective["name"]].parameters(), "mask_duplicates"}
    assert parameters <= set(objective), sorted(parameters - set(objective))


def test_example_config_values_are_the_defaults(monkeypatch):
    """Every value shown is the default, except under a key whose comment says ``example:``."""
    text = EXAMPLE.read_text(encoding="utf-8")
    marked = _example_keys(text)
    assert {"data.path", "output_dir"} <= marked  # the convention is in use as documented
    assert text.splitlines()[1].startswith('# "example:"')
    monkeypatch.chdir(ROOT)
    loaded = load_config(TrainConfig, EXAMPLE)
    default = TrainConfig.model_validate({"data": {"path": loaded.data.path}})
    objective_defaults = {**OBJECTIVES[default.objective.name].defaults(), "mask_duplicates": True}
    differ = []
    for key in _leaves(parse_yaml(text)):
        if any(key == m or key.startswith(f"{m}.") for m in marked):
            continue
        section, _, leaf = key.partition(".")
        if section == "objective" and leaf != "name":
            expected = objective_defaults[leaf]
        else:
            expected = _value_at(default, key)
        if _value_at(loaded, key) != expected:
            differ.append(f"{key}: shows {_value_at(loaded, key)!r}, default {expected!r}")
    assert not differ, differ


def test_a_bad_value_from_the_file_names_the_file(tmp_path):
    path = _write(tmp_path, {"data": {"path": "x.jsonl"}, "train": {"batch_size": "many"}})
    with pytest.raises(ConfigError, match=r"c.yaml: train.batch_size: "):
        load_config(TrainConfig, path, ["optim.lr=1e-4"])  # another key set on the command line
