"""Every bundled recipe runs end to end on tiny data; every objective trains through the task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.objectives import OBJECTIVES
from contralign.training.loop import build_task
from contralign.training.recipes import list_recipes

runner = CliRunner()
RECIPES = list_recipes()
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


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
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
    config = TrainConfig.model_validate({"data": {"path": "unused"},
                                         "objective": {"name": name, **params}})
    task = build_task(config, encoder)
    if name == "moco":  # fill the queue first: the first batch has no negatives yet
        task(_batch(encoder))
    losses = task(_batch(encoder))
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
