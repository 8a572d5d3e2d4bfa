"""Nothing of the user's is ever lost: every way contralign used to delete user data is refused
with one line (exit 2), and every file that was there before is still there byte for byte."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from tests.conftest import one_line_error
from typer.testing import CliRunner

from contralign.cli.app import app
from contralign.core.errors import ContralignError
from contralign.core.io import atomic_directory, atomic_write_text
from contralign.core.outputs import (
    INDEX,
    MODEL,
    RUN,
    OutputError,
    check_output_folder,
    hold_lock,
)

runner = CliRunner()
COLUMNS = {"anchor": "query", "positive": "doc"}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}




def write_config(path: Path, model: Path, data: Path, output_dir: str | Path, **train) -> Path:
    config = {"model": {"name": str(model), "max_length": 32},
              "data": {"path": str(data), "columns": COLUMNS},
              "train": {"batch_size": 4, "max_steps": 2, **train},
              "output_dir": str(output_dir)}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture()
def user_folder(tmp_path: Path, pairs_file: Path) -> Path:
    """A folder of the user's: their data, their config, their notes."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "pairs.jsonl").write_bytes(pairs_file.read_bytes())
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "keep.bin").write_bytes(os.urandom(64))
    return folder


@pytest.mark.parametrize("how", [["-o", "."], ["--set", "output_dir=."]])
def test_overwrite_of_the_working_directory_is_refused(tiny_model_dir, user_folder, monkeypatch,
                                                       how):
    monkeypatch.chdir(user_folder)
    config = write_config(user_folder / "config.yaml", tiny_model_dir, Path("pairs.jsonl"),
                          "runs/x")
    before = snapshot(user_folder)
    line = one_line_error(runner.invoke(app, ["train", str(config), *how, "--overwrite"]))
    assert "output_dir: . is the working directory" in line
    assert snapshot(user_folder) == before


@pytest.mark.parametrize("holds", ["data", "config", "other files"])
def test_overwrite_of_a_folder_of_the_users_is_refused(tiny_model_dir, user_folder, tmp_path,
                                                       holds):
    config_dir = user_folder if holds == "config" else tmp_path
    data = user_folder / "pairs.jsonl" if holds == "data" else tmp_path / "data.jsonl"
    if holds != "data":
        data.write_bytes((user_folder / "pairs.jsonl").read_bytes())
    config = write_config(config_dir / "config.yaml", tiny_model_dir, data, user_folder)
    before = snapshot(user_folder)
    line = one_line_error(runner.invoke(app, ["train", str(config), "--overwrite"]))
    if holds == "other files":
        assert "holds files contralign did not make" in line
    else:
        assert f"holds {config if holds == 'config' else data}, an input" in line
    assert snapshot(user_folder) == before


def test_demo_does_not_wipe_a_users_folder(user_folder):
    before = snapshot(user_folder)
    line = one_line_error(runner.invoke(app, ["demo", "-o", str(user_folder)]))
    assert "holds files contralign did not make (no run.json)" in line
    assert snapshot(user_folder) == before


@pytest.mark.parametrize("broken", ["data path", "model", "config value"])
def test_a_failed_overwrite_leaves_the_last_good_run(tiny_model_dir, pairs_file, tmp_path,
                                                     broken):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", tiny_model_dir, pairs_file, run_dir)
    assert runner.invoke(app, ["train", str(config), "--json"]).exit_code == 0
    before = snapshot(run_dir)
    override = {"data path": "data.path=no-such-file.jsonl",
                "model": f"model.name={tmp_path / 'no-model'}",
                "config value": "objective.name=no_such_objective"}[broken]
    one_line_error(runner.invoke(app, ["train", str(config), "--overwrite", "--set", override]))
    assert snapshot(run_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "pairs.jsonl", "run"]


