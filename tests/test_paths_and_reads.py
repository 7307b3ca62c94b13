"""Hostile paths and values (issue 15): configs that are devices, FIFOs, folders, huge or not UTF-8;
YAML dates and tags that would put non-plain values into checkpoints; run directories whose files are
folders, read-only, or files; files of a run replaced atomically; `train` and `--resume` agreeing
about whether a folder holds a run. Every refusal: exit 1, one message naming the path, no traceback."""
from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skiptrain.config import load_config
from skiptrain.errors import ConfigError
from skiptrain.training.rundir import MARKER

from .conftest import ROOT, TINY_RESIDUAL, invoke

SMALL = ("--epochs", "1", "--limit-batches", "1", "-q")


def refused(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (b"<dir>" if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


# --- 1. bounded reads -------------------------------------------------------------------------

def _device(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    if name in ("zero", "urandom"):
        path.symlink_to(f"/dev/{name}")
    elif name == "fifo":
        os.mkfifo(path)
    elif name == "folder":
        path.mkdir()
    return path


HOSTILE = [("zero", "is a device"), ("urandom", "is a device"), ("fifo", "is a FIFO")]


def test_a_config_that_is_a_device_or_a_fifo_is_one_message_not_a_hang(tmp_path):
    """One subprocess (with a timeout and a memory limit) validates each: a regression hangs or fills
    memory, so it must not run inside the test process."""
    paths = [_device(tmp_path, name) for name, _ in HOSTILE]
    script = ("import sys\nfrom typer.testing import CliRunner\nfrom skiptrain.cli import app\n"
              "for path in sys.argv[1:]:\n    r = CliRunner().invoke(app, ['validate', path])\n"
              "    print(r.exit_code, repr(r.exception if not isinstance(r.exception, SystemExit) else None), "
              "r.stderr.replace(chr(10), ' '), flush=True)\n")
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (4 << 30, 4 << 30))
    done = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True,
                          timeout=120, preexec_fn=limit, cwd=ROOT)
    lines = done.stdout.splitlines()
    assert len(lines) == len(HOSTILE), done.stdout + done.stderr
    for line, path, (_, words) in zip(lines, paths, HOSTILE):
        assert line.startswith("1 None "), line
        assert str(path) in line and words in line and "not a regular file" in line, line


def test_a_config_that_is_a_folder_is_one_message(tmp_path):
    path = _device(tmp_path, "folder")
    refused(invoke("validate", path), str(path), "is a folder, not a regular file")


def test_a_model_file_that_is_a_device_is_one_message(tmp_path):
    (tmp_path / "model.yaml").symlink_to("/dev/zero")
    (tmp_path / "run.yaml").write_text("model: model.yaml\n")
    refused(invoke("validate", tmp_path / "run.yaml"), "model.yaml")


def test_a_huge_config_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:  # sparse: 17 MiB that costs no disk
        handle.truncate(17 << 20)
    refused(invoke("validate", path), str(path), "larger than 16 MiB; a config is a small text file")


def test_a_config_that_is_not_utf8_is_located_at_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"model:\n  name: caf\xe9\n")
    refused(invoke("validate", path), f"{path}:2:12", "not UTF-8")


# --- 2. YAML dates and tags ---------------------------------------------------------------------

PLAIN = (dict, list, str, int, float, bool, type(None))


def _only_plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, PLAIN) and _only_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_only_plain(v) for v in value)
    return type(value) in PLAIN


def test_a_date_stays_the_text_written(write_yaml):
    text = TINY_RESIDUAL.replace("name: tiny", "name: 2024-06-01") + "# 2001-12-14t21:59:43.10-05:00\n"
    path = write_yaml(text.replace("epochs: 2", "epochs: 2\n  note_time: 2001-12-14 21:59:43.10 -5"))
    config = load_config(path)
    assert config.model["name"] == "2024-06-01"
    assert config.train["note_time"] == "2001-12-14 21:59:43.10 -5"
    assert _only_plain(config.to_dict())


@pytest.mark.parametrize("value, plain", [
    ("!!timestamp 2024-06-01", "2024-06-01"),
    ("!!omap [{a: 1}, {b: 2}]", {"a": 1, "b": 2}),
    ("!!binary aGVsbG8=", None),
    ("!!set {a, b}", None),
    ("!!pairs [{a: 1}, {a: 2}]", None),
])
def test_explicit_tags_become_plain_values_or_a_located_error(write_yaml, value, plain):
    path = write_yaml(f"model:\n  name: tiny\n  input: [4]\n  note: {value}\n  layers: [{{type: relu}}]\n")
    if plain is None:
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.location is not None and caught.value.location.line == 4, caught.value
        assert "!!" in caught.value.message
    else:
        config = load_config(path)
        assert config.model["note"] == plain and _only_plain(config.to_dict())


