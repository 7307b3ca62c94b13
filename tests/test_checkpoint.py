"""The checkpoint format: one type owns its keys, checks them on every read and restores them in order."""
from __future__ import annotations

import pytest
import torch
import yaml

import skiptrain
from skiptrain import checkpoint
from skiptrain.checkpoint import KEYS, TrainingState
from skiptrain.errors import CheckpointError
from skiptrain.training.optim import build_optimizer

from .conftest import ROOT, TINY_RESIDUAL, invoke

TINY = yaml.safe_load(TINY_RESIDUAL.replace("epochs: 2", "epochs: 1"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real run directory and its last checkpoint as loaded from disk."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    skiptrain.train(TINY, run_dir=run, quiet=True)
    return run, torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _write(tmp_path, state) -> str:
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return str(path)


def test_a_saved_checkpoint_holds_exactly_the_declared_keys(trained):
    run, raw = trained
    assert set(raw) == set(KEYS)
    state = checkpoint.read(run)
    assert isinstance(state, TrainingState) and state.epoch == 1 and state.path.endswith("last.pt")
    assert state.to_dict().keys() == raw.keys()


@pytest.mark.parametrize("key", KEYS)
def test_a_missing_key_is_a_checkpoint_error(trained, tmp_path, key):
    state = {k: v for k, v in trained[1].items() if k != key}
    with pytest.raises(CheckpointError) as info:
        checkpoint.read(_write(tmp_path, state))
    assert (f"lacks {key}" in info.value.message) or "is not a skiptrain checkpoint" in info.value.message


@pytest.mark.parametrize("key, value", [("epoch", "1"), ("step", -1), ("optimizer", {"state": {}}), ("rng", {}),
                                        ("partial", [0.0]), ("world_size", 0), ("model", {"w": [1.0]})])
def test_a_malformed_key_is_a_checkpoint_error(trained, tmp_path, key, value):
    with pytest.raises(CheckpointError, match=f"malformed `{key}`"):
        checkpoint.read(_write(tmp_path, {**trained[1], key: value}))


@pytest.mark.parametrize("key", ["optimizer", "rng"])
def test_resume_without_optimizer_or_rng_is_one_message_not_a_key_error(trained, tmp_path, key):
    """Defect 8: the loop indexes these directly; a file without them ended in a raw KeyError."""
    path = _write(tmp_path, {k: v for k, v in trained[1].items() if k != key})
    result = invoke("train", "--resume", path, "--run-dir", tmp_path / "again")
    assert result.exit_code == 1, result.output
    assert f"lacks {key}" in result.output and "Traceback" not in result.output


def test_weights_that_do_not_fit_the_config_are_a_checkpoint_error(trained, tmp_path):
    raw = dict(trained[1])
    raw["model"] = {k: torch.zeros(2, *v.shape[1:]) if v.dim() else v for k, v in raw["model"].items()}
    with pytest.raises(CheckpointError, match="does not match its config: 15 tensors differ in shape"):
        skiptrain.load_checkpoint(_write(tmp_path, raw))


def test_restore_puts_back_model_optimizer_and_every_rng_stream(trained):
    run, raw = trained
    state = checkpoint.read(run)
    model = skiptrain.build_model(state.config)
    optimizer = build_optimizer(model, state.settings["optimizer"])
    torch.manual_seed(12345)
    state.restore(model, optimizer)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in raw["model"].items())
    assert optimizer.state_dict()["state"].keys() == raw["optimizer"]["state"].keys()
    assert torch.equal(torch.get_rng_state(), raw["rng"]["torch"])


def test_the_documented_key_list_is_the_type_itself():
    page = (ROOT / "docs" / "checkpoints.md").read_text()
    assert checkpoint.key_table() in page
    assert all(f"| `{key}` |" in page for key in KEYS)
