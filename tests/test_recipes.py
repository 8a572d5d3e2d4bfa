"""Every bundled recipe runs end to end on tiny data and its paper settings reach the objective,
the towers' settings and the optimiser it builds; every objective trains through the task."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.core.config import load_config
from contralign.data.image_views import is_image_view
from contralign.encoders.model import backbone_parameters
from contralign.objectives import OBJECTIVES
from contralign.training.build import build_model, build_task
from contralign.training.config import OptimConfig, TrainConfig
from contralign.training.optim import build_optimizer, build_scheduler
from contralign.training.recipes import list_recipes

runner = CliRunner()
RECIPES = list_recipes()


def _towers(recipe: Any) -> bool:
    return "towers" in yaml.safe_load(recipe.path.read_text())["model"]


def _teacher(recipe: Any) -> bool:
    """A distillation recipe: text towers, one of them a locked teacher."""
    return "teacher" in yaml.safe_load(recipe.path.read_text())["model"].get("roles", {})


def _image_views(recipe: Any) -> bool:
    """A self-supervised image recipe: one image tower and image views (tests/test_image_recipes.py
    runs them end to end)."""
    views = yaml.safe_load(recipe.path.read_text()).get("views") or [{}]
    return is_image_view(views[0].get("name"))


TEXT_RECIPES = [r for r in RECIPES if not _towers(r) and not _image_views(r)]
IMAGE_RECIPES = [r for r in RECIPES if _towers(r) and not _teacher(r)]
TEACHER_RECIPES = [r for r in RECIPES if _teacher(r)]
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()


def _tiny_rows(columns: dict[str, str], n: int = 24) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(5))
        values = {"anchor": text, "positive": f"{text} again {i}", "negative": f"other {i} thing",
                  "label": str(i % 4), "score": str(i % 5)}
        rows.append({column: values[role.split("_")[0]] for role, column in columns.items()})
    return rows


def test_recipes_are_listed():
    result = runner.invoke(app, ["recipes", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert {"simcse-unsup", "simcse-sup", "clear", "supcon", "siglip-text", "debiased",
            "hard-negative", "decoupled", "align-uniform", "cwcl", "moco", "swav",
            "whitened-cse"} <= set(listed)
    assert all(entry["objective"] in OBJECTIVES for entry in listed.values())
    assert {"lit", "clip", "siglip"} <= set(listed)


def _text_stand_in(recipe: Any, tiny_model_dir: Path) -> list[str]:
    """The tiny text model in place of the recipe's, with a head to the recipe's common width
    where the recipe's text tower has none (it relies on MiniLM's 384 dimensions)."""
    towers = yaml.safe_load(recipe.path.read_text())["model"]["towers"]
    overrides = [f"model.towers.text.name={tiny_model_dir}"]
    if "projection_dim" not in towers["text"]:
        overrides.append(f"model.towers.text.projection_dim={towers['image']['projection_dim']}")
    return overrides


def _tiny_towers(recipe: Any, tiny_model_dir: Path) -> list[str]:
    """Overrides that stand small towers in for an image–text recipe's: the image network at
    32 px (its weights as they are) and the tiny text model."""
    return ["model.towers.image.image_size=32", "model.towers.text.max_length=16",
            *_text_stand_in(recipe, tiny_model_dir)]


@pytest.mark.parametrize("recipe", IMAGE_RECIPES, ids=[r.name for r in IMAGE_RECIPES])
def test_image_recipe_runs_on_tiny_data(recipe, tiny_model_dir: Path, tmp_path: Path):
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "images.npz"
    np.savez(data, images=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8),
             labels=np.arange(24) % 4, classes=np.array(["cat", "dog", "bird", "ship"]))
    overrides = [*_tiny_towers(recipe, tiny_model_dir), "train.batch_size=12", "train.max_steps=2",
                 f"output_dir={tmp_path / 'run'}"]
    result = runner.invoke(app, ["train", recipe.name, "--data", str(data), "--json",
                                 *[arg for o in overrides for arg in ("--set", o)]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and Path(summary["model_dir"], "image").is_dir()


def _tiny_teacher_and_student(recipe: Any, tiny_model_dir: Path) -> list[str]:
    """The tiny text model for every tower of a distillation recipe (teacher and student)."""
    towers = yaml.safe_load(recipe.path.read_text())["model"]["towers"]
    return [f"model.towers.{name}.name={tiny_model_dir}" for name in towers]


@pytest.mark.parametrize("recipe", TEACHER_RECIPES, ids=[r.name for r in TEACHER_RECIPES])
def test_teacher_recipe_runs_on_tiny_data(recipe, tiny_model_dir: Path, tmp_path: Path):
    config = yaml.safe_load(recipe.path.read_text())
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _tiny_rows(config["data"]["columns"])))
    overrides = [*_tiny_teacher_and_student(recipe, tiny_model_dir), "train.batch_size=12",
                 "train.max_steps=2", f"output_dir={tmp_path / 'run'}"]
    result = runner.invoke(app, ["train", recipe.name, "--data", str(data), "--json",
                                 *[arg for o in overrides for arg in ("--set", o)]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and Path(summary["model_dir"], "student").is_dir()


@pytest.mark.parametrize("recipe", TEXT_RECIPES, ids=[r.name for r in TEXT_RECIPES])
def test_recipe_runs_on_tiny_data(recipe, tiny_model_dir: Path, tmp_path: Path):
    config = yaml.safe_load(recipe.path.read_text())
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _tiny_rows(config["data"]["columns"])))
    overrides = [f"model.name={tiny_model_dir}", "model.max_length=16", "train.batch_size=12",
                 "train.max_steps=2", "train.drop_last=true", f"output_dir={tmp_path / 'run'}"]
    if config["objective"]["name"] == "whitened_cse":
        overrides.append("objective.groups=4")  # a 32-wide test tower: 8 dimensions a group
    result = runner.invoke(app, ["train", recipe.name, "--data", str(data), "--json",
                                 *[arg for o in overrides for arg in ("--set", o)]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and Path(summary["model_dir"], "model.safetensors").is_file()


# --- each recipe's settings reach what training builds --------------------------------------


def _objective_setting(task: Any, key: str) -> Any:
    """The value that the built task holds for the objective setting ``key``, read from the
    module's state (not from the config), where the module keeps it under another form."""
    objective = task.objective
    match key:
        case "momentum":  # a task setting: the key tower's momentum
            return None if task.key_encoder is None else task.key_encoder.momentum
        case "bn_splits":  # a task setting: shuffle-BN's groups
            return task.bn_splits
        case "queue_size":  # swav keeps its size until the first batch makes its queues
            return (objective.queue_size if hasattr(objective, "queue_size")
                    else objective.queue.keys.shape[0])
        case "n_prototypes":
            return objective.prototypes.shape[0]
        case "logit_scale":
            return float(objective.log_scale.detach().exp())
        case "logit_bias":
            return float(objective.bias.detach())
        case "learnable":
            return isinstance(objective.log_scale, nn.Parameter) and objective.bias.requires_grad
        case "temperature" if not hasattr(objective, "temperature"):  # kept as log(1/τ)
            return float(1.0 / objective.log_scale.detach().exp())
        case "learnable_temperature" if not hasattr(objective, key):
            return isinstance(objective.log_scale, nn.Parameter)
    value = getattr(objective, key)
    return float(value.detach()) if isinstance(value, torch.Tensor) else value


