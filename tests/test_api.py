"""The one Python API: every source kind, overrides, never changing the caller's config; the CLI is a shell over it."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

import skiptrain
from skiptrain import api, distributed
from skiptrain.config import load_config

from .conftest import ROOT, TINY_RESIDUAL, invoke

TINY = yaml.safe_load(TINY_RESIDUAL)  # the shared tiny residual config, as a dict


def test_train_takes_a_path_like_build_model_does(tmp_path):
    """Defect 2: `skiptrain.train("configs/quickstart.yaml")` raised AttributeError."""
    summary = skiptrain.train(ROOT / "configs" / "quickstart.yaml", ["train.epochs=1"], run_dir=tmp_path / "run",
                              quiet=True, limit_batches=2)
    assert summary["epochs"] == 1 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_train_leaves_the_callers_config_as_it_was(tmp_path):
    """Defect 2: `train` wrote `epochs` into the caller's Config."""
    config = load_config(copy.deepcopy(TINY))
    before = config.to_dict()
    summary = skiptrain.train(config, ["train.optimizer.lr=0.01"], epochs=1, run_dir=tmp_path / "run", quiet=True,
                              limit_batches=1)
    assert summary["epochs"] == 1 and config.to_dict() == before and config.train["epochs"] == 2
    saved = json.loads(json.dumps(skiptrain.checkpoint.read(tmp_path / "run").config))
    assert saved["train"]["epochs"] == 1 and saved["train"]["optimizer"]["lr"] == 0.01


def test_load_applies_overrides_to_a_copy_of_a_config():
    config = load_config(copy.deepcopy(TINY))
    loaded = api.load(config, ["train.epochs=7"])
    assert loaded.train["epochs"] == 7 and config.train["epochs"] == 2
    assert api.load({"name": "bare", "input": [4], "layers": [{"type": "linear", "out_features": 2}]}).model["name"] == "bare"


def test_restore_evaluate_and_the_runs_own_test_result_agree(tmp_path):
    run = tmp_path / "run"
    summary = skiptrain.train(copy.deepcopy(TINY), run_dir=run, quiet=True)
    restored = skiptrain.restore(run)
    assert not restored.model.training and restored.state.epoch == 2 and restored.data["task"] == "classification"
    assert restored.plan.params == summary["params"]
    model, config = skiptrain.load_checkpoint(run)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.model.state_dict().values()))
    assert config.model["name"] == "tiny"
    assert api.evaluate(run)["acc"] == pytest.approx(summary["test_acc"])


def test_resume_reads_the_checkpoints_config_once_and_continues(tmp_path):
    run = tmp_path / "run"
    skiptrain.train(copy.deepcopy(TINY), run_dir=run, quiet=True)
    summary = skiptrain.train(resume=run, epochs=3, quiet=True)
    assert summary["epochs"] == 3 and skiptrain.checkpoint.read(run).epoch == 3


def test_nothing_to_train_is_a_config_error():
    with pytest.raises(skiptrain.ConfigError, match="nothing to train"):
        skiptrain.train()


def test_nproc_relaunches_with_every_option_the_user_gave(tmp_path, monkeypatch, write_yaml):
    """The relaunch is rebuilt from the parsed parameters, so a new option cannot be forgotten."""
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, args, restarts=0: launched.append((nproc, args, restarts)) or 0)
    monkeypatch.setattr(distributed, "check_gpus", lambda processes, device: None)
    config = write_yaml(TINY_RESIDUAL)
    result = invoke("train", config, "--nproc", 2, "--run-dir", tmp_path / "r", "--epochs", 3, "--set", "train.seed=1",
                    "--set", "data.batch_size=16", "-q", "--limit-batches", 2, "--device", "cpu", "--max-restarts", 1)
    assert result.exit_code == 0, result.output
    nproc, args, restarts = launched[0]
    assert nproc == 2 and args[0] == str(config) and "--nproc" not in args and "--max-restarts" not in args
    assert restarts == 1
    pairs = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--") and args[i] != "--quiet"}
    assert pairs["--run-dir"] == str(tmp_path / "r") and pairs["--epochs"] == "3" and pairs["--device"] == "cpu"
    assert pairs["--limit-batches"] == "2" and "--quiet" in args and "--force" not in args
    assert [args[i + 1] for i, a in enumerate(args) if a == "--set"] == ["train.seed=1", "data.batch_size=16"]


def test_eval_of_a_loose_checkpoint_writes_nothing_around_it(tmp_path):
    """Issue 15: `eval X.pt` wrote confusion_test.png into the checkpoint's grandparent folder."""
    run = tmp_path / "run"
    skiptrain.train(copy.deepcopy(TINY), run_dir=run, quiet=True, epochs=1)
    loose = tmp_path / "elsewhere" / "models" / "best_model.pt"
    loose.parent.mkdir(parents=True)
    loose.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = invoke("eval", loose, "--json")
    assert result.exit_code == 0, result.output
    assert "confusion_png" not in json.loads(result.output)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    in_run = json.loads(invoke("eval", run, "--json").output)
    assert in_run["confusion_png"] == str(run / "confusion_test.png") and (run / "confusion_test.png").is_file()
