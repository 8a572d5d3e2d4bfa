"""``contralign align-words`` and ``contralign eval --word-alignment``: Pharaoh output, metrics,
and bad input as one line naming file and line, exit code 2."""

from __future__ import annotations

import json
import re

import pytest
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign.cli.app import app

runner = CliRunner()

PAIRS = [
    ("the cat sat on the mat", "le chat était assis sur le tapis"),
    ("good morning", "bonjour"),
    ("unbelievably good results !", "des résultats incroyablement bons !"),
]
GOLD = ["1-1 2-2 3p3 3-4 4-5 5-6 6-7", "1-1 2-1", "1p3 2-4 3-2 4-5"]


@pytest.fixture()
def files(tmp_path):
    bitext = tmp_path / "pairs.src-tgt"
    bitext.write_text("".join(f"{s} ||| {t}\n" for s, t in PAIRS), encoding="utf-8")
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src.write_text("".join(s + "\n" for s, _ in PAIRS), encoding="utf-8")
    tgt.write_text("".join(t + "\n" for _, t in PAIRS), encoding="utf-8")
    gold = tmp_path / "pairs.gold"
    gold.write_text("\n".join(GOLD) + "\n", encoding="utf-8")
    return {"bitext": bitext, "src": src, "tgt": tgt, "gold": gold, "dir": tmp_path}


