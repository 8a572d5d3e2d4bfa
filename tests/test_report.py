"""contralign report: reading run directories, figures, the self-contained page, output rules,
and a report of a real short training run."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import PAIRS, one_line_error
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.core.errors import DataError
from contralign.report.analysis import example_anchors, map_2d, neighbours
from contralign.report.build import FIGURES, figure_path, is_our_png, png_text
from contralign.report.figures import grid_shape, smooth
from contralign.report.runs import Snapshot, read_run
from contralign.training.layout import pair_cosines

runner = CliRunner()
CONFIG = "model:\n  name: tiny <script>alert(1)</script>\nobjective:\n  name: info_nce\n"


def write_run(folder: Path, *, steps: int = 40, diagnostics: bool = True,
              temperature: bool = True, ci: bool = True, environment: bool = True,
              labels: bool = False, seed: int = 0) -> Path:
    """A run directory as the contract describes it: run.json, config.yaml, metrics.jsonl
    (train lines every 3 steps, an eval line every 10 from step 0, intervals on the last),
    environment.json and diagnostics/ (a 40-pair sample, snapshots at step 0 and the end)."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_format": 1, "finished_step": steps,
                                                 "records": 120}))
    (folder / "config.yaml").write_text(CONFIG)
    lines: list[dict] = []
    for step in range(0, steps + 1, 10):
        for t in range(max(step - 9, 1), step + 1, 3) if step else ():
            line = {"step": t, "epoch": 0, "loss": 3 / (1 + t / 10),
                    "contrastive_loss": 3 / (1 + t / 10), "lr": 1e-4 * t / steps}
            if temperature:
                line["temperature"] = 0.07 - t / 10000
            lines.append(line)
        metrics = {"retrieval/recall@1": 0.3 + step / 100, "retrieval/mrr@10": 0.4 + step / 100,
                   "geometry/alignment": 1.2 - step / 50, "geometry/uniformity": -1.5 - step / 40,
                   "geometry/effective_rank": 10 + step / 5, "geometry/hubness": 2 - step / 40}
        entry: dict = {"step": step, "eval": metrics}
        if ci and step == steps:
            r1 = metrics["retrieval/recall@1"]
            entry |= {"ci": {"retrieval/recall@1": [r1 - 0.05, r1 + 0.05]}, "confidence": 0.95}
        lines.append(entry)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if environment:
        (folder / "environment.json").write_text(json.dumps({
            "format": 1, "contralign": "0.1.0", "python": "3.11.7", "torch": "2.13.0",
            "device": "cpu", "gpu": None, "world_size": 1}))
    if diagnostics:
        _write_diagnostics(folder / "diagnostics", steps, labels, seed)
    return folder


def _write_diagnostics(folder: Path, steps: int, labels: bool, seed: int, n: int = 40) -> None:
    folder.mkdir()
    (folder / "sample.json").write_text(json.dumps({
        "format": 1, "source": "eval.retrieval",
        "anchors": [f"anchor <b>{i}</b>" for i in range(n)],
        "positives": [f"positive {i}" for i in range(n)],
        "labels": [i % 4 for i in range(n)] if labels else None,
        "modalities": {"anchor": "text", "positive": "text"}}))
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 16))
    for step, noise in ((0, 1.5), (steps, 0.3)):
        a = base + noise * rng.normal(size=base.shape)
        p = base + noise * rng.normal(size=base.shape)
        np.savez(folder / f"step-{step}.npz",
                 anchors=(a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32),
                 positives=(p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32))


def report(*args: str | Path):
    return runner.invoke(app, ["report", *map(str, args)])


def check_self_contained(page: str) -> list[bytes]:
    """Assert the page fetches nothing and return its images' PNG bytes."""
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    sources = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    return [base64.b64decode(s.split(",", 1)[1]) for s in sources]


# --- a full run -----------------------------------------------------------------------------