def test_a_python_caller_s_date_or_object_is_refused_and_tuples_become_lists():
    config = load_config({"model": {"name": "tiny", "input": (4,), "layers": [{"type": "relu"}]},
                          "data": {"root": Path("data/x")}})
    assert config.to_dict()["model"]["input"] == [4] and config.to_dict()["data"]["root"] == "data/x"
    assert _only_plain(config.to_dict())
    for odd in (datetime.date(2024, 6, 1), b"bytes", {1, 2}, object()):
        with pytest.raises(ConfigError) as caught:
            load_config({"model": {"name": "tiny", "input": [4], "note": odd, "layers": [{"type": "relu"}]}})
        assert "model.note" in str(caught.value)


def test_a_run_named_by_a_date_saves_checkpoints_weights_only_loading_accepts(write_yaml, tmp_path):
    import torch

    path = write_yaml(TINY_RESIDUAL.replace("name: tiny", "name: 2024-06-01"))
    run = tmp_path / "dated"
    assert invoke("train", path, "--run-dir", run, *SMALL).exit_code == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"]["name"] == "2024-06-01" and _only_plain(state["config"])


@pytest.mark.slow
def test_a_run_named_by_a_date_trains_resumes_evaluates_and_exports(write_yaml, tmp_path):
    import torch

    path = write_yaml(TINY_RESIDUAL.replace("name: tiny", "name: 2024-06-01"))
    run = tmp_path / "dated"
    assert invoke("train", path, "--run-dir", run, *SMALL).exit_code == 0
    result = invoke("train", "--resume", run, "--epochs", "2", "--limit-batches", "1", "-q")
    assert result.exit_code == 0, result.output
    result = invoke("eval", run, "--json")
    assert result.exit_code == 0, result.output
    result = invoke("export", run, "-o", tmp_path / "dated.onnx")
    assert result.exit_code == 0 and (tmp_path / "dated.onnx").is_file(), result.output
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"]["name"] == "2024-06-01" and state["epoch"] == 2


# --- 3. paths inside a run ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished one-epoch run, trained once for the module."""
    folder = tmp_path_factory.mktemp("trained")
    config = folder / "tiny_residual.yaml"
    config.write_text(TINY_RESIDUAL)
    assert invoke("train", config, "--run-dir", folder / "run", *SMALL).exit_code == 0
    return folder / "run"


@pytest.fixture
def run_a(trained, tmp_path) -> Path:
    """A copy of the trained run, for one test to break."""
    return Path(shutil.copytree(trained, tmp_path / "runA", symlinks=True))


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.yaml", "summary.json", "checkpoints"])
def test_a_run_file_that_is_the_wrong_kind_is_refused_before_training(run_a, name):
    target = run_a / name
    if target.is_dir():
        for item in target.iterdir():
            item.unlink()
        target.rmdir()
        target.write_text("not a folder\n")
    else:
        target.unlink()
        target.mkdir()
    before = snapshot(run_a)
    result = invoke("train", "--resume", run_a / "checkpoints" / "last.pt" if name != "checkpoints" else run_a,
                    "--epochs", "2", "-q")
    refused(result, name)
    assert snapshot(run_a) == before
    if name == "checkpoints":
        return
    refused(invoke("train", "--resume", run_a, "--epochs", "2", "-q"), str(target))


