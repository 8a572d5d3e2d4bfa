"""``contralign eval --bitext`` and ``contralign mine`` end to end on real Tatoeba rows with the
default model, checked against the naive references; and the user's mistakes: one line, exit 2."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import one_line_error
from tests.reference_bitext import naive_matches, naive_mine
from typer.testing import CliRunner

from contralign.cli.app import app

runner = CliRunner()
MODEL = "all-MiniLM-L6-v2"


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def tatoeba_rows(shared: Path, lang: str, count: int) -> list[list[str]]:
    with open(shared / "bitext" / f"tatoeba.{lang}-eng.tsv", newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t"))[1 : count + 1]


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerows([header, *rows])
    return path


@pytest.fixture(scope="module")
def tower():
    import contralign

    return contralign.load_tower(MODEL)


@pytest.fixture(scope="module")
def bitext_dir(shared_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bitext")
    for lang in ("deu", "fra"):
        write_tsv(folder / f"tatoeba.{lang}-eng.tsv", [lang, "eng"],
                  tatoeba_rows(shared_data, lang, 30))
    (folder / "notes.txt").write_text("not a bitext file\n", encoding="utf-8")
    return folder


def test_eval_bitext_equals_the_naive_reference(bitext_dir, tower):
    result = ok(runner.invoke(app, ["eval", MODEL, "--bitext", str(bitext_dir), "--scoring",
                                    "margin", "--json"]))
    metrics = json.loads(result)["metrics"]
    assert set(metrics) == {f"bitext/tatoeba.{lang}-eng/{key}" for lang in ("deu", "fra")
                            for key in ("forward_accuracy", "backward_accuracy", "accuracy")}
    for lang in ("deu", "fra"):
        with open(bitext_dir / f"tatoeba.{lang}-eng.tsv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))[1:]
        src = tower.encode([r[0] for r in rows], batch_size=64)
        tgt = tower.encode([r[1] for r in rows], batch_size=64)
        forward, _, backward, _ = naive_matches(src, tgt, "margin", 4)
        gold = np.arange(len(rows))
        prefix = f"bitext/tatoeba.{lang}-eng/"
        assert metrics[prefix + "forward_accuracy"] == np.mean(np.array(forward) == gold)
        assert metrics[prefix + "backward_accuracy"] == np.mean(np.array(backward) == gold)


def test_eval_bitext_table_per_file_with_the_average(bitext_dir):
    pattern = str(bitext_dir / "tatoeba.*-eng.tsv")
    output = ok(runner.invoke(app, ["eval", MODEL, "--bitext", pattern, "--bitext",
                                    str(bitext_dir / "tatoeba.deu-eng.tsv")]))
    assert "Bitext accuracy (cosine scoring)" in output
    assert "deu→eng" in output and "eng→fra" in output and "average of 2" in output
    assert "Evaluation of" not in output  # no other metrics: no second table


@pytest.fixture()
def mining_task(shared_data, tmp_path) -> dict[str, Path]:
    """40 German and 40 English sentences, 30 of them translations of each other, shuffled;
    one blank line in the English file (line numbers count it)."""
    rows = tatoeba_rows(shared_data, "deu", 50)
    rng = random.Random(0)
    src_rows = list(range(40))  # German rows 0..39
    tgt_rows = list(range(10, 50))  # English rows 10..49: 30 shared
    rng.shuffle(tgt_rows)
    (tmp_path / "de.txt").write_text("".join(rows[i][0] + "\n" for i in src_rows),
                                     encoding="utf-8")
    english = [rows[i][1] for i in tgt_rows]
    (tmp_path / "en.txt").write_text("\n".join(english[:5] + [""] + english[5:]) + "\n",
                                     encoding="utf-8")
    en_line = {row: (k + 1 if k < 5 else k + 2) for k, row in enumerate(tgt_rows)}
    gold = [(i + 1, en_line[i]) for i in range(10, 40)]
    (tmp_path / "gold.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in gold),
                                       encoding="utf-8")
    return {"src": tmp_path / "de.txt", "tgt": tmp_path / "en.txt", "gold": tmp_path / "gold.tsv",
            "out": tmp_path / "pairs.tsv", "german": [rows[i][0] for i in src_rows],
            "english": english, "gold_pairs": gold}


def test_mine_writes_the_naive_pairs_and_scores_them(mining_task, tower):
    t = mining_task
    summary = json.loads(ok(runner.invoke(app, [
        "mine", MODEL, str(t["src"]), str(t["tgt"]), "-o", str(t["out"]), "--gold",
        str(t["gold"]), "--mode", "union", "--threshold", "1.0", "--json"])))
    with open(t["out"], newline="", encoding="utf-8") as f:
        written = list(csv.reader(f, delimiter="\t"))
    assert written[0] == ["score", "src", "tgt", "src_line", "tgt_line"]
    src = tower.encode(t["german"], batch_size=32)
    tgt = tower.encode(t["english"], batch_size=32)
    expected = naive_mine(src, tgt, "margin", 4, "union", 1.0)
    tgt_line = [k + 1 if k < 5 else k + 2 for k in range(len(t["english"]))]
    assert [(int(r[3]), int(r[4])) for r in written[1:]] == [(i + 1, tgt_line[j])
                                                             for i, j, _ in expected]
    assert [r[1:3] for r in written[1:]] == [[t["german"][i], t["english"][j]]
                                             for i, j, _ in expected]
    np.testing.assert_allclose([float(r[0]) for r in written[1:]], [s for *_, s in expected],
                               atol=1e-5)
    mined = {(int(r[3]), int(r[4])) for r in written[1:]}
    correct = len(mined & set(t["gold_pairs"]))
    metrics = summary["metrics"]
    assert metrics["correct"] == correct and summary["pairs"] == len(expected)
    assert metrics["precision"] == pytest.approx(correct / len(mined))
    assert metrics["recall"] == pytest.approx(correct / 30)
    assert summary["best_threshold"]["f1"] >= metrics["f1"]


@pytest.mark.parametrize(("args", "message"), [
    (["--gold", "{bad_gold}"], "bad_gold.tsv:2: expected two line numbers"),
    (["--gold", "{far_gold}"], "far_gold.tsv:1: target: line 99 of the target file holds no "
                               "sentence"),
    (["-o", "{src}"], "--output: "),
    (["-o", "{tmp}/pairs.txt"], "--output: "),
    (["-o", "{existing}"], "already exists; pass --overwrite"),
], ids=["malformed-gold", "gold-out-of-range", "output-is-input", "not-tsv", "existing-output"])
def test_mine_mistakes_are_one_line(tmp_path, args, message):
    src = tmp_path / "src.txt"
    src.write_text("ein Satz\nnoch einer\n", encoding="utf-8")
    tgt = tmp_path / "tgt.txt"
    tgt.write_text("a sentence\nanother one\n", encoding="utf-8")
    (tmp_path / "bad_gold.tsv").write_text("1\t1\n2 two\n", encoding="utf-8")
    (tmp_path / "far_gold.tsv").write_text("1\t99\n", encoding="utf-8")
    existing = tmp_path / "mine.tsv"
    existing.write_text("a user's file\n", encoding="utf-8")
    names = {"bad_gold": tmp_path / "bad_gold.tsv", "far_gold": tmp_path / "far_gold.tsv",
             "src": src, "tmp": tmp_path, "existing": existing}
    args = [a.format(**names) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.tsv")]
    line = one_line_error(runner.invoke(app, ["mine", "no-model-loaded", str(src), str(tgt),
                                              *args]))
    assert message in line
    assert existing.read_text(encoding="utf-8") == "a user's file\n"


@pytest.mark.parametrize("content", ["", "\n\n"], ids=["empty", "blank-lines"])
def test_mine_refuses_an_empty_sentence_file(tmp_path, content):
    empty = tmp_path / "src.txt"
    empty.write_text(content, encoding="utf-8")
    line = one_line_error(runner.invoke(app, ["mine", "m", str(empty), str(empty),
                                              "-o", str(tmp_path / "p.tsv")]))
    assert "src.txt" in line


def test_mine_missing_file_is_one_line(tmp_path):
    line = one_line_error(runner.invoke(app, ["mine", "m", str(tmp_path / "nope.txt"),
                                              str(tmp_path / "nope.txt"), "-o",
                                              str(tmp_path / "p.tsv")]))
    assert "nope.txt" in line


@pytest.mark.parametrize(("spec", "message"), [
    ("{tmp}/*.nothing", "matches no file"),
    ("{tmp}", "is a folder without .tsv files"),
    ("{tmp}/three.tsv", "three.tsv:1: columns: a bitext file needs two columns"),
    ("{tmp}/missing.tsv", "missing.tsv"),
    ("{tmp}/ragged.tsv", "ragged.tsv:3"),
])
def test_eval_bitext_mistakes_are_one_line(tmp_path, spec, message):
    sub = tmp_path / "files"
    sub.mkdir()
    (sub / "three.tsv").write_text("a\tb\tc\nx\ty\tz\n", encoding="utf-8")
    (sub / "ragged.tsv").write_text("deu\teng\nx\ty\nonly one field\n", encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    folder = empty if spec == "{tmp}" else sub
    line = one_line_error(runner.invoke(app, ["eval", MODEL, "--bitext",
                                              spec.format(tmp=folder)]))
    assert message in line


def test_mine_help_lists_its_options():
    output = ok(runner.invoke(app, ["mine", "--help"]))
    for option in ("--threshold", "--mode", "--gold", "--overwrite", "--json"):
        assert option in output


def test_mine_refuses_an_image_model(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("ein Satz\n", encoding="utf-8")
    line = one_line_error(runner.invoke(app, ["mine", "efficientnet-lite0", str(src), str(src),
                                              "-o", str(tmp_path / "p.tsv")]))
    assert "embeds images; mining needs a text model" in line
