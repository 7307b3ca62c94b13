"""`train.tensorboard: true` mirrors each epoch's metrics row into RUN_DIR/tensorboard/; a missing package is a clear error."""
from __future__ import annotations

import builtins
import json

import pytest

from .conftest import invoke

pytest.importorskip("tensorboard")


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events, {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_writes_every_numeric_metric_per_epoch(tiny_residual, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", tiny_residual, "--run-dir", run, "--epochs", "1", "-q",
                    "--set", "train.tensorboard=true")
    assert result.exit_code == 0, result.output
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    events, found = scalars(run / "tensorboard")
    assert {"train_loss", "val_loss", "val_acc", "lr", "samples_per_s"} <= set(found)
    assert found["train_loss"] == [(1, pytest.approx(row["train_loss"], rel=1e-6))]
    assert events.Graph() is not None  # the model graph, written once


def test_tensorboard_is_off_by_default(tiny_residual, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", tiny_residual, "--run-dir", run, "--epochs", "1", "-q").exit_code == 0
    assert not (run / "tensorboard").exists()


def test_a_missing_tensorboard_package_fails_before_training(tiny_residual, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard" or name.startswith("tensorboard"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    run = tmp_path / "run"
    result = invoke("train", tiny_residual, "--run-dir", run, "--set", "train.tensorboard=true")
    assert result.exit_code == 1
    assert "train.tensorboard needs the tensorboard package" in result.output and "pip install tensorboard" in result.output
    assert not run.exists()  # nothing started


def test_tensorboard_must_be_a_bool(tiny_residual, tmp_path):
    result = invoke("train", tiny_residual, "--run-dir", tmp_path / "run", "--set", "train.tensorboard=yes please")
    assert result.exit_code == 1 and "`train.tensorboard` must be true or false" in result.output


def test_a_graph_that_cannot_be_traced_only_warns(tiny_residual, tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def untraceable(self, model, *args, **kwargs):
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(SummaryWriter, "add_graph", untraceable)
    run = tmp_path / "run"
    result = invoke("train", tiny_residual, "--run-dir", run, "--epochs", "1", "-q",
                    "--set", "train.tensorboard=true")
    assert result.exit_code == 0, result.output
    assert "model graph could not be traced" in result.output and "cannot trace this" in result.output
    assert "train_loss" in scalars(run / "tensorboard")[1]