def _reference_schedule(optimizer: torch.optim.Optimizer, schedule: str, warmup: int,
                        total: int) -> Any:
    """transformers' schedule of that name: an independent implementation of warmup + decay."""
    import transformers

    match schedule:
        case "linear":
            return transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
        case "cosine":
            return transformers.get_cosine_schedule_with_warmup(optimizer, warmup, total)
        case _:
            return transformers.get_constant_schedule_with_warmup(optimizer, warmup)


def _assert_settings_reach_the_run(settings: dict[str, Any], config: TrainConfig) -> None:
    """Build the tower, task, optimiser and scheduler as ``fit`` does; every setting that
    ``settings`` (the recipe's YAML) gives to the model, the objective and the optimiser is
    found in what was built, and every optimiser setting it leaves out has the default."""
    model = build_model(config)
    towers = settings["model"].get("towers", {"tower": settings["model"]})
    for name, tower_settings in towers.items():
        tower = model.towers[name]
        for key, value in tower_settings.items():
            if key == "frozen":
                assert (name in model.frozen) == value, f"model.towers.{name}.frozen"
                assert all(not p.requires_grad for p in backbone_parameters(tower)) == value
            elif key == "head":  # the training head: an MLP to dims[-1], BatchNorm or none
                head = model.heads[name]
                linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
                assert [m.out_features for m in linears] == value["dims"], "model.head.dims"
                assert any(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == \
                    value.get("batch_norm", True), "model.head.batch_norm"
            elif key == "freeze_embeddings":
                embeddings = tower.model.get_input_embeddings().weight
                assert embeddings.requires_grad != value, f"model.{key}"
            elif key != "name":
                assert getattr(tower.config, key) == value, f"model.{key}"

    task = build_task(config, model)
    objective = dict(settings["objective"])
    assert type(task.objective) is OBJECTIVES[objective.pop("name")].module
    for key, value in objective.items():
        expected = value if isinstance(value, bool | str) else pytest.approx(value, rel=1e-6)
        assert _objective_setting(task, key) == expected, f"objective.{key}"

    optim = {key: settings.get("optim", {}).get(key, field.default)
             for key, field in OptimConfig.model_fields.items()}
    optimizer = build_optimizer(task, config.optim)
    decay, no_decay = optimizer.param_groups  # weights; biases, norms and scalars
    assert decay["params"] and decay["weight_decay"] == pytest.approx(optim["weight_decay"])
    assert no_decay["weight_decay"] == 0.0
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(optim["lr"]), "optim.lr"
        assert tuple(group["betas"]) == pytest.approx(tuple(optim["betas"])), "optim.betas"
        assert group["eps"] == pytest.approx(optim["eps"]), "optim.eps"

    total = 200  # warmup_ratio of the steps, rounded up (as transformers' Trainer does)
    warmup = (optim["warmup_steps"] if optim["warmup_steps"] is not None
              else math.ceil(total * optim["warmup_ratio"]))
    ours = build_scheduler(optimizer, config.optim, total).lr_lambdas[0]
    probe = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = _reference_schedule(probe, optim["schedule"], warmup, total).lr_lambdas[0]
    for step in range(total + 1):
        assert ours(step) == pytest.approx(theirs(step), abs=1e-9), \
            f"optim.schedule/warmup at step {step}"


def _stand_ins(recipe: Any, tiny_model_dir: Path) -> list[str]:
    if _teacher(recipe):
        return [*_tiny_teacher_and_student(recipe, tiny_model_dir), "data.path=unused.jsonl"]
    if _towers(recipe):
        return [*_text_stand_in(recipe, tiny_model_dir), "data.path=unused.npz"]
    if _image_views(recipe):  # the recipe's own from-scratch image tower
        return ["data.path=unused.npz"]
    return [f"model.name={tiny_model_dir}", "data.path=unused.jsonl"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_recipe_settings_reach_the_objective_and_optimiser(recipe, tiny_model_dir: Path):
    """The recipe as ``contralign train RECIPE --data … --set model.name=…`` reads it (the tiny
    tower stands in for the recipe's text model; nothing else is changed)."""
    settings = yaml.safe_load(recipe.path.read_text())
    config = load_config(TrainConfig, recipe.path, _stand_ins(recipe, tiny_model_dir))
    _assert_settings_reach_the_run(settings, config)


def _changed(value: Any, annotation: Any) -> Any:
    """Another valid value of a setting: a flipped bool, an int + 1, half a float, the next
    choice of a Literal."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.05
    return next(choice for choice in get_args(annotation) if choice != value)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_changed_recipe_settings_reach_the_objective_and_optimiser(recipe, tiny_model_dir: Path):
    """Every setting of the recipe changed to another valid value: a setting dropped on the way
    (so that the default applies) is caught even where the paper's value is the default."""
    settings = yaml.safe_load(recipe.path.read_text())
    changed = copy.deepcopy(settings)
    towers = changed["model"].get("towers")
    if towers and _teacher(recipe):  # the teacher stays locked, without a head
        for tower in towers.values():
            tower["name"] = str(tiny_model_dir)
            tower["max_length"] = tower.get("max_length", 64) // 2
    elif towers:
        towers["text"]["name"] = str(tiny_model_dir)
        for tower in towers.values():
            tower["projection_dim"] = 96  # a common width, changed from every recipe's
            tower["frozen"] = not tower.get("frozen", False)
    elif _image_views(recipe):  # the image tower as it is, another training head
        head = changed["model"]["head"]
        head["dims"] = [width // 2 for width in head["dims"]]
        head["batch_norm"] = not head["batch_norm"]
    else:
        changed["model"]["name"] = str(tiny_model_dir)
        changed["model"]["max_length"] = changed["model"].get("max_length", 64) // 2
    changed["data"]["path"] = "unused.npz" if _image_views(recipe) else "unused.jsonl"
    objective = changed["objective"]
    accepted = OBJECTIVES[objective["name"]].parameters()
    for key, value in objective.items():
        if key != "name":
            objective[key] = _changed(value, accepted.get(key, (float, None))[0])
    optim = changed.setdefault("optim", {})
    for key, value in list(optim.items()):
        optim[key] = _changed(value, OptimConfig.model_fields[key].annotation)
    optim["betas"] = (0.8, 0.99)
    for key, value in objective.items():
        assert key == "name" or value != settings["objective"][key], key
    _assert_settings_reach_the_run(changed, TrainConfig.model_validate(changed))


def _batch(encoder, n: int = 6) -> dict:
    from contralign.data import Record, collate

    records = [Record(anchor=f"{WORDS[i]} {WORDS[i + 1]}", positive=f"{WORDS[i + 2]} text",
                      label=str(i % 2), score=float(i)) for i in range(n)]
    batch = dict(collate(records, encoder.preprocess))
    batch["views"] = [batch["anchor"], batch["positive"], batch["anchor"]]  # V = 3
    return batch


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_trains_through_the_task(name, tiny_model_dir):
    """timm-style: forward, backward, finite loss, gradient on every trainable parameter."""
    from contralign.encoders.text import TextEncoder
    from contralign.training.config import TrainConfig

    torch.manual_seed(0)
    encoder = TextEncoder.from_pretrained(str(tiny_model_dir), max_length=16)
    params = {"swav": {"n_prototypes": 8}, "whitened_cse": {"groups": 8}}.get(name, {})
    model: dict[str, Any] = {}
    if "targets" in OBJECTIVES[name].requires:  # distillation: a locked teacher of its own
        model = {"towers": {"student": {"name": str(tiny_model_dir), "max_length": 16},
                            "teacher": {"name": str(tiny_model_dir), "frozen": True}},
                 "roles": {"anchor": "student", "positive": "student", "teacher": "teacher"}}
    config = TrainConfig.model_validate({"data": {"path": "unused"}, "model": model,
                                         "objective": {"name": name, **params}})
    task = build_task(config, build_model(config) if model else encoder)
    if name == "moco":  # fill the queue first: the first batch has no negatives yet
        task(_batch(encoder))
    batch = _batch(encoder)
    if model:  # the teacher's copy of the anchors
        batch["teacher"] = batch["anchor"]
    losses = task(batch)
    assert torch.isfinite(losses["loss"]) and losses["loss"].ndim == 0
    losses["loss"].backward()
    untouched = [n for n, p in task.named_parameters()
                 if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
                 and "pooler" not in n]
    assert not untouched, untouched


def test_cwcl_keys_can_come_from_a_frozen_copy_of_the_tower(tiny_model_dir):
    """One shared trained tower warns; ``momentum: 1.0`` embeds the keys (and so the soft
    targets) with a frozen copy of the starting tower, which no training step moves."""
    import warnings

    from contralign.encoders.text import TextEncoder
    from contralign.training.config import TrainConfig

    def task_for(objective: dict):
        torch.manual_seed(0)
        encoder = TextEncoder.from_pretrained(str(tiny_model_dir), max_length=16)
        config = TrainConfig.model_validate({"data": {"path": "unused"},
                                             "objective": {"name": "cwcl", **objective}})
        return build_task(config, encoder), encoder

    shared, encoder = task_for({})
    assert shared.key_encoder is None
    with pytest.warns(UserWarning, match=r"cwcl: .*being trained.*objective\.momentum: 1\.0"):
        shared(_batch(encoder))

    frozen, encoder = task_for({"momentum": 1.0})
    assert frozen.key_encoder is not None
    start = {k: v.clone() for k, v in frozen.key_encoder.state_dict().items()}
    online = {k: v.clone() for k, v in frozen.encoder.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # keys without gradient: no warning
        frozen(_batch(encoder))["loss"].backward()
    optimizer.step()
    frozen.after_step()
    assert all(torch.equal(v, start[k]) for k, v in frozen.key_encoder.state_dict().items())
    assert any(not torch.equal(v, online[k]) for k, v in frozen.encoder.state_dict().items())

    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="momentum: must be in"):
            TrainConfig.model_validate({"data": {"path": "unused"},
                                        "objective": {"name": "cwcl", "momentum": bad}})
    with pytest.raises(ValueError, match="momentum: unknown parameter of info_nce"):
        TrainConfig.model_validate({"data": {"path": "unused"},
                                    "objective": {"name": "info_nce", "momentum": 1.0}})
