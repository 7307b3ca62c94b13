"""DDP on CPU with gloo and 2 processes: same weights as one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

CONFIG = """
model:
  name: ddp
  input: [1, 8, 8]
  layers:
    - {id: stem, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: relu}
    - {id: body, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: relu}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 4}
  skips:
    - {from: stem, to: body}
data: {dataset: synthetic, num_samples: 160, num_classes: 4, batch_size: 32, augment: [horizontal_flip]}
train:
  epochs: 2
  optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
  device: cpu
  deterministic: true
"""


def run(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "skiptrain", "train", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    (root / "c.yaml").write_text(CONFIG)
    single = run("c.yaml", "--run-dir", "single", "-q", cwd=root)
    assert single.returncode == 0, single.stderr
    double = run("c.yaml", "--run-dir", "double", "--nproc", "2", "-q", cwd=root)
    assert double.returncode == 0, double.stderr + double.stdout
    return root


def test_two_processes_match_one_process(runs):
    single, double = weights(runs / "single"), weights(runs / "double")
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-5, atol=1e-6)
    rows = [json.loads(line) for line in (runs / "double" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # written once, by rank 0
    state = torch.load(runs / "double" / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2


def test_resume_under_ddp_continues(runs):
    first = run("c.yaml", "--run-dir", "resumed", "--nproc", "2", "--epochs", "1", "-q", cwd=runs)
    assert first.returncode == 0, first.stderr
    second = run("--resume", "resumed", "--run-dir", "resumed", "--nproc", "2", "--epochs", "2", "-q", cwd=runs)
    assert second.returncode == 0, second.stderr
    straight, resumed = weights(runs / "double"), weights(runs / "resumed")
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


def test_a_batch_that_does_not_divide_is_a_clear_error(runs):
    bad = run("c.yaml", "--run-dir", "bad", "--nproc", "2", "--set", "data.batch_size=33", "-q", cwd=runs)
    assert bad.returncode != 0
    assert "batch" in bad.stderr and "Traceback" not in bad.stderr.split("data error")[0][-200:]


def test_more_processes_than_gpus_is_named_before_launching(monkeypatch):
    from skiptrain.distributed import check_gpus
    from skiptrain.errors import SkiptrainError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SkiptrainError, match="2 processes need 2 GPUs, but this machine has 1") as info:
        check_gpus(2, "auto")
    assert "--nproc 1" in info.value.hint and "--device cpu" in info.value.hint
    check_gpus(1, "cuda")  # one process per GPU is fine
    check_gpus(4, "cpu")  # gloo processes on the CPU need no GPU


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_launch(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG.replace("batch_size: 32", "batch_size: 33"))
    result = run("c.yaml", "--run-dir", "r", "--nproc", "2", cwd=tmp_path)
    assert result.returncode == 1
    assert "c.yaml:14:" in result.stderr and "batch_size 33 does not split evenly over 2 processes" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()
