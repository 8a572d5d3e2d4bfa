"""The command line itself: usage mistakes are one line with exit code 2, and listing commands
and help answer without importing torch or transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from contralign.cli.app import app

runner = CliRunner()
COMMANDS = ("demo", "train", "check", "encode", "eval", "index", "search", "mine", "align-words",
            "objectives", "recipes")


@pytest.mark.parametrize(("args", "expected"), [
    (["train", "--bogus"], "error: contralign train: No such option: --bogus"),
    (["train"], "error: contralign train: Missing argument 'config'"),
    (["train", "c.yaml", "--set"], "error: contralign train: Option '--set' requires an argument"),
    (["check", "c.yaml", "--steps", "abc"], "error: contralign check: Invalid value for '--steps'"),
    (["search", "index", "query", "-k", "0"], "error: contralign search: Invalid value for '-k'"),
    (["encode", "model", "texts.txt"], "error: contralign encode: Missing option '--output'"),
    (["objectives", "extra"], "error: contralign objectives: Got unexpected extra argument"),
    (["--bogus"], "error: contralign: No such option: --bogus"),
    (["bogus"], "error: contralign: No such command 'bogus'"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_usage_errors_are_one_line(args, expected):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(expected), lines[0]
    assert lines[0].endswith("--help)")  # says where to look next
    assert "Usage:" not in result.output and "╭" not in result.output


def test_verbose_usage_error_shows_the_traceback():
    result = runner.invoke(app, ["--verbose", "train", "c.yaml", "--bogus"])
    assert result.exit_code == 2 and "Traceback" in result.output


@pytest.mark.parametrize("args", [["--help"], *[[name, "--help"] for name in COMMANDS]],
                         ids=" ".join)
def test_help_still_works(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "error:" not in result.output


# Runs in a fresh interpreter: each listing command in turn, noting the heavy modules that are
# loaded after it (none may be).
_PROBE = """
import contextlib, io, json, sys
from contralign.cli.app import app
heavy = ("torch", "transformers")
report = []
for args in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            app(args, prog_name="contralign")
        except SystemExit as exit:
            code = exit.code
    report.append([args, code, [m for m in heavy if m in sys.modules], out.getvalue()])
sys.stderr.write("REPORT " + json.dumps(report) + "\\n")
"""


def _run_fresh(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_listing_and_help_import_neither_torch_nor_transformers():
    runs = [["objectives"], ["objectives", "--json"], ["recipes"], ["recipes", "--json"],
            ["--help"], *[[name, "--help"] for name in COMMANDS], ["train", "--bogus"]]
    done = _run_fresh(_PROBE, json.dumps(runs))
    line = next((x for x in done.stderr.splitlines() if x.startswith("REPORT ")), None)
    assert line is not None, done.stderr
    report = json.loads(line.removeprefix("REPORT "))
    assert [args for args, *_ in report] == runs
    assert all(code == (2 if "--bogus" in args else 0) for args, code, *_ in report), report
    assert all(not heavy for _, _, heavy, _ in report), [r[:3] for r in report]
    listed = json.loads(report[1][3])  # objectives --json: the listing is real
    assert listed["info_nce"]["parameters"]["temperature"] == 0.05
    assert "simcse-unsup" in json.loads(report[3][3])


def test_commands_still_quiet_transformers():
    """Quieting transformers no longer imports it, yet a command that loads it later finds it
    quiet (warnings and progress bars off)."""
    code = """
import logging, sys
from contralign.cli.app import app
try:
    app(["objectives", "--json"], prog_name="contralign")
except SystemExit:
    pass
assert "transformers" not in sys.modules
from transformers.utils import logging as hf_logging
sys.stderr.write(f"QUIET {hf_logging.get_verbosity() == logging.ERROR} "
                 f"{hf_logging.is_progress_bar_enabled()}\\n")
"""
    done = _run_fresh(code)
    assert "QUIET True False" in done.stderr, done.stderr