def test_overwrite_replaces_a_run_of_ours_only_when_the_new_one_finishes(
        tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", tiny_model_dir, pairs_file, run_dir)
    assert runner.invoke(app, ["train", str(config)]).exit_code == 0
    before = snapshot(run_dir)
    import contralign.training.loop as loop

    def crash(*args, **kwargs):
        raise RuntimeError("crash in the middle of training")

    monkeypatch.setattr(loop, "_after_step", crash)
    result = runner.invoke(app, ["train", str(config), "--overwrite", "--set", "train.seed=3"])
    assert isinstance(result.exception, RuntimeError)  # a bug stays a traceback ...
    assert snapshot(run_dir) == before  # ... and the old run is intact
    assert not (tmp_path / ".run.partial").exists()
    monkeypatch.undo()
    result = runner.invoke(app, ["train", str(config), "--overwrite", "--set", "train.seed=3",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["seed"] == 3
    assert snapshot(run_dir) != before


@pytest.mark.parametrize("target", ["corpus folder", "a file", "users folder"])
def test_index_never_replaces_what_it_did_not_make(tiny_model_dir, user_folder, target):
    output = {"corpus folder": user_folder, "a file": user_folder / "notes.txt",
              "users folder": user_folder / "sub"}[target]
    before = snapshot(user_folder)
    line = one_line_error(runner.invoke(app, ["index", str(tiny_model_dir),
                                              str(user_folder / "pairs.jsonl"), "--column",
                                              "query", "-o", str(output)]))
    assert str(output) in line
    assert snapshot(user_folder) == before


def test_index_replaces_its_own_index_with_overwrite_only(tiny_model_dir, pairs_file, tmp_path):
    args = ["index", str(tiny_model_dir), str(pairs_file), "--column", "query",
            "-o", str(tmp_path / "idx")]
    assert runner.invoke(app, args).exit_code == 0
    before = snapshot(tmp_path / "idx")
    assert "pass --overwrite" in one_line_error(runner.invoke(app, args))
    assert snapshot(tmp_path / "idx") == before
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_rejects_on_the_data_file_is_refused(tiny_model_dir, user_folder, tmp_path):
    data = user_folder / "pairs.jsonl"
    with data.open("a") as f:
        f.write("{not json}\n")
    config = write_config(tmp_path / "config.yaml", tiny_model_dir, data, tmp_path / "run")
    before = snapshot(user_folder)
    for rejects in (data, tmp_path / "config.yaml"):
        result = runner.invoke(app, ["train", str(config), "--set", "data.on_bad_record=skip",
                                     "--set", f"data.rejects={rejects}"])
        assert "data.rejects" in one_line_error(result)
    assert snapshot(user_folder) == before
    assert not (tmp_path / "run").exists()


def test_a_failed_start_leaves_no_run_directory(tiny_model_dir, pairs_file, tmp_path):
    """The rerun after a fix is not refused with 'already holds a run'."""
    config = write_config(tmp_path / "config.yaml", tiny_model_dir, pairs_file, tmp_path / "run")
    one_line_error(runner.invoke(app, ["train", str(config), "--set", "data.path=missing.jsonl"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "pairs.jsonl"]
    assert runner.invoke(app, ["train", str(config)]).exit_code == 0


def test_outputs_follow_the_umask(tiny_model_dir, pairs_file, tmp_path):
    old = os.umask(0o022)
    try:
        config = write_config(tmp_path / "config.yaml", tiny_model_dir, pairs_file,
                              tmp_path / "run", checkpoint_every=1)
        assert runner.invoke(app, ["train", str(config)]).exit_code == 0
        assert runner.invoke(app, ["index", str(tmp_path / "run"), str(pairs_file), "--column",
                                   "query", "-o", str(tmp_path / "idx")]).exit_code == 0
    finally:
        os.umask(old)
    made = [tmp_path / "run", tmp_path / "idx", *(tmp_path / "run").rglob("*"),
            *(tmp_path / "idx").rglob("*")]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in made if p.name != ".lock"}
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if (name in ("run", "idx") or "." not in name) else 0o644)
             and not (Path(name).suffix and mode == 0o644)}
    assert not wrong, wrong


def test_owned_folders_are_recognised_by_their_manifest(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "index.json").write_text("{}")  # not ours: no fingerprint
    with pytest.raises(OutputError, match="did not make"):
        check_output_folder(folder, INDEX, "-o", inputs=[], replace=True)
    (folder / "index.json").write_text(json.dumps({"fingerprint": "f"}))
    assert check_output_folder(folder, INDEX, "-o", inputs=[], replace=True)
    with pytest.raises(OutputError, match="is a run directory|did not make"):
        check_output_folder(folder, RUN, "-o", inputs=[], replace=True)
    assert not check_output_folder(tmp_path / "new", RUN, "-o", inputs=[], replace=False)


def test_model_save_never_replaces_a_folder_it_did_not_make(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="did not make"):
        with atomic_directory(folder, MODEL) as tmp:
            (tmp / "contralign.json").write_text('{"tower": "text"}')
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left


def test_one_writer_per_folder(tmp_path):
    with hold_lock(tmp_path, "output_dir"):
        with pytest.raises(OutputError, match=f"in use by another contralign process \\(pid "
                                              f"{os.getpid()}\\)"):
            with hold_lock(tmp_path, "output_dir"):
                pass
    with hold_lock(tmp_path, "output_dir"):  # released when the holder ended
        pass


def test_atomic_write_of_a_path_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ContralignError, match="output: cannot create .*file"):
        atomic_write_text(tmp_path / "file" / "out.txt", "y")


def _writing(command: str, model: Path, data: Path, output: Path) -> list[str]:
    """The arguments of ``command`` writing to ``output``."""
    match command:
        case "train":
            return ["train", str(write_config(output.parent.parent / f"{output.name}.yaml",
                                              model, data, output))]
        case "index":
            return ["index", str(model), str(data), "--column", "query", "-o", str(output)]
    return ["encode", str(model), str(data), "--column", "query", "-o", f"{output}.npy"]


@pytest.mark.parametrize("command", ["train", "index", "encode"])
def test_an_output_path_that_cannot_be_made_is_one_line(tiny_model_dir, pairs_file, tmp_path,
                                                        monkeypatch, command):
    """Under a file, or refused by the OS (simulated: the tests run as root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    args = _writing(command, tiny_model_dir, pairs_file, blocker / "out")
    assert "cannot create" in one_line_error(runner.invoke(app, args))
    assert blocker.read_text() == "mine"

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    args = _writing(command, tiny_model_dir, pairs_file, tmp_path / "new" / "out")
    monkeypatch.setattr(Path, "mkdir", refuse)
    assert "Permission denied" in one_line_error(runner.invoke(app, args))


def test_a_run_dir_replaced_by_the_user_during_an_overwrite_is_left_alone(
        tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    """The user moved the old run away and put a folder of theirs there while the new run
    trained: the finished run stays in .run.partial, their folder is untouched."""
    import shutil

    import contralign.training.loop as loop

    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", tiny_model_dir, pairs_file, run_dir)
    assert runner.invoke(app, ["train", str(config)]).exit_code == 0
    real = loop._after_step

    def users_folder_appears(task, losses, config, state, *args, **kwargs):
        real(task, losses, config, state, *args, **kwargs)
        if state.step == 1:
            shutil.rmtree(run_dir)
            run_dir.mkdir()
            (run_dir / "mine.txt").write_text("mine")

    monkeypatch.setattr(loop, "_after_step", users_folder_appears)
    line = one_line_error(runner.invoke(app, ["train", str(config), "--overwrite", "--json"]))
    assert "changed while the run trained beside it; the new run is in" in line
    assert snapshot(run_dir) == {"mine.txt": b"mine"}
    assert (tmp_path / ".run.partial" / "model" / "model.safetensors").is_file()
