"""Models of named towers and a role map: locked towers (no gradient, no optimiser state, eval
mode, weights bit-identical after training, cached features equal to recomputed ones), momentum
copies as towers, saving one subfolder per tower, and the config that describes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import PAIRS

import contralign
from contralign.core.errors import ConfigError
from contralign.encoders.loading import load_model
from contralign.encoders.model import AlignmentModel
from contralign.training.build import build_model, build_task
from contralign.training.config import TrainConfig
from contralign.training.loop import fit
from contralign.training.optim import build_optimizer

COLUMNS = {"anchor": "query", "positive": "doc"}


def two_tower_config(tiny_model_dir: Path, data: Path, out: Path, **extra) -> TrainConfig:
    """A locked tiny BERT with a trained head for the anchors, static vectors (trained, with a
    head... static towers have none, so: a projection on the text tower) for the positives."""
    towers = {"query": {"name": str(tiny_model_dir), "frozen": True, "projection_dim": 32,
                        "max_length": 32},
              "doc": {"name": str(tiny_model_dir), "max_length": 32}}
    return TrainConfig.model_validate({
        "model": {"towers": towers, "roles": {"anchor": "query", "positive": "doc"}},
        "data": {"path": str(data), "columns": COLUMNS},
        "objective": {"name": "clip", "learnable_temperature": True},
        "optim": {"lr": 1e-2},
        "train": {"batch_size": 4, "max_steps": 3, "seed": 0, **extra},
        "output_dir": str(out),
    })


def test_a_locked_tower_gets_no_gradient_no_state_and_keeps_its_weights(
        tiny_model_dir, pairs_file, tmp_path):
    config = two_tower_config(tiny_model_dir, pairs_file, tmp_path / "run")
    model = build_model(config)
    query = model.towers["query"]
    backbone = {k: v.clone() for k, v in query.model.state_dict().items()}
    task = build_task(config, model)
    optimizer = build_optimizer(task, config.optim)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in query.model.parameters())
    assert all(id(p) in optimised for p in query.head.parameters())
    task.train()
    assert not query.training and not query.model.training  # locked: always eval
    result = fit(config, progress=False, encoder=None)
    saved = load_file(str(result.model_dir / "query" / "model.safetensors"))
    assert all(torch.equal(saved[k], backbone[k]) for k in backbone)  # bit-identical
    head = load_file(str(result.model_dir / "query" / "2_Dense" / "model.safetensors"))
    assert not torch.equal(head["linear.weight"], query.head.weight.detach())  # head trained
    doc = load_file(str(result.model_dir / "doc" / "model.safetensors"))
    assert any(not torch.equal(doc[k], backbone[k]) for k in backbone)  # the other side trained


def test_cached_features_give_the_loss_and_gradients_of_recomputing(tiny_model_dir, pairs_file,
                                                                    tmp_path):
    config = two_tower_config(tiny_model_dir, pairs_file, tmp_path / "run")
    task = build_task(config, build_model(config))
    task.train()
    query = task.model.towers["query"]
    texts = [q for q, _ in PAIRS[:4]]
    docs = [d for _, d in PAIRS[:4]]
    keys = torch.arange(4)
    batch = {"anchor": query.preprocess(texts), "positive": task.model.towers["doc"]
             .preprocess(docs), "anchor_ids": keys, "positive_ids": keys + 10,
             "keys": {"anchor": keys}}
    results = []
    for _ in range(3):  # first: computes and caches; then: from the cache
        task.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the trained side's dropout: the same masks every time
        loss = task(batch)["loss"]
        loss.backward()
        results.append((loss.detach(), query.head.weight.grad.clone()))
    assert len(task.model.caches["query"].rows) == 4
    uncached = {**batch, "keys": {}}  # no item ids: computed every time
    task.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # (the locked side runs in eval mode: it draws nothing)
    loss = task(uncached)["loss"]
    loss.backward()
    for cached_loss, cached_grad in results:
        assert torch.equal(cached_loss, loss.detach())
        assert torch.equal(cached_grad, query.head.weight.grad)


def test_a_model_of_two_towers_saves_a_folder_per_tower(tiny_model_dir, pairs_file, tmp_path):
    config = two_tower_config(tiny_model_dir, pairs_file, tmp_path / "run")
    result = fit(config, progress=False)
    manifest = json.loads((result.model_dir / "contralign.json").read_text())
    assert manifest["model"] == {"towers": {"query": "text", "doc": "text"},
                                 "roles": {"anchor": "query", "positive": "doc"},
                                 "frozen": ["query"]}
    loaded = load_model(result.model_dir)
    for name in ("query", "doc"):
        tower = contralign.load_tower(str(result.model_dir / name))
        assert tower.fingerprint() == loaded.towers[name].fingerprint()
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(result.model_dir / "doc"), device="cpu")
    ours = contralign.load_tower(str(result.model_dir / "doc")).encode(["a cat"])
    assert torch.allclose(torch.from_numpy(st.encode(["a cat"])), torch.from_numpy(ours),
                          atol=1e-5)


def test_a_momentum_copy_is_a_tower(tiny_model_dir, pairs_file, tmp_path):
    towers = {"online": {"name": str(tiny_model_dir)},
              "key": {"momentum_of": "online", "momentum": 0.5}}
    config = TrainConfig.model_validate({
        "model": {"towers": towers, "roles": {"anchor": "online", "positive": "key"}},
        "data": {"path": str(pairs_file), "columns": COLUMNS},
        "objective": {"name": "moco", "queue_size": 8},
        "train": {"batch_size": 4, "max_steps": 2}, "output_dir": str(tmp_path / "run")})
    model = build_model(config)
    assert model.sources == {"key": "online"}
    assert not any(p.requires_grad for p in model.towers["key"].parameters())
    result = fit(config, progress=False)
    assert (result.model_dir / "model.safetensors").is_file()  # one online tower: its folder


@pytest.mark.parametrize(("model", "message"), [
    ({"towers": {"a": {}}, "roles": {"anchor": "a"}}, "roles: map both anchor and positive"),
    ({"towers": {"a": {}}, "roles": {"anchor": "a", "positive": "b"}},
     "roles.positive: 'b' is not one of the towers"),
    ({"name": "x", "towers": {"a": {}}, "roles": {"anchor": "a", "positive": "a"}},
     "model.name: with model.towers, set it per tower"),
    ({"towers": {"a": {}, "b": {"momentum_of": "a", "name": "y"}},
      "roles": {"anchor": "a", "positive": "b"}}, "towers.b.name: a momentum copy takes only"),
    ({"towers": {"a": {"momentum_of": "a"}}, "roles": {"anchor": "a", "positive": "a"}},
     "momentum_of: 'a' must name another tower"),
    ({"roles": {"anchor": "a", "positive": "a"}}, "roles: name the towers under model.towers"),
    ({"towers": {"keys": {}}, "roles": {"anchor": "keys", "positive": "keys"}},
     "'keys' cannot name a tower"),
])
def test_model_configs_are_checked(model, message):
    from pydantic import ValidationError

    from contralign.core.config import describe_validation_error

    with pytest.raises(ValidationError) as info:
        TrainConfig.model_validate({"model": model, "data": {"path": "x.jsonl"}})
    assert message in describe_validation_error(info.value, "c.yaml")


def test_towers_of_different_widths_are_a_config_error(tiny_model_dir, pairs_file, tmp_path):
    towers = {"a": {"name": str(tiny_model_dir)}, "b": {"name": "wordllama-256"}}
    config = TrainConfig.model_validate({
        "model": {"towers": towers, "roles": {"anchor": "a", "positive": "b"}},
        "data": {"path": str(pairs_file), "columns": COLUMNS}})
    with pytest.raises(ConfigError, match="different widths .* common projection_dim"):
        build_model(config)


def test_one_tower_models_are_the_special_case(tiny_model_dir):
    tower = contralign.load_tower(str(tiny_model_dir))
    model = AlignmentModel.single(tower)
    assert model.tower_for("anchor") is model.tower_for("positive") is tower
    assert model.tower_for("negative.0") is tower and model.side("positive") is tower


def test_one_tower_of_a_model_of_several_is_chosen_by_name_or_modality(tiny_model_dir,
                                                                        tmp_path):
    from contralign.core.errors import ModelNotFoundError

    image = contralign.load_tower("efficientnet-lite0", image_size=32, projection_dim=32)
    text = contralign.load_tower(str(tiny_model_dir))
    AlignmentModel({"image": image, "text": text},
                   {"anchor": "image", "positive": "text"}).save(tmp_path / "m")
    assert contralign.load_tower(str(tmp_path / "m"), tower="image").modality == "image"
    assert contralign.load_tower(str(tmp_path / "m"), tower="text").kind == "text"
    with pytest.raises(ModelNotFoundError, match=r"holds several towers: image \(image\), "
                                                 r"text \(text\); choose one with --tower"):
        contralign.load_tower(str(tmp_path / "m"))
    with pytest.raises(ModelNotFoundError, match="'audio' names no single tower"):
        contralign.load_tower(str(tmp_path / "m"), tower="audio")
    model = load_model(tmp_path / "m")
    assert model.roles == {"anchor": "image", "positive": "text"}
    assert model.towers["image"].fingerprint() == image.fingerprint()


def test_raw_items_are_preprocessed_only_when_the_cache_lacks_them(tiny_model_dir, pairs_file,
                                                                   tmp_path, monkeypatch):
    """A locked tower's role may carry raw items (core.items.Deferred): the same loss and
    gradients as preprocessed inputs, and each item preprocessed once."""
    from contralign.core.items import Deferred

    config = two_tower_config(tiny_model_dir, pairs_file, tmp_path / "run")
    task = build_task(config, build_model(config))
    task.train()
    query, doc = task.model.towers["query"], task.model.towers["doc"]
    texts, docs = [q for q, _ in PAIRS[:4]], [d for _, d in PAIRS[:4]]
    keys = torch.arange(4)
    base = {"positive": doc.preprocess(docs), "anchor_ids": keys, "positive_ids": keys + 10,
            "keys": {"anchor": keys}}
    torch.manual_seed(0)
    expected = task({**base, "anchor": query.preprocess(texts)})["loss"]
    task.model.caches["query"].rows.clear()
    seen: list[list[str]] = []
    real = query.preprocess
    monkeypatch.setattr(query, "preprocess", lambda items: seen.append(list(items)) or
                        real(items))
    for _ in range(2):
        torch.manual_seed(0)
        got = task({**base, "anchor": Deferred()(texts)})["loss"]
        assert torch.equal(got, expected)
    assert seen == [texts]  # once, for the first pass; the second came from the cache


def test_a_locked_tower_is_in_eval_mode_from_the_start(tiny_model_dir):
    """Before anyone calls train(): its cached features are eval-mode ones (no dropout)."""
    tower = contralign.load_tower(str(tiny_model_dir), projection_dim=8)
    model = AlignmentModel({"a": tower, "b": contralign.load_tower(str(tiny_model_dir))},
                           {"anchor": "a", "positive": "b"}, frozen=["a"])
    assert not tower.training and model.towers["b"].training
    batch = tower.preprocess(["a cat", "a dog"])
    first = model.embed("anchor", batch, torch.arange(2))
    again = model.caches["a"].features(tower, batch, None)  # recomputed, not cached
    assert torch.equal(tower.project(again), first)
