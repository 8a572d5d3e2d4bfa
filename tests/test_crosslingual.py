"""Cross-lingual training: InfoNCE's additive margin (LaBSE) and multilingual knowledge
distillation (a locked teacher tower), against naive references and reference libraries, on
every fast path; the teacher role end to end; both recipes on real bitext rows."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from reference_crosslingual import naive_distill_mse, naive_margin_info_nce
from tests.conftest import one_line_error
from torch import Tensor
from torch.testing import assert_close
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.core.errors import ConfigError
from contralign.objectives import build_objective, info_nce
from contralign.objectives.distillation import distill_mse
from contralign.objectives.inputs import Embedded
from contralign.objectives.tiled import tiled_info_nce
from contralign.training.config import TrainConfig

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")



def leaves(seed: int, *shapes: tuple[int, ...]) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()
            for shape in shapes]


def ids_for(batch: int, k: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Duplicates: repeated keys and queries, and a hard negative equal to row 0's positive."""
    key_ids = torch.arange(batch) % max(1, (batch + 1) // 2)
    query_ids = torch.arange(batch) // 2
    if not k:
        return query_ids, key_ids, None
    negative_ids = 100 + torch.arange(batch * k).reshape(batch, k)
    negative_ids[-1, 0] = key_ids[0]
    return query_ids, key_ids, negative_ids


def grads(loss: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(x) if g is None else g
            for x, g in zip(inputs, torch.autograd.grad(loss, inputs, allow_unused=True),
                            strict=True)]


# === InfoNCE with an additive margin ===========================================================


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("with_ids", [False, True], ids=["no_ids", "dup_ids"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["one_way", "symmetric"])
@pytest.mark.parametrize("k", [0, 2], ids=lambda k: f"K{k}")
@pytest.mark.parametrize(("batch", "dim"), [(1, 5), (3, 7), (8, 16)], ids=str)
def test_margin_info_nce_matches_naive_value_and_gradients(batch, dim, k, symmetric, with_ids,
                                                            margin):
    query, key, negatives = leaves(batch * 13 + dim, (batch, dim), (batch, dim),
                                   (batch, max(k, 1), dim))
    query_ids, key_ids, negative_ids = ids_for(batch, k) if with_ids else (None, None, None)
    kwargs: dict[str, Any] = dict(temperature=0.1, symmetric=symmetric, query_ids=query_ids,
                                  key_ids=key_ids, negative_ids=negative_ids)
    negatives_or_none = negatives if k else None
    fast = info_nce(query, key, negatives=negatives_or_none, margin=margin, **kwargs)
    naive = naive_margin_info_nce(query, key, negatives_or_none, margin=margin, **kwargs)
    inputs = [query, key, negatives] if k else [query, key]
    assert_close(fast, naive)
    for fast_grad, naive_grad in zip(grads(fast, inputs), grads(naive, inputs), strict=True):
        assert_close(fast_grad, naive_grad)


def test_margin_equals_pytorch_metric_learning_cosface():
    """One direction of the margin loss is CosFace (arXiv:1801.09414) with the keys as the class
    weights: ``s · (cos − m·δ)`` and a softmax over the B "classes" (pytorch-metric-learning's
    implementation, value and gradients)."""
    from pytorch_metric_learning.losses import CosFaceLoss
    from pytorch_metric_learning.reducers import MeanReducer

    query, key = leaves(4, (6, 8), (6, 8))
    reference = CosFaceLoss(num_classes=6, embedding_size=8, margin=0.3, scale=20.0,
                            reducer=MeanReducer()).double()
    reference.W.data = key.detach().T.clone()
    theirs = reference(query, torch.arange(6))
    ours = info_nce(query, key, temperature=1 / 20.0, margin=0.3)
    assert_close(ours, theirs)
    query_grad, key_grad = torch.autograd.grad(ours, [query, key])
    their_query_grad, their_w_grad = torch.autograd.grad(theirs, [query, reference.W])
    assert_close(query_grad, their_query_grad)
    assert_close(key_grad, their_w_grad.T)


def test_zero_margin_is_the_plain_loss_bit_for_bit():
    query, key = leaves(5, (7, 4), (7, 4))
    q, k = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    plain = F.cross_entropy((1.0 / 0.05) * q @ k.T, torch.arange(7))  # the loss before margins
    assert torch.equal(info_nce(query, key, margin=0.0), plain)
    assert torch.equal(tiled_info_nce(query, key, margin=0.0, tile_size=3),
                       tiled_info_nce(query, key, tile_size=3))


def test_margin_known_answer_on_orthonormal_pairs():
    # cos = 1 on the diagonal, 0 elsewhere: −log(e^{(1−m)/τ} / (e^{(1−m)/τ} + B − 1)).
    eye = torch.eye(3, dtype=torch.float64)
    expected = math.log1p(2 * math.exp(-(1 - 0.3) / 0.5))
    assert info_nce(eye, eye, temperature=0.5, margin=0.3).item() == pytest.approx(expected)
    assert info_nce(eye, eye, temperature=0.5, margin=0.3, symmetric=True).item() == \
        pytest.approx(expected)
    # The margin makes a pair that already wins cost more, never less.
    assert info_nce(eye, eye, temperature=0.5).item() < expected


@pytest.mark.parametrize("with_ids", [False, True], ids=["no_ids", "dup_ids"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["one_way", "symmetric"])
@pytest.mark.parametrize("k", [0, 2], ids=lambda k: f"K{k}")
@pytest.mark.parametrize(("batch", "tile_size"), [(5, 2), (8, 3), (9, 9)], ids=str)
def test_tiled_margin_equals_plain(batch, tile_size, k, symmetric, with_ids):
    """Value and gradients of every input, the learned temperature's included (its gradient
    gains −m · Σ_i W_ii with the margin)."""
    query, key, negatives = leaves(batch + k, (batch, 6), (batch, 6), (batch, max(k, 1), 6))
    temperature = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    query_ids, key_ids, negative_ids = ids_for(batch, k) if with_ids else (None, None, None)
    kwargs: dict[str, Any] = dict(negatives=negatives if k else None, temperature=temperature,
                                  symmetric=symmetric, query_ids=query_ids, key_ids=key_ids,
                                  negative_ids=negative_ids, margin=0.3)
    inputs = [query, key, temperature, *([negatives] if k else [])]
    plain = info_nce(query, key, **kwargs)
    tiled = tiled_info_nce(query, key, tile_size=tile_size, **kwargs)
    assert_close(tiled, plain)
    for tiled_grad, plain_grad in zip(grads(tiled, inputs), grads(plain, inputs), strict=True):
        assert_close(tiled_grad, plain_grad)


def test_margin_rows_add_up_to_the_whole_batch():
    """The multi-process form (each process scores its rows against every candidate): the
    row-weighted sum of the row losses is the whole batch's loss, gradients included."""
    query, key, negatives = leaves(9, (7, 5), (7, 5), (7, 1, 5))
    query_ids, key_ids, negative_ids = ids_for(7, 1)
    kwargs: dict[str, Any] = dict(negatives=negatives, temperature=0.1, symmetric=True,
                                  query_ids=query_ids, key_ids=key_ids,
                                  negative_ids=negative_ids, margin=0.2)
    whole = info_nce(query, key, **kwargs)
    parts = sum(info_nce(query, key, rows=rows, **kwargs) * (rows.stop - rows.start) / 7
                for rows in (slice(0, 4), slice(4, 7)))
    assert isinstance(parts, Tensor)
    assert_close(parts, whole)
    for a, b in zip(grads(parts, [query, key, negatives]), grads(whole, [query, key, negatives]),
                    strict=True):
        assert_close(a, b)


def test_margin_reaches_the_module_on_every_path():
    query, key = leaves(3, (6, 4), (6, 4))
    batch = Embedded(query, key)
    expected = info_nce(query, key, temperature=0.05, symmetric=True, margin=0.3)
    for params in ({}, {"tiled": True, "tile_size": 4}):
        module = build_objective("info_nce", {"symmetric": True, "margin": 0.3, **params})
        assert_close(module(batch), expected)
    with pytest.raises(ValueError, match="info_nce: margin must be finite and >= 0"):
        info_nce(query, key, margin=-0.1)
    with pytest.raises(ValueError, match="margin: "):
        TrainConfig.model_validate({"data": {"path": "x"},
                                    "objective": {"name": "info_nce", "margin": float("nan")}})


# === distillation: the objective ==============================================================


def test_distill_mse_matches_naive_and_sentence_transformers():
    """The paper's formula as loops, and sentence-transformers' ``EmbedDistillLoss`` (the
    ``MSELoss`` of its multilingual training) over the source and translation columns with the
    teacher's embedding as both labels: value and gradients."""
    from sentence_transformers.sentence_transformer.losses.embed_distill import EmbedDistillLoss

    source, target, teacher = leaves(11, (5, 6), (5, 6), (5, 6))
    ours = distill_mse(source, target, teacher)
    naive = naive_distill_mse(source, target, teacher.detach())
    reference = EmbedDistillLoss.__new__(EmbedDistillLoss)
    torch.nn.Module.__init__(reference)
    reference.distance_metric = "mse"
    reference.projection = None
    theirs = reference.compute_loss_from_embeddings([source, target],
                                                    [teacher.detach(), teacher.detach()])
    assert_close(ours, naive)
    assert_close(ours, theirs)
    for a, b, c in zip(grads(ours, [source, target]), grads(naive, [source, target]),
                       grads(theirs, [source, target]), strict=True):
        assert_close(a, b)
        assert_close(a, c)


def test_distill_mse_gives_the_teacher_no_gradient_and_checks_shapes():
    source, target, teacher = leaves(12, (4, 3), (4, 3), (4, 3))
    distill_mse(source, target, teacher).backward()
    assert teacher.grad is None and source.grad is not None and target.grad is not None
    with pytest.raises(ValueError, match=r"distill_mse: .*teacher \(4, 5\)"):
        distill_mse(source, target, torch.zeros(4, 5))
    module = build_objective("distill_mse", {})
    with pytest.raises(ValueError, match="distill_mse: needs targets"):
        module(Embedded(source, target))
    with pytest.raises(ValueError, match="unmap the negative"):
        module(Embedded(source, target, negatives=torch.zeros(4, 1, 3), targets=teacher))


# === distillation: the teacher tower ==========================================================


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny BERT with other random weights: a teacher that disagrees with the student."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(1)
    model = BertModel(BertConfig.from_pretrained(tiny_model_dir))
    folder = tmp_path_factory.mktemp("tiny-teacher")
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


PAIRS = [("the cat sleeps", "die Katze schläft"), ("I like tea", "ich mag Tee"),
         ("where is the station", "wo ist der Bahnhof"), ("it is raining", "es regnet"),
         ("good morning", "guten Morgen"), ("the book is red", "das Buch ist rot"),
         ("we are late", "wir sind spät"), ("open the door", "öffne die Tür")]


def distill_config(student: Path, teacher: Path, data: Path, out: Path, **model: Any
                   ) -> dict[str, Any]:
    towers = {"student": {"name": str(student), "max_length": 16, **model},
              "teacher": {"name": str(teacher), "frozen": True, "max_length": 16}}
    return {"model": {"towers": towers,
                      "roles": {"anchor": "student", "positive": "student",
                                "teacher": "teacher"}},
            "data": {"path": str(data), "columns": {"anchor": "eng", "positive": "deu"}},
            "objective": {"name": "distill_mse"},
            "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
            "train": {"batch_size": 4, "seed": 0, "log_every": 1},
            "output_dir": str(out)}


@pytest.fixture()
def bitext_file(tmp_path: Path) -> Path:
    path = tmp_path / "deu-eng.tsv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["deu", "eng"])
        writer.writerows([(deu, eng) for eng, deu in PAIRS])
    return path


def _batches(task: Any, config: TrainConfig, epochs: int) -> list[dict[str, Any]]:
    from contralign.data import PairBatcher, load_records
    from contralign.training.batches import collator_for

    records = load_records(config.data).records
    batcher = PairBatcher(records, config.train.batch_size, config.train.seed)
    collator = collator_for(task, config)
    return [collator(batch, (0, epoch, i)) for epoch in range(epochs)
            for i, batch in enumerate(batcher.batches(epoch))]


def test_teacher_gets_no_gradient_and_stays_bit_identical(tiny_model_dir, teacher_dir,
                                                          bitext_file, tmp_path):
    """Four AdamW steps: the teacher's parameters never get a gradient or optimiser state and
    stay bit for bit; the student moves; the teacher embeds each source sentence once (its
    features are cached: the second epoch runs the student only) and the batch's targets are
    exactly the teacher's embeddings of the anchors."""
    from contralign.training.build import build_model, build_task
    from contralign.training.optim import build_optimizer

    config = TrainConfig.model_validate(distill_config(tiny_model_dir, teacher_dir, bitext_file,
                                                       tmp_path / "run"))
    model = build_model(config)
    task = build_task(config, model)
    teacher = model.towers["teacher"]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.towers["student"].state_dict().items()}
    optimizer = build_optimizer(task, config.optim)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}

    with torch.no_grad():
        expected = teacher.encode([eng for eng, _ in PAIRS], batch_size=8)
    calls = []
    features = teacher.features
    teacher.features = lambda batch: calls.append(len(next(iter(batch.values())))) \
        or features(batch)
    batches = _batches(task, config, epochs=2)
    for step, batch in enumerate(batches):
        embedded = task.assemble(task.embed(batch), batch)
        assert embedded.targets is not None and not embedded.targets.requires_grad
        anchors = [item for item in batch["teacher"]["items"].items]
        rows = [next(i for i, (eng, _) in enumerate(PAIRS) if eng == a) for a in anchors]
        assert_close(embedded.targets, torch.from_numpy(expected[rows]), atol=1e-5, rtol=1e-5)
        task.loss(embedded).backward()
        assert all(p.grad is None for p in teacher.parameters()), step
        optimizer.step()
        optimizer.zero_grad()
    assert sum(calls) == len(PAIRS)  # the first epoch only
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, student_before[k])
               for k, v in model.towers["student"].state_dict().items())


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["model"]["roles"].pop("teacher"),
     "model.roles: objective distill_mse learns from a teacher"),
    (lambda c: c["model"]["towers"]["teacher"].update(frozen=False),
     "towers.teacher.frozen: the teacher's tower must be locked"),
    (lambda c: c["model"]["towers"]["teacher"].update(projection_dim=32),
     "towers.teacher.projection_dim: a teacher's embeddings are the targets"),
    (lambda c: c["model"]["roles"].update(teacher="student"),
     "roles.teacher: 'student' also embeds the anchor"),
    (lambda c: c["objective"].update(name="info_nce"),
     "model.roles.teacher: objective info_nce does not read a teacher's embeddings"),
    (lambda c: c.update(views=[{"name": "identity"}, {"name": "identity"}]),
     "views: a teacher embeds the anchor as it is"),
    (lambda c: c["model"]["towers"]["student"].update(projection_dim=16),
     "model.towers.student.projection_dim: the teacher teacher embeds 32-d and the student "
     "student 16-d; set projection_dim: 32 on the student"),
])
def test_distillation_config_mistakes_are_one_line(change, message, tiny_model_dir, teacher_dir,
                                                  bitext_file, tmp_path):
    config = distill_config(tiny_model_dir, teacher_dir, bitext_file, tmp_path / "run")
    change(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    line = one_line_error(runner.invoke(app, ["train", str(path)]))
    assert message in line
    assert not (tmp_path / "run").exists()


def test_width_mismatch_is_a_config_error_before_training(tiny_model_dir, teacher_dir,
                                                          bitext_file, tmp_path):
    from contralign.training.build import build_model

    config = distill_config(tiny_model_dir, teacher_dir, bitext_file, tmp_path / "run",
                            projection_dim=32)
    build_model(TrainConfig.model_validate(config))  # a head to the teacher's width is fine
    config["model"]["towers"]["student"]["projection_dim"] = 48
    with pytest.raises(ConfigError, match="teacher teacher embeds 32-d"):
        build_model(TrainConfig.model_validate(config))


def test_check_passes_on_a_distillation_config(tiny_model_dir, teacher_dir, bitext_file,
                                               tmp_path):
    """``contralign check``: the gradient cache and two gloo processes train as the plain path
    with a locked teacher (the teacher's cache filled on every path)."""
    config = distill_config(tiny_model_dir, teacher_dir, bitext_file, tmp_path / "run")
    config["train"]["batch_size"] = 6
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["check", str(path), "--paths", "cached,distributed", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["cached"]["ok"] and report["distributed"]["ok"]


def test_check_passes_on_a_margin_config(tiny_model_dir, bitext_file, tmp_path):
    """``contralign check`` on the bitext objective (symmetric, margin 0.3, learned
    temperature): the gradient cache and the tiled loss train as the plain path."""
    config = {"model": {"name": str(tiny_model_dir), "max_length": 16},
              "data": {"path": str(bitext_file), "columns": {"anchor": "eng", "positive": "deu"}},
              "objective": {"name": "info_nce", "symmetric": True, "margin": 0.3,
                            "learnable_temperature": True},
              "optim": {"lr": 1e-3}, "train": {"batch_size": 6}, "output_dir": str(tmp_path)}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["check", str(path), "--paths", "cached,tiled", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cached"]["ok"] and report["tiled"]["ok"]


def test_distillation_model_saves_and_loads_with_its_teacher(tiny_model_dir, teacher_dir,
                                                             bitext_file, tmp_path):
    """The trained model folder holds the student and the teacher; loaded whole, its sides for
    evaluation are the student's (the teacher only made the targets)."""
    from contralign.encoders.loading import load_model, load_tower

    config = distill_config(tiny_model_dir, teacher_dir, bitext_file, tmp_path / "run")
    config["train"]["max_steps"] = 2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["train", str(path), "--json"])
    assert result.exit_code == 0, result.output
    model_dir = Path(json.loads(result.stdout)["model_dir"])
    model = load_model(str(model_dir))
    assert model.roles["teacher"] == "teacher" and model.side("anchor") is model.side("positive")
    student = load_tower(str(model_dir), tower="student")
    texts = ["guten Morgen", "good morning"]
    assert np.allclose(student.encode(texts), model.side("positive").encode(texts), atol=1e-6)


# === the token embedding matrix locked ========================================================


def test_freeze_embeddings_locks_only_the_token_embedding_matrix(tiny_model_dir, bitext_file,
                                                                tmp_path):
    """``freeze_embeddings``: the token embedding matrix has no gradient, no optimiser state and
    stays bit for bit through AdamW steps (weight decay included); every other weight trains."""
    from contralign.training.build import build_model, build_task
    from contralign.training.optim import build_optimizer

    config = TrainConfig.model_validate({
        "model": {"name": str(tiny_model_dir), "max_length": 16, "freeze_embeddings": True},
        "data": {"path": str(bitext_file), "columns": {"anchor": "eng", "positive": "deu"}},
        "objective": {"name": "info_nce", "symmetric": True, "margin": 0.3},
        "optim": {"lr": 1e-3}, "train": {"batch_size": 4}, "output_dir": str(tmp_path / "run")})
    model = build_model(config)
    task = build_task(config, model)
    tower = model.towers["tower"]
    matrix = tower.model.get_input_embeddings().weight
    before = {name: p.detach().clone() for name, p in tower.named_parameters()}
    optimizer = build_optimizer(task, config.optim)
    assert id(matrix) not in {id(p) for g in optimizer.param_groups for p in g["params"]}
    for batch in _batches(task, config, epochs=1):
        task(batch)["loss"].backward()
        assert matrix.grad is None
        optimizer.step()
        optimizer.zero_grad()
    moved = {name for name, p in tower.named_parameters() if not torch.equal(p, before[name])}
    assert torch.equal(matrix, before["model.embeddings.word_embeddings.weight"])
    assert "model.embeddings.position_embeddings.weight" in moved
    assert "model.encoder.layer.0.attention.self.query.weight" in moved


def test_freeze_embeddings_needs_a_transformer_text_tower(tmp_path):
    from contralign.encoders.static import StaticEncoder, glove_tokenizer
    from contralign.training.build import build_tower
    from contralign.training.config import TowerConfig

    words = ["[UNK]", "[PAD]", "cat", "dog"]
    StaticEncoder(glove_tokenizer({w: i for i, w in enumerate(words)}),
                  torch.randn(4, 3)).save(tmp_path / "static")
    with pytest.raises(ConfigError, match="freeze_embeddings: .* static tower"):
        build_tower(TowerConfig(name=str(tmp_path / "static"), freeze_embeddings=True))


# === both recipes on real bitext rows ========================================================


def _real_pairs(shared_data: Path, lang: str, rows: int) -> list[tuple[str, str]]:
    with (shared_data / "bitext" / f"tatoeba.{lang}-eng.tsv").open(encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        return [(row[1], row[0]) for _, row in zip(range(rows), reader, strict=False)]


def _accuracy(encoder: Any, pairs: list[tuple[str, str]]) -> float:
    """xx → en top-1 among the pairs' English sentences."""
    english = encoder.encode([eng for eng, _ in pairs], batch_size=64)
    other = encoder.encode([xx for _, xx in pairs], batch_size=64)
    return float(np.mean((other @ english.T).argmax(axis=1) == np.arange(len(pairs))))


@pytest.mark.parametrize("recipe", ["bitext", "distill-multilingual"])
def test_recipe_trains_on_real_bitext(recipe, shared_data, tiny_model_dir, tmp_path):
    """Each recipe on 48 real German–English pairs raises German → English top-1 on them and
    lowers its loss. bitext: a tiny random student (32 wide, 2 layers; its token embeddings
    trained too), 8 epochs. Distillation:
    the default tower (all-MiniLM-L6-v2, English) as the student and a locked copy of it as the
    teacher, 3 epochs: German sentences are pulled onto the teacher's English embeddings."""
    from contralign.encoders.loading import load_tower
    from contralign.encoders.resolve import DEFAULT_MODEL

    pairs = _real_pairs(shared_data, "deu", 48)
    data = tmp_path / "train.tsv"
    with data.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerows([("eng", "xx"), *pairs])
    if recipe == "bitext":
        student = str(tiny_model_dir)
        # its random token embeddings must train too
        overrides = [f"model.name={student}", "model.max_length=24", "train.epochs=8",
                     "optim.lr=1e-3", "model.freeze_embeddings=false"]
    else:
        student = DEFAULT_MODEL
        overrides = [f"model.towers.{name}.{key}={value}" for name in ("student", "teacher")
                     for key, value in (("name", student), ("max_length", 24))]
        overrides += ["train.epochs=3", "optim.lr=1e-4"]
    overrides += ["train.batch_size=16", "train.log_every=1", f"output_dir={tmp_path / 'run'}"]
    before = _accuracy(load_tower(student, max_length=24), pairs)
    result = runner.invoke(app, ["train", recipe, "--data", str(data), "--json",
                                 *[arg for o in overrides for arg in ("--set", o)]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    tower = None if recipe == "bitext" else "student"
    after = _accuracy(load_tower(summary["model_dir"], tower=tower), pairs)
    losses = [json.loads(line)["loss"] for line in
              (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert after > before + 0.05, (before, after)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
