"""The project's own rules: import layers (import-linter), ruff and mypy clean on src/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize(
    "command",
    [("lint-imports",), ("ruff", "check", "src", "tests", "benchmarks"), ("mypy",)],
    ids=["import-layers", "ruff", "mypy"],
)
def test_tool_is_clean(command):
    executable = shutil.which(command[0], path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.skip(f"{command[0]} is not installed (pip install -e '.[dev]')")
    result = _run(executable, *command[1:])
    assert result.returncode == 0, result.stdout + result.stderr
