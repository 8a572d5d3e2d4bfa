"""benchmarks/serve_load.py in a tiny configuration: every server it starts (``contralign serve``
through the CLI, the naive FastAPI server, ours at a sweep point through ``create_app``) answers
every request of 8 concurrent clients correctly. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.conftest import REPO

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_load_script_tiny_run_has_no_errors() -> None:
    script = REPO / "benchmarks" / "serve_load.py"
    result = subprocess.run(
        [sys.executable, str(script), "--clients", "8", "--requests", "3", "--warmup", "1",
         "--repeats", "1", "--model", "wordllama-256", "--texts", "titles",
         "--servers", "naive,ours", "--sweep", "4:0", "--time-limit", "120", "--json"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    passes = {(p["server"], p["endpoint"]): p for p in report["passes"]}
    assert set(passes) == {("naive", "/embed"), ("ours", "/embed"), ("ours", "/v1/embeddings"),
                           ("ours 4:0ms", "/embed")}
    for found in passes.values():
        assert (found["requests"], found["ok"], found["errors"]) == (24, 24, 0), found
        assert not found["stopped_at_time_limit"]
    # Ours reports its encoder batches (from /metrics); a sweep point never exceeds its bound.
    assert passes["ours", "/embed"]["mean_batch"] >= 1
    assert 1 <= passes["ours 4:0ms", "/embed"]["mean_batch"] <= 4
    assert set(report["ratios"]) == {"ours /embed / naive /embed",
                                     "ours /v1/embeddings / naive /embed"}
