"""The CLI: bad input gives one line naming file, line and field, exit code 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign.cli.app import app

runner = CliRunner()


def _config_file(tmp_path: Path, model: Path, data: Path, **extra: object) -> Path:
    config = {
        "model": {"name": str(model), "max_length": 32},
        "data": {"path": str(data), "columns": {"anchor": "query", "positive": "doc"}},
        "train": {"epochs": 1, "batch_size": 4},
        "output_dir": str(tmp_path / "run"),
    }
    for key, value in extra.items():
        section, _, leaf = key.partition("__")
        if leaf:
            config.setdefault(section, {})[leaf] = value  # type: ignore[index]
        else:
            config[section] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path




@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"query": "a", "doc": "b"}\n{"query": "c", "doc": \n', r"pairs.jsonl:2: .*JSON"),
        ('{"query": "a", "doc": "b"}\n{"query": "c"}\n', r"pairs.jsonl:2: doc: missing column"),
        ('{"query": "a", "doc": "b"}\n{"query": "  ", "doc": "d"}\n',
         r"pairs.jsonl:2: query: empty text"),
    ],
    ids=["malformed-jsonl", "missing-column", "empty-text"],
)
def test_bad_records(tiny_model_dir, tmp_path, content, expected):
    data = tmp_path / "pairs.jsonl"
    data.write_text(content)
    result = runner.invoke(app, ["train", str(_config_file(tmp_path, tiny_model_dir, data))])
    assert one_line_error(result) == pytest.approx(result.output.strip())
    import re

    assert re.search(expected, result.output), result.output


def test_misnamed_column_names_the_column(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.tsv"
    data.write_text("question\tdoc\nwhat\tthat\n")
    result = runner.invoke(app, ["train", str(_config_file(tmp_path, tiny_model_dir, data))])
    line = one_line_error(result)
    assert "pairs.tsv:1: query: no such column" in line and "question" in line


def test_score_not_a_number(tmp_path):
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na\tb\t3.5\nc\td\tabc\n")
    result = runner.invoke(app, ["eval", "no-such-model-needed", "--sts", str(sts)])
    line = one_line_error(result)
    assert "sts.tsv:3: score: not a number: 'abc'" in line


def test_unknown_config_key(tiny_model_dir, pairs_file, tmp_path):
    path = _config_file(tmp_path, tiny_model_dir, pairs_file, train__batch_sise=8)
    line = one_line_error(runner.invoke(app, ["train", str(path)]))
    assert line.endswith("config.yaml: train.batch_sise: unknown key")


def test_bad_value_for_known_key(tiny_model_dir, pairs_file, tmp_path):
    path = _config_file(tmp_path, tiny_model_dir, pairs_file)
    line = one_line_error(runner.invoke(app, ["train", str(path), "--set", "optim.lr=fast"]))
    assert "--set: optim.lr:" in line and "fast" in line
    line = one_line_error(runner.invoke(app, ["train", str(path), "--set", "model.pooling=avg"]))
    assert "model.pooling" in line and "avg" in line


def test_missing_model_path(pairs_file, tmp_path):
    path = _config_file(tmp_path, tmp_path / "nowhere" / "model", pairs_file)
    line = one_line_error(runner.invoke(app, ["train", str(path)]))
    assert "nowhere/model: no such folder" in line
    line = one_line_error(runner.invoke(app, ["encode", "./missing-model", str(pairs_file),
                                               "--column", "query", "-o", str(tmp_path / "x.npy")]))
    assert "missing-model: no such folder" in line


def test_verbose_shows_traceback(tiny_model_dir, pairs_file, tmp_path):
    path = _config_file(tmp_path, tiny_model_dir, pairs_file, train__batch_sise=8)
    result = runner.invoke(app, ["--verbose", "train", str(path)])
    assert result.exit_code == 2 and "Traceback" in result.output


def test_skip_bad_records_counts_and_writes_rejects(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    good = [{"query": f"question {i}", "doc": f"answer {i}"} for i in range(8)]
    lines = [json.dumps(r) for r in good[:4]] + ["{broken", json.dumps({"query": "x"})]
    lines += [json.dumps(r) for r in good[4:]]
    data.write_text("\n".join(lines) + "\n")
    path = _config_file(tmp_path, tiny_model_dir, data, data__on_bad_record="skip")
    result = runner.invoke(app, ["train", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["skipped_records"] == 2 and summary["steps"] == 2
    rejects = [json.loads(x) for x in Path(summary["rejects"]).read_text().splitlines()]
    assert [r["line"] for r in rejects] == [5, 6]
    assert rejects[1]["field"] == "doc"


def test_encode_index_search(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "emb.npy"
    result = runner.invoke(app, ["encode", str(tiny_model_dir), str(pairs_file), "--column",
                                 "doc", "-o", str(out)])
    assert result.exit_code == 0, result.output
    from contralign.encoders.text import TextEncoder

    docs = [json.loads(x)["doc"] for x in pairs_file.read_text().splitlines()]
    expected = TextEncoder.from_pretrained(str(tiny_model_dir)).encode(docs)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)

    index = tmp_path / "index"
    result = runner.invoke(app, ["index", str(tiny_model_dir), str(pairs_file), "--column", "doc",
                                 "-o", str(index)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["search", str(index), docs[3], "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)[0]["hits"]
    assert hits[0]["text"] == docs[3] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_train_shows_the_final_intervals(tiny_model_dir, pairs_file, tmp_path):
    path = _config_file(tmp_path, tiny_model_dir, pairs_file,
                        eval={"retrieval": {"path": str(pairs_file), "columns": {
                            "anchor": "query", "positive": "doc"}}, "ci": 0.9})
    result = runner.invoke(app, ["train", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    lo, hi = summary["ci"]["retrieval/ndcg@10"]
    assert lo <= summary["metrics"]["retrieval/ndcg@10"] <= hi
    result = runner.invoke(app, ["train", str(path), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert f"[{lo:.4f}, {hi:.4f}]" in result.output


def test_encode_and_index_answer_in_json(tiny_model_dir, pairs_file, tmp_path):
    result = runner.invoke(app, ["encode", str(tiny_model_dir), str(pairs_file), "--column",
                                 "doc", "-o", str(tmp_path / "emb.npy"), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    rows = len(pairs_file.read_text().splitlines())
    assert written == {"output": str(tmp_path / "emb.npy"), "rows": rows, "dimension": 32,
                       "dtype": "float32"}
    result = runner.invoke(app, ["index", str(tiny_model_dir), str(pairs_file), "--column", "doc",
                                 "-o", str(tmp_path / "index"), "--json"])
    assert result.exit_code == 0, result.output
    indexed = json.loads(result.stdout)
    assert indexed["items"] == rows and indexed["dimension"] == 32
    manifest = json.loads((tmp_path / "index" / "index.json").read_text())
    assert indexed["fingerprint"] in json.dumps(manifest)


def test_search_refuses_another_model(tiny_model_dir, pairs_file, tmp_path):
    index = tmp_path / "index"
    runner.invoke(app, ["index", str(tiny_model_dir), str(pairs_file), "--column", "doc", "-o",
                        str(index)])
    from contralign.encoders.text import TextEncoder

    other = TextEncoder.from_pretrained(str(tiny_model_dir), pooling="cls")
    other.save(tmp_path / "other")
    result = runner.invoke(app, ["search", str(index), "hello", "--model", str(tmp_path / "other")])
    line = one_line_error(result)
    assert "fingerprint" in line


def test_train_reports_on_rank_0_only(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    """Under torchrun every process runs the command; only rank 0 (RANK, which torchrun sets)
    prints the summary, so `--json` gives one JSON object, not one per process."""
    path = _config_file(tmp_path, tiny_model_dir, pairs_file, train__max_steps=1)
    monkeypatch.setenv("RANK", "1")
    result = runner.invoke(app, ["train", str(path), "--json", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    monkeypatch.setenv("RANK", "0")
    result = runner.invoke(app, ["train", str(path), "--json", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 1


def test_a_batch_the_objective_cannot_score_is_one_line(tiny_model_dir, pairs_file, tmp_path):
    """whitened_cse cannot whiten a group wider than the batch: a setting, not a crash."""
    path = _config_file(tmp_path, tiny_model_dir, pairs_file,
                        objective={"name": "whitened_cse", "groups": 1})
    line = one_line_error(runner.invoke(app, ["train", str(path)]))
    assert line.startswith("error: group_whiten: a batch of 4 rows")
    assert "raise objective.groups or train.batch_size" in line
