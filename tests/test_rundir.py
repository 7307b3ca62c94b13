"""Run directories: skiptrain writes only into folders it created or that hold one of its runs
(a `.skiptrain-run` marker), never over another run without --force, and --force replaces a run
whole. Every refusal: exit 1, one message, no traceback, and not one file changed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from skiptrain.training.rundir import MARKER

from .conftest import invoke

SMALL = ("--epochs", "1", "--limit-batches", "1", "-q")
MORE = ("--epochs", "3", "--limit-batches", "1", "-q")  # one epoch past run_a's two


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), and every folder (-> b"<dir>")."""
    return {str(p.relative_to(folder)): (b"<dir>" if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def refused(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr


def marker_id(run: Path) -> str:
    return json.loads((run / MARKER).read_text())["id"]


@pytest.fixture
def run_a(tiny_residual, tmp_path) -> Path:
    """A finished two-epoch run (last.pt, previous.pt, best.pt, metrics, summary)."""
    run = tmp_path / "runA"
    assert invoke("train", tiny_residual, "--run-dir", run, "--epochs", "2", "--limit-batches", "1",
                  "-q").exit_code == 0
    return run


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's folder that is not a run: files skiptrain would have overwritten or deleted."""
    folder = tmp_path / "my_project"
    (folder / "checkpoints").mkdir(parents=True)
    for name, text in {"config.yaml": "mine: 1\n", "summary.json": "{}\n", "curves.png": "png",
                       "metrics.jsonl": "{\"mine\": 1}\n", "notes.txt": "keep me\n"}.items():
        (folder / name).write_text(text)
    return folder


def test_a_new_run_gets_a_marker_with_its_name_and_an_id(run_a):
    marker = json.loads((run_a / MARKER).read_text())
    assert marker["name"] == "tiny" and len(marker["id"]) >= 16


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_that_is_not_a_run_is_refused_even_with_force(tiny_residual, project, force):
    before = snapshot(project)
    result = invoke("train", tiny_residual, "--run-dir", project, *SMALL, *(["--force"] if force else []))
    refused(result, "not a skiptrain run")
    assert snapshot(project) == before


def test_an_empty_run_dir_is_refused_and_the_current_folder_is_untouched(tiny_residual, project, monkeypatch):
    monkeypatch.chdir(project)
    before = snapshot(project)
    refused(invoke("train", tiny_residual, "--run-dir", "", *SMALL), "--run-dir is empty")
    refused(invoke("train", tiny_residual, "--run-dir", "", *SMALL, "--force"), "--run-dir is empty")
    assert snapshot(project) == before


def test_a_run_dir_that_is_a_file_is_refused(tiny_residual, project):
    before = snapshot(project)
    refused(invoke("train", tiny_residual, "--run-dir", project / "notes.txt", *SMALL), "is a file")
    assert snapshot(project) == before


def test_an_existing_empty_folder_becomes_a_run(tiny_residual, tmp_path):
    (tmp_path / "empty").mkdir()
    assert invoke("train", tiny_residual, "--run-dir", tmp_path / "empty", *SMALL).exit_code == 0
    assert (tmp_path / "empty" / MARKER).is_file() and (tmp_path / "empty" / "checkpoints" / "last.pt").is_file()


def test_a_loose_checkpoint_continues_into_a_new_run_not_the_folders_around_it(run_a, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "config.yaml").write_text("mine: 1\n")
    shutil.copy(run_a / "checkpoints" / "last.pt", home / "models" / "best_model.pt")
    shutil.copy(run_a / "checkpoints" / "last.pt.sha256", home / "models" / "best_model.pt.sha256")
    before = snapshot(home)
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--resume", home / "models" / "best_model.pt", *MORE)
    assert result.exit_code == 0, result.output
    assert snapshot(home) == before
    new = [p for p in (tmp_path / "runs").iterdir()]
    assert len(new) == 1 and (new[0] / MARKER).is_file() and (new[0] / "checkpoints" / "last.pt").is_file()
    assert str(new[0].name).startswith("tiny-")


def test_resume_into_another_run_is_refused_without_force(run_a, tiny_residual, tmp_path):
    run_b = tmp_path / "runB"
    assert invoke("train", tiny_residual, "--run-dir", run_b, *SMALL).exit_code == 0
    before_a, before_b = snapshot(run_a), snapshot(run_b)
    refused(invoke("train", "--resume", run_a, "--run-dir", run_b, *SMALL), "already holds another run")
    assert snapshot(run_a) == before_a and snapshot(run_b) == before_b
    # with --force, runB is replaced whole by the continuation of runA; runA stays as it was
    assert invoke("train", "--resume", run_a, "--run-dir", run_b, "--force", *MORE).exit_code == 0
    assert snapshot(run_a) == before_a
    assert [json.loads(r)["epoch"] for r in (run_b / "metrics.jsonl").read_text().splitlines()] == [3]
    assert marker_id(run_b) != json.loads(before_b[MARKER])["id"]


def test_resume_continues_its_own_run_with_or_without_naming_it(run_a):
    own = marker_id(run_a)
    assert invoke("train", "--resume", run_a, *SMALL).exit_code == 0
    assert invoke("train", "--resume", run_a, "--run-dir", run_a, *SMALL).exit_code == 0
    assert marker_id(run_a) == own


def test_force_replaces_a_run_whole_so_no_fallback_finds_the_old_model(run_a, tiny_residual):
    assert (run_a / "checkpoints" / "previous.pt").is_file()
    old = marker_id(run_a)
    (run_a / "checkpoints" / "stray.pt").write_bytes(b"old")
    assert invoke("train", tiny_residual, "--run-dir", run_a, "--force", *SMALL).exit_code == 0
    assert marker_id(run_a) != old
    assert not (run_a / "checkpoints" / "previous.pt").exists()
    assert not (run_a / "checkpoints" / "stray.pt").exists()
    rows = (run_a / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]
    # a corrupt last.pt now has nothing older to fall back to: the old run's model is gone
    last = run_a / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    result = invoke("train", "--resume", run_a, *SMALL)
    assert result.exit_code == 1 and "instead" not in result.output  # no "using previous.pt instead"


def test_an_older_run_without_a_marker_is_still_a_run(run_a, tiny_residual):
    (run_a / MARKER).unlink()
    before = snapshot(run_a)
    refused(invoke("train", tiny_residual, "--run-dir", run_a, *SMALL), "already holds a run")
    assert snapshot(run_a) == before
    assert invoke("train", "--resume", run_a, *SMALL).exit_code == 0
    assert (run_a / MARKER).is_file()


@pytest.mark.parametrize("link", ["loop", "dangling"])
def test_a_run_dir_that_is_a_broken_link_is_refused(tiny_residual, tmp_path, link):
    """Found by tests/test_fuzz_hostile.py: a link loop as --run-dir ended in an ELOOP traceback."""
    path = tmp_path / "r"
    path.symlink_to("r" if link == "loop" else "nowhere")
    refused(invoke("train", tiny_residual, "--run-dir", path, *SMALL), "leads to no folder")
    assert path.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["r", "tiny_residual.yaml"]