def test_report_of_a_run_writes_a_self_contained_page_and_pngs(tmp_path):
    run = write_run(tmp_path / "run")
    result = report(run, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    html = run / "report" / "report.html"
    assert out["html"] == str(html)
    assert out["figures"] == [str(figure_path(html, name)) for name in FIGURES]
    final = out["runs"][0]["final"]
    assert final["step"] == 40 and final["metrics"]["retrieval/recall@1"] == pytest.approx(0.7)
    assert final["ci"]["retrieval/recall@1"] == pytest.approx([0.65, 0.75])
    page = html.read_text(encoding="utf-8")
    images = check_self_contained(page)
    # Every PNG beside the page is the same picture as the one embedded in it, marked ours.
    files = [Path(p).read_bytes() for p in out["figures"]]
    assert images == files and all(png_text(f)["Software"] == "contralign report" for f in files)
    # Strings from the run are escaped: the config's <script> and the sample's <b> stay text.
    assert "tiny &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "anchor &lt;b&gt;0&lt;/b&gt;" in page and "<b>" not in page
    assert "0.7 [0.65, 0.75]" in page and "95% bootstrap" in page
    assert "untrained (step 0)" in page


def test_every_figure_is_a_small_png(tmp_path):
    from PIL import Image

    run = write_run(tmp_path / "run", labels=True)
    assert report(run).exit_code == 0
    for name in FIGURES:
        path = figure_path(run / "report" / "report.html", name)
        with Image.open(path) as image:
            width, height = image.size
        assert 300 <= width <= 1500 and 200 <= height <= 1200, (name, image.size)
        assert path.stat().st_size < 250_000


def test_comparison_overlays_runs_and_needs_an_output(tmp_path):
    a = write_run(tmp_path / "a")
    b = write_run(tmp_path / "b", steps=30, seed=1, temperature=False, labels=True)
    line = one_line_error(report(a, b))
    assert "--output" in line and "several runs" in line
    html = tmp_path / "cmp" / "both.html"
    result = report(a, b, "-o", html, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [r["name"] for r in out["runs"]] == ["a", "b"]
    assert all(Path(p).name.startswith("both-") for p in out["figures"])
    page = html.read_text(encoding="utf-8")
    check_self_contained(page)
    assert "b logged no temperature" in page
    assert page.count("<h3>a</h3>") == 2  # neighbours and config, one block per run


def test_runs_named_alike_are_told_apart(tmp_path):
    a = write_run(tmp_path / "x" / "run")
    b = write_run(tmp_path / "y" / "run", seed=1)
    result = report(a, b, "-o", tmp_path / "cmp.html", "--json")
    assert [r["name"] for r in json.loads(result.output)["runs"]] == ["x/run", "y/run"]


# --- what a run lacks ----------------------------------------------------------------------


def test_an_older_run_without_diagnostics_dev_set_or_temperature(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: m\n")
    (run / "checkpoints").mkdir()  # a run from before run.json
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "epoch": 0, "loss": 1 / s, "lr": 1e-4}) + "\n"
        for s in range(1, 6)))
    result = report(run, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [Path(p).name for p in out["figures"]] == ["report-training.png"]
    assert out["runs"][0]["final"] == {}
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    for sentence in ("This run logged no temperature", "No evaluation was logged",
                     "No geometry diagnostics were logged", "No embedding snapshots",
                     "No environment.json"):
        assert sentence in page


def test_a_run_without_metrics_and_with_one_snapshot(tmp_path):
    run = write_run(tmp_path / "run", environment=False)
    (run / "metrics.jsonl").unlink()
    (run / "diagnostics" / "step-0.npz").unlink()
    result = report(run, "--json")
    assert result.exit_code == 0, result.output
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "No training steps were logged" in page
    assert "one snapshot only (step 40)" in page
    assert {Path(p).name for p in json.loads(result.output)["figures"]} == {
        "report-similarity.png", "report-embedding-map.png"}


def test_a_torn_last_line_is_left_out_with_a_warning(tmp_path):
    run = write_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 41, "epoch": 0, "lo')  # a kill while the line was written
    with pytest.warns(UserWarning, match=r"metrics.jsonl:\d+: an incomplete last line"):
        loaded = read_run(run)
    assert loaded.train[-1][0] == 40


# --- malformed input: one line, exit 2 ------------------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    ("{not json", r"metrics.jsonl:3: not valid JSON"),
    ("[1, 2]", r"metrics.jsonl:3: expected a JSON object"),
    ('{"step": "five", "loss": 1}', r"metrics.jsonl:3: step: expected a step number"),
    ('{"step": 5, "eval": {"retrieval/recall@1": "high"}}',
     r"metrics.jsonl:3: eval.retrieval/recall@1: expected a number"),
    ('{"step": 5, "eval": {}, "ci": {"m": [1]}}', r"metrics.jsonl:3: ci.m: expected \[low, high"),
])
def test_a_malformed_metrics_line_is_one_line_naming_file_and_line(tmp_path, line, expected):
    run = write_run(tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines.insert(2, line)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert re.search(expected, one_line_error(report(run)))
    assert not (run / "report").exists()


def test_malformed_files_are_one_line(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "environment.json").write_text('{"python": ')
    assert "environment.json:1: not valid JSON" in one_line_error(report(run))
    (run / "environment.json").unlink()
    (run / "config.yaml").write_text("model: [unclosed\n")
    assert re.search(r"config.yaml:\d+: not valid YAML", one_line_error(report(run)))
    (run / "config.yaml").write_text(CONFIG)
    sample = json.loads((run / "diagnostics" / "sample.json").read_text())
    (run / "diagnostics" / "sample.json").write_text(json.dumps(sample | {"positives": ["x"]}))
    assert "sample.json: positives: 1 items for 40 anchors" in one_line_error(report(run))


def test_a_pickled_snapshot_is_refused_not_loaded(tmp_path):
    run = write_run(tmp_path / "run")
    np.savez(run / "diagnostics" / "step-40.npz", anchors=np.array([{"x": 1}] * 40, dtype=object),
             positives=np.zeros((40, 16), dtype=np.float32))
    line = one_line_error(report(run))
    assert "step-40.npz" in line and "not a readable .npz of plain arrays" in line


def test_a_folder_that_is_not_a_run(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("{}\n")
    assert "not a contralign run directory" in one_line_error(report(folder))
    assert "not found" in one_line_error(report(tmp_path / "absent"))


# --- output rules ---------------------------------------------------------------------------


def test_replaces_only_its_own_report_and_only_with_overwrite(tmp_path):
    run = write_run(tmp_path / "run")
    assert report(run).exit_code == 0
    html = run / "report" / "report.html"
    assert "--overwrite" in one_line_error(report(run))
    # A newer report of the same run without diagnostics: replaced, and the figures it no
    # longer draws (ours) removed.
    (run / "diagnostics" / "sample.json").unlink()
    assert report(run, "--overwrite").exit_code == 0
    assert not figure_path(html, "similarity").exists()
    assert figure_path(html, "training").exists() and "No embedding snapshots" in html.read_text()


def test_never_replaces_a_users_file(tmp_path):
    run = write_run(tmp_path / "run")
    mine = tmp_path / "mine.html"
    mine.write_text("<html>my notes</html>")
    assert "already exists" in one_line_error(report(run, "-o", mine))
    assert "not a report contralign wrote" in one_line_error(report(run, "-o", mine,
                                                                    "--overwrite"))
    assert mine.read_text() == "<html>my notes</html>"
    # A user's picture where a figure would go is refused, even with --overwrite.
    out = tmp_path / "out" / "r.html"
    out.parent.mkdir()
    picture = figure_path(out, "training")
    picture.write_bytes(b"\x89PNG\r\n\x1a\nnot ours")
    line = one_line_error(report(run, "-o", out, "--overwrite"))
    assert "r-training.png" in line and "did not write" in line
    assert picture.read_bytes() == b"\x89PNG\r\n\x1a\nnot ours" and not out.exists()
    assert not is_our_png(picture)
    assert ".html" in one_line_error(report(run, "-o", tmp_path / "r.pdf"))


# --- the numbers behind the pictures ------------------------------------------------------


def _snapshot(n: int = 12, d: int = 8, seed: int = 0) -> Snapshot:
    rng = np.random.default_rng(seed)
    a, p = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return Snapshot(0, unit(a), unit(a + 0.5 * p))


def test_pair_cosines_match_a_loop():
    snap = _snapshot()
    pos, neg = pair_cosines(snap.anchors, snap.positives)
    n = len(snap.anchors)
    cos = lambda i, j: float(np.dot(snap.anchors[i], snap.positives[j]))  # noqa: E731
    assert pos == pytest.approx([cos(i, i) for i in range(n)], abs=1e-6)
    assert neg == pytest.approx([cos(i, j) for i in range(n) for j in range(n) if i != j],
                                abs=1e-6)


def test_pca_map_matches_scikit_learn_up_to_sign():
    from sklearn.decomposition import PCA

    snap = _snapshot(30, 10)
    ours = map_2d(snap)
    theirs = PCA(n_components=2).fit_transform(np.concatenate([snap.anchors, snap.positives])
                                               .astype(np.float64))
    for k in range(2):
        sign = np.sign(ours[:, k] @ theirs[:, k])
        np.testing.assert_allclose(ours[:, k], sign * theirs[:, k], atol=1e-6)


def test_neighbours_rank_the_true_pair():
    snap = _snapshot()
    found = neighbours(snap, [0, 5], k=3)
    for hit in found:
        scores = snap.positives @ snap.anchors[hit.anchor]
        assert [j for j, _ in hit.hits] == list(np.argsort(-scores)[:3])
        assert hit.true_rank == 1 + int((scores > scores[hit.anchor]).sum())
    assert example_anchors(40) == [0, 9, 19, 29, 39] and example_anchors(2) == [0, 1]


def test_loss_smoothing_is_tensorboards_debiased_moving_average():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0
    # t=2: (0.6 * 0 + 0.4 * 1) / (1 - 0.6 ** 2)
    assert smooth([0.0, 1.0]) == pytest.approx([0.0, 0.625])
    assert grid_shape(9) == (3, 3) and grid_shape(5) == (2, 3) and grid_shape(4) == (1, 4)


def test_reading_a_run_keeps_the_last_line_of_a_step(tmp_path):
    run = write_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:  # the final eval repeats
        f.write(json.dumps({"step": 40, "eval": {"retrieval/recall@1": 0.9}}) + "\n")
    loaded = read_run(run)
    assert [p.step for p in loaded.evals] == [0, 10, 20, 30, 40]
    assert loaded.final is not None and loaded.final.metrics == {"retrieval/recall@1": 0.9}
    with pytest.raises(DataError):
        read_run(tmp_path)


# --- a real run ---------------------------------------------------------------------------


def test_report_of_a_real_training_run(tiny_model_dir, pairs_file, tmp_path):
    """Train the tiny BERT a few steps with a dev set, then report on the run directory."""
    import yaml

    from contralign.training.loop import fit

    columns = {"anchor": "query", "positive": "doc"}
    config = {"model": {"name": str(tiny_model_dir), "max_length": 32},
              "data": {"path": str(pairs_file), "columns": columns},
              "objective": {"name": "info_nce", "temperature": 0.05},
              "optim": {"lr": 1e-3},
              "train": {"epochs": 2, "batch_size": 4, "seed": 0, "log_every": 1},
              "eval": {"retrieval": {"path": str(pairs_file), "columns": columns},
                       "every_steps": 3},
              "output_dir": str(tmp_path / "run")}
    fit(config, progress=False)
    run = read_run(tmp_path / "run")
    assert run.evals[0].step == 0, "a new run evaluates the untrained model first"
    assert run.environment is not None and run.sample is not None
    assert len(run.sample.anchors) == len(PAIRS) and len(run.snapshots) == 2
    result = report(tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert {Path(p).name for p in out["figures"]} >= {
        "report-training.png", "report-dev-metrics.png", "report-diagnostics.png",
        "report-alignment-uniformity.png", "report-similarity.png", "report-embedding-map.png"}
    page = Path(out["html"]).read_text(encoding="utf-8")
    check_self_contained(page)
    assert yaml.safe_load(run.config_text or "")["train"]["epochs"] == 2
    final = out["runs"][0]["final"]["metrics"]
    assert final["retrieval/recall@1"] == run.evals[-1].metrics["retrieval/recall@1"]
