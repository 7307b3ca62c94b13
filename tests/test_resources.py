"""Resources: `export`, `gradflow` and `train` refuse, before allocating, a model or an input that cannot
fit in memory, with the figure (issue 15). Memory is pinned with a patched `available_memory` so the
tests behave the same on a laptop and on a 1 TB server; each would end in an allocator traceback
(or allocate 100 GB) without the check."""
from __future__ import annotations

import pytest

from tests.conftest import TINY_RESIDUAL, invoke

GIB = 2**30

BIG = """
model:
  name: big
  input: [200000]
  layers:
    - {id: fc, type: linear, out_features: 125000}
data: {dataset: synthetic, num_samples: 8, num_classes: 4, batch_size: 4}
train: {epochs: 1, optimizer: {name: sgd, lr: 0.01}, device: cpu}
"""

WIDE = """
model:
  name: wide
  input: [3, 40000, 40000]
  layers:
    - {id: c, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 4}
data: {dataset: synthetic, num_samples: 8, num_classes: 4, batch_size: 4}
train: {epochs: 1, optimizer: {name: sgd, lr: 0.01}, device: cpu}
"""


@pytest.fixture
def sixteen_gib(monkeypatch):
    """Every memory check sees 16 GiB available, on any machine."""
    from skiptrain.training import setup

    monkeypatch.setattr(setup, "available_memory", lambda device: 16 * GIB)


def refused(*args) -> str:
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.stderr


def test_export_of_25e9_parameters_is_refused_before_allocating(sixteen_gib, write_yaml, tmp_path):
    out = tmp_path / "big.onnx"
    message = refused("export", write_yaml(BIG), "-o", out)
    assert "25,000,125,000 parameters" in message and "93.1 GiB" in message and "16.0 GiB available" in message
    assert not out.exists()


def test_export_of_a_40000_square_input_is_refused_with_the_activation_figure(sixteen_gib, write_yaml, tmp_path):
    out = tmp_path / "wide.onnx"
    message = refused("export", write_yaml(WIDE), "-o", out)
    # batch 3 (verification) x ([3, 40000, 40000] input + [4, 40000, 40000] output) x 4 bytes
    assert "125.2 GiB" in message and "activations for a forward at batch 3" in message, message
    assert "--batch 1 --no-verify" in message
    message = refused("export", write_yaml(WIDE), "-o", out, "--batch", "1", "--no-verify")
    assert "at batch 1" in message and "41.7 GiB" in message, message
    assert not out.exists()


def test_gradflow_of_25e9_parameters_is_refused(sixteen_gib, write_yaml, tmp_path):
    message = refused("gradflow", write_yaml(BIG), "-o", tmp_path / "g.png")
    assert "25,000,125,000 parameters" in message and "GiB" in message


def test_train_counts_activations_and_says_how_much(sixteen_gib, write_yaml, tmp_path):
    message = refused("train", write_yaml(WIDE), "--run-dir", tmp_path / "run")
    assert "at least 41.7 GiB of activations" in message, message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_activation_bytes_is_a_lower_bound_of_a_real_forward():
    """The estimate must never exceed what a forward holds: input and output of the largest layer."""
    from skiptrain.api import check_model
    from skiptrain.training.setup import activation_bytes

    plan = check_model({"name": "m", "input": [3, 16, 16], "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "relu"},
        {"type": "global_avgpool"}, {"type": "linear", "out_features": 2}]})
    # the conv's input and output; the relu may run in place, so it counts once
    assert activation_bytes(plan, 1) == (3 + 8) * 16 * 16 * 4
    assert activation_bytes(plan, 5) == 5 * (3 + 8) * 16 * 16 * 4


def test_checkpoint_models_are_checked_before_they_are_built(write_yaml, tmp_path, monkeypatch):
    """`restore` (eval, export, predict of a run) checks the weights before building the model."""
    import numpy as np

    from skiptrain.training import setup

    run = tmp_path / "run"
    config = write_yaml(TINY_RESIDUAL.replace("epochs: 2", "epochs: 1"))
    assert invoke("train", config, "--run-dir", run, "-q").exit_code == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8), np.float32))
    monkeypatch.setattr(setup, "available_memory", lambda device: 1000)
    message = refused("predict", run, tmp_path / "x.npy")
    assert "building the checkpoint's model needs at least" in message and "parameters in fp32" in message
