"""Every tower through every command, and the mistakes a user makes with each command: one line
naming the file, line, field or key, exit code 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.conftest import one_line_error
from typer.testing import CliRunner

import contralign
from contralign.cli.app import app

runner = CliRunner()
COLUMNS = {"anchor": "query", "positive": "doc"}




def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """A run directory per tower kind contralign trains: a transformer and a static tower."""
    from tests.conftest import PAIRS

    folder = tmp_path_factory.mktemp("towers")
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": q, "doc": d}) + "\n" for q, d in PAIRS))
    runs = {}
    for kind, model in (("transformer", str(tiny_model_dir)), ("static", "wordllama-256")):
        config = {"model": {"name": model, "tower": kind}, "data": {"path": str(data),
                  "columns": COLUMNS}, "train": {"batch_size": 4, "max_steps": 3},
                  "output_dir": str(folder / kind)}
        path = folder / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(config))
        ok(runner.invoke(app, ["train", str(path), "--json"]))
        runs[kind] = folder / kind
    runs["data"] = data
    return runs


@pytest.mark.parametrize("kind", ["transformer", "static"])
@pytest.mark.parametrize("as_run_dir", [False, True], ids=["model-folder", "run-dir"])
def test_every_tower_through_every_command(trained, tmp_path, kind, as_run_dir):
    run_dir, data = trained[kind], trained["data"]
    model = str(run_dir if as_run_dir else run_dir / "model")
    tower = contralign.load_tower(model)  # the Python API loads it the same way
    expected = tower.encode(["a cat sits on the mat"])
    ok(runner.invoke(app, ["encode", model, str(data), "--column", "query",
                           "-o", str(tmp_path / "vectors.npy")]))
    vectors = np.load(tmp_path / "vectors.npy")
    assert vectors.shape == (12, tower.dim)
    np.testing.assert_allclose(vectors[0], expected[0], rtol=1e-5, atol=1e-6)
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na cat\ta kitten\t4\nrain\tstocks\t0\n"
                   "bread\ta loaf\t3\n")
    metrics = json.loads(ok(runner.invoke(app, ["eval", model, "--sts", str(sts), "--retrieval",
                                                str(data), "--columns", "anchor=query,"
                                                "positive=doc", "--json"])))["metrics"]
    assert {"sts/spearman", "retrieval/mrr@10", "geometry/alignment"} <= set(metrics)
    ok(runner.invoke(app, ["index", model, str(data), "--column", "doc", "-o",
                           str(tmp_path / "idx")]))
    hits = json.loads(ok(runner.invoke(app, ["search", str(tmp_path / "idx"),
                                             "a kitten rests on a rug", "--json"])))
    assert hits[0]["hits"][0]["text"] == "a kitten rests on a rug"


def test_sts_with_one_pair_or_equal_scores(tiny_model_dir, tmp_path):
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na\tb\t3\n")
    line = one_line_error(runner.invoke(app, ["eval", str(tiny_model_dir), "--sts", str(sts)]))
    assert line == f"error: {sts}: STS needs at least 2 scored pairs, got 1"
    sts.write_text("sentence1\tsentence2\tscore\na\tb\t3\nc\td\t3\n")
    line = one_line_error(runner.invoke(app, ["eval", str(tiny_model_dir), "--sts", str(sts)]))
    assert line == f"error: {sts}: score: all scores are equal, so no correlation is defined"


def test_eval_of_a_run_directory_uses_its_model(trained):
    run_dir, data = trained["transformer"], trained["data"]
    args = ["--retrieval", str(data), "--columns", "anchor=query,positive=doc", "--json"]
    from_run = json.loads(ok(runner.invoke(app, ["eval", str(run_dir), *args])))["metrics"]
    from_model = json.loads(ok(runner.invoke(app, ["eval", str(run_dir / "model"), *args])))
    assert from_run == from_model["metrics"]


def test_index_with_duplicate_ids_names_the_lines_before_embedding(tmp_path):
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("id\ttext\na\tfirst\nb\tsecond\na\tthird\n")
    # The model does not exist: the duplicate is found before anything is loaded or embedded.
    line = one_line_error(runner.invoke(app, ["index", str(tmp_path / "no-model"), str(corpus),
                                              "--column", "text", "--id-column", "id",
                                              "-o", str(tmp_path / "idx")]))
    assert line == f"error: {corpus}:4: id: duplicate id 'a' (also on line 2); ids must be distinct"
    assert not (tmp_path / "idx").exists()


def test_search_works_from_any_folder_with_a_relative_model_path(trained, tmp_path, monkeypatch):
    run_dir, data = trained["static"], trained["data"]
    monkeypatch.chdir(run_dir.parent)
    ok(runner.invoke(app, ["index", run_dir.name, str(data), "--column", "doc",
                           "-o", str(tmp_path / "idx")]))
    monkeypatch.chdir(tmp_path)
    hits = json.loads(ok(runner.invoke(app, ["search", "idx", "a simple recipe for a loaf",
                                             "--json"])))
    assert hits[0]["hits"][0]["text"] == "a simple recipe for a loaf"
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["model_name"] == str(
        (run_dir / "model").resolve())


@pytest.mark.parametrize("query", ["", "   "])
def test_search_refuses_a_blank_query(trained, tmp_path, query):
    ok(runner.invoke(app, ["index", str(trained["static"]), str(trained["data"]), "--column",
                           "doc", "-o", str(tmp_path / "idx")]))
    line = one_line_error(runner.invoke(app, ["search", str(tmp_path / "idx"), "rain", query]))
    assert line == "error: search: query 2 is empty; give the text to search for"


def test_encode_writes_exactly_the_path_named(trained, tmp_path):
    model, data = str(trained["static"]), str(trained["data"])
    ok(runner.invoke(app, ["encode", model, data, "--column", "query", "-o",
                           str(tmp_path / "out.npy")]))
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]
    line = one_line_error(runner.invoke(app, ["encode", model, data, "--column", "query", "-o",
                                              str(tmp_path / "out.bin")]))
    assert "out.bin: the output must be a .npy file" in line
    (tmp_path / "dir.npy").mkdir()
    line = one_line_error(runner.invoke(app, ["encode", model, data, "--column", "query", "-o",
                                              str(tmp_path / "dir.npy")]))
    assert "dir.npy is a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.npy", "out.npy"]


def test_encode_replaces_an_existing_file_only_with_overwrite(trained, tmp_path):
    """A plain .npy carries no mark of ours: it may be the user's, so it is replaced only when
    asked."""
    model, data = str(trained["static"]), str(trained["data"])
    users = tmp_path / "vectors.npy"
    users.write_bytes(b"the user's array")
    line = one_line_error(runner.invoke(app, ["encode", model, data, "--column", "query", "-o",
                                              str(users)]))
    assert "vectors.npy already exists; pass --overwrite" in line
    assert users.read_bytes() == b"the user's array"
    ok(runner.invoke(app, ["encode", model, data, "--column", "query", "-o", str(users),
                           "--overwrite"]))
    assert np.load(users).ndim == 2


def test_a_setting_the_tower_lacks_is_a_config_error(tiny_model_dir):
    from contralign.core.errors import ConfigError

    with pytest.raises(ConfigError, match="model.pooling: the static tower has no such setting"):
        contralign.load_tower("wordllama-256", pooling="cls")
    with pytest.raises(ConfigError, match="model.projection_dim: the static tower has no such"):
        contralign.load_tower("wordllama-256", projection_dim=8)