def _links(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    return [{tuple(map(int, t.split("-"))) for t in line.split()} for line in lines]


def test_align_words_writes_zero_indexed_links_and_scores_them(tiny_model_dir, files):
    out = files["dir"] / "out.txt"
    result = runner.invoke(app, ["align-words", str(tiny_model_dir), str(files["bitext"]), "-o",
                                 str(out), "--gold", str(files["gold"]), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    links = _links(out)
    assert len(links) == len(PAIRS) == summary["pairs"]
    assert summary["links"] == sum(map(len, links)) > 0
    for (s, t), pair in zip(PAIRS, links, strict=True):
        assert all(0 <= i < len(s.split()) and 0 <= j < len(t.split()) for i, j in pair)
    assert (summary["method"], summary["layer"], summary["level"], summary["center"]) == (
        "argmax", 1, "subword", True)
    assert set(summary["metrics"]) == {"precision", "recall", "f1", "aer"}
    assert 0.0 <= summary["metrics"]["aer"] <= 1.0


def test_two_parallel_files_align_like_one_bitext_file(tiny_model_dir, files):
    one, two = files["dir"] / "one.txt", files["dir"] / "two.txt"
    for args, out in (([str(files["bitext"])], one), ([str(files["src"]), str(files["tgt"])], two)):
        result = runner.invoke(app, ["align-words", str(tiny_model_dir), *args, "-o", str(out),
                                     "--method", "itermax", "--layer", "2", "--level", "word"])
        assert result.exit_code == 0, result.output
    assert _links(one) == _links(two)
    assert "3 sentence pairs" in result.output and "itermax, layer 2, word level" in result.output


def test_eval_word_alignment_reports_the_four_metrics(tiny_model_dir, files):
    result = runner.invoke(app, ["eval", str(tiny_model_dir), "--word-alignment",
                                 str(files["bitext"]), "--gold", str(files["gold"]),
                                 "--align-method", "match", "--layer", "0", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)["metrics"]
    assert set(metrics) == {f"word_alignment/{k}" for k in ("precision", "recall", "f1", "aer")}


def _write(path, text: bytes):
    path.write_bytes(text)
    return path


@pytest.mark.parametrize(("case", "expected"), [
    ("tgt-longer", r"tgt.txt:4: 4 lines, but .*src.txt has only 3: the files must be "
                   "line-parallel"),
    ("no-separator", r"pairs.src-tgt:2: expected 'source \|\|\| target', found no"),
    ("empty", r"pairs.src-tgt: empty file"),
    ("gold-token", r"pairs.gold:2: link '1_1': expected i-j \(sure\) or ipj"),
    ("gold-range", r"pairs.gold:2: link '1-2': target word 2 is out of range: the target "
                   "sentence has 1 words"),
    ("gold-zero", r"pairs.gold:1: link '0-0': index 0 in a 1-indexed file"),
    ("gold-lines", r"pairs.gold: 2 lines, but .*pairs.src-tgt has 3 sentence pairs"),
    ("too-long", r"pairs.src-tgt:2: source: 202 subword tokens .* exceed the model's maximum "
                 "of 128"),
    ("layer", r"--layer: layer 3 is out of range: the model has layers 0 \(embeddings\) to 2"),
    ("method", r"error: contralign align-words: Invalid value for '--method'"),
    ("over-input", r"--output: .*src.txt is an input of this command"),
    ("suffix", r"--output: .*out.tsv: the output must be a .txt file"),
])
def test_bad_input_is_one_line_and_nothing_is_written(tiny_model_dir, files, case, expected):
    d = files["dir"]
    args = [str(files["bitext"])]
    out, extra = d / "out.txt", ["--gold", str(files["gold"])]
    if case == "tgt-longer":
        _write(files["tgt"], files["tgt"].read_bytes() + b"extra line\n")
        args = [str(files["src"]), str(files["tgt"])]
    elif case == "no-separator":
        _write(files["bitext"], b"a ||| b\nno separator here\nc ||| d\n")
    elif case == "empty":
        _write(files["bitext"], b"")
    elif case.startswith("gold-"):
        gold = {"gold-token": GOLD[0] + "\n1_1\n" + GOLD[2] + "\n",
                "gold-range": GOLD[0] + "\n1-2\n" + GOLD[2] + "\n",
                "gold-zero": "0-0\n1-1\n1-1\n",
                "gold-lines": GOLD[0] + "\n" + GOLD[1] + "\n"}[case]
        _write(files["gold"], gold.encode())
    elif case == "too-long":
        _write(files["bitext"], ("a ||| b\n" + "word " * 200 + "||| mot\nc ||| d\n").encode())
        extra = []
    elif case == "layer":
        extra = ["--layer", "3"]
    elif case == "method":
        extra = ["--method", "best"]
    elif case == "over-input":
        args, out = [str(files["src"]), str(files["tgt"])], files["src"]
    elif case == "suffix":
        out = d / "out.tsv"
    before = out.read_bytes() if out.exists() else None
    result = runner.invoke(app, ["align-words", str(tiny_model_dir), *args, "-o", str(out),
                                 *extra])
    line = one_line_error(result)
    assert re.search(expected, line), line
    assert (out.read_bytes() if out.exists() else None) == before


def test_a_failed_run_leaves_an_earlier_output_as_it_was(tiny_model_dir, files):
    out = files["dir"] / "out.txt"
    out.write_text("earlier\n")
    _write(files["gold"], b"9-9\n1-1\n1-1\n")
    result = runner.invoke(app, ["align-words", str(tiny_model_dir), str(files["bitext"]),
                                 "-o", str(out), "--gold", str(files["gold"]), "--overwrite"])
    assert "out of range" in one_line_error(result)
    assert out.read_text() == "earlier\n"


def test_an_existing_file_is_replaced_only_with_overwrite(tiny_model_dir, files):
    out = files["dir"] / "notes.txt"
    out.write_text("the user's notes\n")
    args = ["align-words", str(tiny_model_dir), str(files["bitext"]), "-o", str(out)]
    assert "notes.txt already exists; pass --overwrite" in one_line_error(runner.invoke(app, args))
    assert out.read_text() == "the user's notes\n"
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert out.read_text() != "the user's notes\n"


@pytest.mark.parametrize(("extra", "expected"), [
    (["--word-alignment", "BITEXT"], r"--word-alignment needs --gold FILE"),
    (["--sts", "STS", "--gold", "GOLD"], r"--gold, --align-method and --layer go with "
                                         "--word-alignment"),
    (["--word-alignment", "BITEXT", "--gold", "GOLD", "--align-method", "best"],
     r"--align-method: 'best' is not an alignment method"),
    (["--word-alignment", "BITEXT", "--gold", "GOLD", "--layer", "5"],
     r"--layer: layer 5 is out of range"),
])
def test_eval_word_alignment_mistakes_are_one_line(tiny_model_dir, files, extra, expected):
    sts = files["dir"] / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na cat\ta kitten\t4.0\nrain\tsun\t0.5\n")
    names = {"BITEXT": str(files["bitext"]), "GOLD": str(files["gold"]), "STS": str(sts)}
    args = [names.get(a, a) for a in extra]
    line = one_line_error(runner.invoke(app, ["eval", str(tiny_model_dir), *args]))
    assert re.search(expected, line), line
