"""The embedded default run (the README's first command), end to end on the real default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from contralign.cli.app import app


@pytest.mark.slow
def test_demo_trains_evaluates_and_searches(tmp_path: Path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path / "demo"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    before, after = out["before"], out["after"]
    # Training on the 150 train papers must help on the 54 held-out ones.
    assert after["retrieval/mrr@10"] > before["retrieval/mrr@10"]
    assert after["retrieval/recall@1"] >= before["retrieval/recall@1"]
    run = Path(out["run_dir"])
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert load_file(str(run / "model" / "model.safetensors"))
    assert (run / "data" / "train.jsonl").read_text().count("\n") == 150
    assert len(out["hits"]) == 3 and all(h["title"] for h in out["hits"])
