"""The CUDA path, for real: device selection, precisions, channels_last, compile, exact resume,
export and eval of a GPU-trained run. Skipped where no GPU is present (CI); run on a GPU
machine with ``pytest tests/test_cuda.py``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import invoke

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CONFIG = """
model:
  name: gpu
  input: [3, 16, 16]
  layers:
    - {id: stem, type: conv2d, out_channels: 16, kernel_size: 3, padding: 1, bias: false}
    - {type: batchnorm2d}
    - {type: relu}
    - {id: body, type: conv2d, out_channels: 32, kernel_size: 3, stride: 2, padding: 1, bias: false}
    - {id: bn, type: batchnorm2d}
    - {type: relu}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 4}
  skips:
    - {from: stem, to: bn}
data: {dataset: synthetic, num_samples: 512, num_classes: 4, batch_size: 64,
       augment: [{random_crop: {padding: 2}}, horizontal_flip]}
train:
  epochs: 2
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
  device: auto
"""


def train(write_yaml, run_dir, *extra, config: str = CONFIG):
    return invoke("train", write_yaml(config), "--run-dir", run_dir, *extra)


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")["model"]


def test_auto_device_picks_the_gpu_and_bf16(write_yaml, tmp_path):
    result = train(write_yaml, tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "device cuda" in result.output and "precision bfloat16" in result.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and 0 <= summary["test_acc"] <= 1
    # the checkpoint holds CPU-loadable tensors and a finite model
    assert all(torch.isfinite(v.float()).all() for v in weights(tmp_path / "r").values())


@pytest.mark.parametrize("precision,channels_last", [("fp32", False), ("fp32", True), ("bf16", True),
                                                     ("fp16", False)])
def test_precisions_and_memory_formats_train(write_yaml, tmp_path, precision, channels_last):
    config = CONFIG + f"  precision: {precision}\n  channels_last: {str(channels_last).lower()}\n"
    result = train(write_yaml, tmp_path / "r", config=config)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert (state["scaler"] is not None) == (precision == "fp16")


def test_deterministic_gpu_resume_is_exact(write_yaml, tmp_path):
    config = CONFIG + "  deterministic: true\n  precision: fp32\n"
    assert train(write_yaml, tmp_path / "straight", "-q", config=config).exit_code == 0
    assert train(write_yaml, tmp_path / "split", "-q", "--epochs", "1", config=config).exit_code == 0
    result = invoke("train", "--resume", tmp_path / "split", "--epochs", "2", "-q")
    assert result.exit_code == 0, result.output
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("mode", ["true", "reduce-overhead"])
def test_compile_on_gpu_saves_plain_keys(write_yaml, tmp_path, monkeypatch, mode):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    result = train(write_yaml, tmp_path / "r", "-q", config=CONFIG + f"  compile: {mode}\n")
    assert result.exit_code == 0, result.output
    state = weights(tmp_path / "r")
    assert not any(k.startswith("_orig_mod") for k in state)
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_gpu_run_evaluates_and_exports(write_yaml, tmp_path):
    assert train(write_yaml, tmp_path / "r", "-q", "--epochs", "1").exit_code == 0
    for device in ("cuda", "cpu"):
        result = invoke("eval", tmp_path / "r", "--json", "--device", device)
        assert result.exit_code == 0, result.output
        assert 0 <= json.loads(result.stdout)["accuracy"] <= 1
    result = invoke("export", tmp_path / "r", "--output", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").is_file() and "onnxruntime vs PyTorch" in result.output


def test_non_finite_loss_is_caught_on_gpu(write_yaml, tmp_path):
    # every activation before the head set to 1e38: the head's sums overflow, the loss is not finite
    config = CONFIG.replace("    - {id: head,", "    - {type: threshold, threshold: 1.0e+30, value: 1.0e+38}\n    - {id: head,") \
        + "  precision: fp32\n"
    result = train(write_yaml, tmp_path / "r", "-q", config=config)
    assert result.exit_code == 1
    assert "the loss became" in result.stderr and "step" in result.stderr
    if (tmp_path / "r" / "checkpoints" / "last.pt").exists():  # whatever was saved holds finite weights
        assert all(torch.isfinite(v.float()).all() for v in weights(tmp_path / "r").values())


def test_more_processes_than_gpus_is_a_clear_error(write_yaml, tmp_path):
    if torch.cuda.device_count() > 1:
        pytest.skip("this machine has several GPUs")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run([sys.executable, "-m", "skiptrain", "train", str(write_yaml(CONFIG)), "--run-dir",
                             str(tmp_path / "r"), "--nproc", "2", "-q"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "processes need 2 GPUs" in result.stderr and "Traceback" not in result.stderr
