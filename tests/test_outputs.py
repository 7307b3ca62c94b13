"""Output paths (`export -o`, `graph -o`, `schema -o`, `init -o`): never over an input, never into a
folder that is missing, not a folder or read-only, one located message and exit 1; written atomically,
so a failing export leaves the previous .onnx as it was (issue 15, docs/reliability.md)."""
from __future__ import annotations

import os

import pytest

from skiptrain import export as export_module
from tests.conftest import TINY_RESIDUAL, TINY_RESIDUAL_MODEL, invoke


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny residual net trained for one short epoch."""
    root = tmp_path_factory.mktemp("outputs")
    config = root / "tiny.yaml"
    config.write_text(TINY_RESIDUAL)
    result = invoke("train", config, "--run-dir", root / "R", "--epochs", "1", "--limit-batches", "1", "-q")
    assert result.exit_code == 0, result.output
    return root / "R"


@pytest.fixture
def model_config(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(TINY_RESIDUAL_MODEL)
    return path


def refused(result, *words):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "--output: output error:" in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize("source", ["checkpoint", "run directory"])
def test_export_over_its_own_checkpoint_is_refused(run, source):
    checkpoint = run / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()
    result = invoke("export", checkpoint if source == "checkpoint" else run, "-o", checkpoint)
    refused(result, "is the command's input" if source == "checkpoint" else "run's own files")
    assert checkpoint.read_bytes() == before


def test_outputs_never_replace_another_runs_files(run, model_config):
    """Found by tests/test_fuzz_hostile.py: `export other.yaml -o R/checkpoints/last.pt` replaced a run's
    checkpoint with an ONNX file. A new file inside a run directory stays allowed."""
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    refused(invoke("export", model_config, "-o", run / "checkpoints" / "last.pt", "--no-verify"), "run's own files")
    refused(invoke("graph", model_config, "-o", run / "config.yaml"), "run's own files")
    refused(invoke("graph", model_config, "-o", run / "metrics.jsonl"), "run's own files")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert invoke("graph", model_config, "-o", run / "graph.md").exit_code == 0
    (run / "graph.md").unlink()


def test_export_and_graph_over_the_config_are_refused(model_config):
    before = model_config.read_text()
    refused(invoke("export", model_config, "-o", model_config, "--no-verify"), "is the command's input")
    refused(invoke("graph", model_config, "-o", model_config), "is the command's input")
    link = model_config.with_name("link.yaml")
    os.link(model_config, link)  # a hard link is the same file under another name
    refused(invoke("graph", model_config, "-o", link), "is the command's input")
    assert model_config.read_text() == before


@pytest.mark.parametrize("command", ["export", "graph", "schema", "init"])
@pytest.mark.parametrize("case", ["a folder", "missing folder", "under a file"])
def test_bad_output_paths_are_one_located_message(tmp_path, model_config, command, case):
    (tmp_path / "afile").write_text("x")
    output = {"a folder": tmp_path, "missing folder": tmp_path / "missing" / "x.out",
              "under a file": tmp_path / "afile" / "x.out"}[case]
    args = {"export": ("export", model_config, "--no-verify"), "graph": ("graph", model_config),
            "schema": ("schema",), "init": ("init", "quickstart")}[command]
    refused(invoke(*args, "-o", output), {"a folder": "is a folder", "missing folder": "does not exist",
                                          "under a file": "is a file, not a folder"}[case])
    assert not (tmp_path / "missing").exists() and (tmp_path / "afile").read_text() == "x"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
@pytest.mark.parametrize("command", ["export", "graph", "schema", "init"])
def test_a_read_only_folder_is_refused(tmp_path, model_config, command):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        args = {"export": ("export", model_config, "--no-verify"), "graph": ("graph", model_config),
                "schema": ("schema",), "init": ("init", "quickstart")}[command]
        refused(invoke(*args, "-o", folder / "x.out"), "is not writable")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_graph_and_schema_overwrite_atomically(tmp_path, model_config):
    target = tmp_path / "graph.md"
    target.write_text("old")
    assert invoke("graph", model_config, "-o", target).exit_code == 0
    assert "stem" in target.read_text()
    assert invoke("schema", "-o", target).exit_code == 0
    assert target.read_text().lstrip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "graph.md"]  # no temporary left


def test_init_does_not_overwrite_without_force(tmp_path):
    target = tmp_path / "mine.yaml"
    target.write_text("mine")
    refused(invoke("init", "quickstart", "-o", target), "already exists", "--force")
    assert target.read_text() == "mine"


def test_a_failing_export_leaves_the_previous_onnx_unchanged(tmp_path, model_config, monkeypatch):
    output = tmp_path / "model.onnx"
    assert invoke("export", model_config, "-o", output, "--no-verify").exit_code == 0
    before = output.read_bytes()
    seen = []

    def broken_verify(model, path, *args, **kwargs):
        seen.append(path)
        assert path != output and path.exists() and output.read_bytes() == before
        raise export_module.ExportError(f"onnx.checker rejects {path}: simulated")

    monkeypatch.setattr(export_module, "verify_onnx", broken_verify)
    result = invoke("export", model_config, "-o", output)
    assert result.exit_code == 1 and f"onnx.checker rejects {output}: simulated" in result.stderr, result.output
    assert seen and output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "model.onnx"]  # no temporary left


def test_an_interrupted_export_leaves_the_previous_onnx_unchanged(tmp_path, model_config, monkeypatch):
    output = tmp_path / "model.onnx"
    output.write_bytes(b"previous export")

    def killed(model, example, path, *args):
        path.write_bytes(b"")  # the exporter had opened its file when the signal came
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_export", killed)
    result = invoke("export", model_config, "-o", output)
    assert result.exit_code == 130, result.output
    assert output.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "model.onnx"]