def test_out_dir_that_is_a_file_is_refused(tiny_residual, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    refused(invoke("train", tiny_residual, "--set", f"train.out_dir={afile}", *SMALL), str(afile), "train.out_dir")
    assert afile.read_text() == "mine\n"


def test_run_dir_that_is_a_file_or_under_a_file_is_refused(tiny_residual, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    refused(invoke("train", tiny_residual, "--run-dir", afile, *SMALL), str(afile))
    refused(invoke("train", tiny_residual, "--run-dir", afile / "run", *SMALL), str(afile))
    assert afile.read_text() == "mine\n"


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only: chmod for a user; for root (who ignores modes) a read-only bind mount."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(0o555)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip("running as root without permission to mount a read-only folder")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_run_is_refused_on_resume(run_a):
    before = snapshot(run_a)
    with read_only(run_a):
        refused(invoke("train", "--resume", run_a, "--epochs", "2", "-q"), str(run_a), "not writable")
    assert snapshot(run_a) == before


def test_eval_of_a_read_only_run_reports_and_warns_about_its_confusion_matrix(run_a):
    before = snapshot(run_a)
    with read_only(run_a):
        result = invoke("eval", run_a)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "accuracy" in result.stdout and "confusion matrix was not written" in result.stderr, result.output
    assert "confusion matrix: " not in result.stdout
    assert snapshot(run_a) == before


def test_a_new_run_inside_a_read_only_folder_is_refused(tiny_residual, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    with read_only(parent):
        refused(invoke("train", tiny_residual, "--run-dir", parent / "run", *SMALL), str(parent), "not writable")
        refused(invoke("train", tiny_residual, "--set", f"train.out_dir={parent}", *SMALL), str(parent),
                "not writable")
    assert list(parent.iterdir()) == []


# --- 4. atomic writes inside a run ------------------------------------------------------------------

def test_a_run_s_files_are_replaced_not_written_in_place(run_a, tmp_path):
    """A hard link to each file sees the old bytes after a resume: the file was replaced by a rename
    (a temporary beside it, fsynced, os.replace), never truncated and rewritten where it stood."""
    names = ["config.yaml", "summary.json", "curves.png", "metrics.jsonl"]
    outside = tmp_path / "links"
    outside.mkdir()
    old = {}
    for name in names:
        os.link(run_a / name, outside / name)
        old[name] = (run_a / name).read_bytes()
    (run_a / ".summary.json.k1ll3d.tmp").mkdir()  # what a kill during an earlier atomic write leaves
    (run_a / ".summary.json.k1ll3d.tmp" / "summary.json").write_text("{")
    assert invoke("train", "--resume", run_a, "--epochs", "2", "--limit-batches", "1", "-q").exit_code == 0
    for name in names:
        assert (outside / name).read_bytes() == old[name], name
        assert not os.path.samefile(outside / name, run_a / name), name
    assert not [p for p in run_a.rglob("*") if p.name.endswith(".tmp")]


def test_a_legacy_run_gets_its_marker_atomically(run_a):
    (run_a / MARKER).unlink()
    assert invoke("train", "--resume", run_a, "--epochs", "2", "--limit-batches", "1", "-q").exit_code == 0
    assert (run_a / MARKER).is_file() and not [p for p in run_a.iterdir() if p.name.endswith(".tmp")]


# --- 5. train and --resume agree whether a run exists ------------------------------------------------

def _stopped_before_first_save(run: Path) -> None:
    """What a kill during the first epoch (or during the first checkpoint write) leaves."""
    for item in (run / "checkpoints").iterdir():
        item.unlink()
    (run / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    (run / "checkpoints" / "last.pt.tmp").write_bytes(b"half a checkpoint")


def test_a_run_without_a_checkpoint_gets_the_same_answer_from_train_and_resume(run_a, tiny_residual):
    _stopped_before_first_save(run_a)
    before = snapshot(run_a)
    resumed = invoke("train", "--resume", run_a, "-q")
    again = invoke("train", tiny_residual, "--run-dir", run_a, "-q")
    for result in (resumed, again):
        refused(result, str(run_a), "nothing to resume", "--force")
        assert "continue it with --resume" not in result.stderr
    assert snapshot(run_a) == before
    assert invoke("train", tiny_residual, "--run-dir", run_a, "--force", *SMALL).exit_code == 0
    assert (run_a / "checkpoints" / "last.pt").is_file()
    assert not (run_a / "checkpoints" / "last.pt.tmp").exists()


def test_a_run_with_only_its_previous_checkpoint_resumes(run_a, tiny_residual):
    """A kill between moving last.pt to previous.pt and renaming the new one in: both commands see a run."""
    checkpoints = run_a / "checkpoints"
    for item in checkpoints.iterdir():
        if item.name.startswith("last.pt"):
            item.rename(checkpoints / item.name.replace("last", "previous"))
    refused(invoke("train", tiny_residual, "--run-dir", run_a, "-q"), "continue it with --resume")
    result = invoke("train", "--resume", run_a, "--epochs", "2", "--limit-batches", "1", "-q")
    assert result.exit_code == 0, result.output
