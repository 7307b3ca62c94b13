"""Runs survive kill -9, signals, broken and full disks, bad numbers; nothing is lost or repeated."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import invoke

CONFIG = """
model:
  name: sturdy
  input: [1, 8, 8]
  layers:
    - {id: stem, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: relu}
    - {id: body, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: relu}
    - {type: dropout, p: 0.1}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 4}
  skips: [{from: stem, to: body}]
data: {dataset: synthetic, num_samples: 4800, num_classes: 4, batch_size: 16, augment: [horizontal_flip]}
train:
  epochs: 3
  optimizer: {name: adamw, lr: 3.0e-3}
  scheduler: {name: cosine, warmup_epochs: 1}
  device: cpu
  deterministic: true
  checkpoint_every_steps: 7
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def command(*args):
    return [sys.executable, "-m", "skiptrain", "train", *map(str, args)]


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def epochs_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliable")
    (root / "c.yaml").write_text(CONFIG)
    started = time.monotonic()
    done = subprocess.run(command("c.yaml", "--run-dir", "straight", "-q"), cwd=root, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (root / "seconds").write_text(str(time.monotonic() - started))  # kills are timed against this
    return root


def assert_same_as_reference(root: Path, run: str) -> None:
    expected, got = final_weights(root / "straight"), final_weights(root / run)
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} differs after interruptions"
    assert epochs_logged(root / run) == [1, 2, 3]


def test_kill_9_at_random_moments_then_resume_is_bitwise_identical(reference):
    rng = random.Random(7)
    run, kills = reference / "killed", 0
    duration = float((reference / "seconds").read_text())  # one uninterrupted run, start-up included
    args = command("c.yaml", "--run-dir", "killed", "-q")
    for attempt in range(8):
        process = subprocess.Popen(args, cwd=reference, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            left = (3 - len(epochs_logged(run))) / 3 if (run / "metrics.jsonl").exists() else 1.0
            # a resumed run has less left to do: scale the moment of the kill to what is left
            process.wait(timeout=rng.uniform(0.4, 0.9) * duration * max(left, 0.34) if attempt < 6 else 300)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
        if process.returncode == 0:
            break
        if (run / "checkpoints").exists() and any((run / "checkpoints").glob("*.pt")):
            args = command("--resume", "killed", "--run-dir", "killed", "-q")
        else:  # killed before the first checkpoint: start again
            args = command("c.yaml", "--run-dir", "killed", "-q", "--force")
    assert process.returncode == 0, process.stderr.read()
    assert kills >= 2
    assert_same_as_reference(reference, "killed")


DIE_DURING_SAVE = """
import os, sys, torch
import skiptrain.checkpoint as ck
real_save, calls = torch.save, [0]
def dying_save(obj, f, *a, **k):
    calls[0] += 1
    if calls[0] == int(os.environ["DIE_AT_SAVE"]):
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        os._exit(137)
    return real_save(obj, f, *a, **k)
ck.torch.save = dying_save
from skiptrain.cli import main
sys.argv = ["skiptrain", "train", *sys.argv[1:]]
main()
"""


def test_kill_during_a_checkpoint_write_loses_nothing(reference):
    for die_at in (3, 4):
        env = {**ENV, "DIE_AT_SAVE": str(die_at)}
        name = f"dying{die_at}"
        died = subprocess.run([sys.executable, "-c", DIE_DURING_SAVE, "c.yaml", "--run-dir", name, "-q"],
                              cwd=reference, env=env, capture_output=True, text=True, timeout=300)
        assert died.returncode == 137
        leftovers = list((reference / name / "checkpoints").glob(".*.tmp"))
        assert leftovers, "the half-written checkpoint should be a temporary file, never last.pt"
        resumed = subprocess.run(command("--resume", name, "--run-dir", name, "-q"), cwd=reference, env=ENV,
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert_same_as_reference(reference, name)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_checkpoints_and_says_how_to_resume(reference, signum, code):
    name = f"signal{code}"
    process = subprocess.Popen(command("c.yaml", "--run-dir", name), cwd=reference, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = reference / name / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline:  # stop it inside epoch 2
        time.sleep(0.02)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert f"resume with: skiptrain train --resume {name}" in err and "Traceback" not in err
    state = torch.load(reference / name / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] >= 1
    resumed = subprocess.run(command("--resume", name, "--run-dir", name, "-q"), cwd=reference, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as_reference(reference, name)


def test_a_corrupted_last_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference / "straight", run)
    last = run / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle: only the checksum sees it
    last.write_bytes(bytes(data))
    result = invoke("eval", last)
    assert result.exit_code == 1 and "corrupted" in result.stderr
    previous = torch.load(run / "checkpoints" / "previous.pt", weights_only=True)
    resumed = invoke("train", "--resume", run, "--run-dir", run, "-q")
    assert resumed.exit_code == 0, resumed.output
    assert "previous.pt instead" in resumed.stderr
    assert previous["step"] < torch.load(last, weights_only=True)["step"]


def test_a_full_disk_keeps_the_previous_checkpoint(reference, tmp_path, monkeypatch):
    import errno
    import shutil

    import skiptrain.checkpoint as ck

    run = tmp_path / "run"
    shutil.copytree(reference / "straight", run)
    before = (run / "checkpoints" / "last.pt").read_bytes()

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    result = invoke("train", "--resume", run, "--run-dir", run, "--epochs", "4", "-q")
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr and "previous checkpoint is intact" in result.stderr
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert not list((run / "checkpoints").glob(".*.tmp"))


@pytest.mark.parametrize("policy", ["stop", "skip_batch"])
def test_non_finite_loss(write_yaml, tmp_path, policy):
    config = CONFIG.replace("lr: 3.0e-3", "lr: 1.0e+6").replace("epochs: 3", "epochs: 1") \
        + f"  on_nan: {policy}\n"
    result = invoke("train", write_yaml(config), "--run-dir", tmp_path / "r", "-q")
    if policy == "stop":
        assert result.exit_code == 1
        assert "the loss became" in result.stderr and "learning rate" in result.stderr and "step" in result.stderr
    else:
        assert result.exit_code in (0, 1)
        if result.exit_code == 1:  # every batch was bad: it stops after 100 skips and says so
            assert "skipped" in result.stderr
        else:
            assert json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])["skipped_batches"] > 0


def test_a_model_too_big_for_the_machine_is_refused_before_allocating(write_yaml, tmp_path):
    huge = """
        model: {input: [65536], layers: [{type: linear, out_features: 65536}, {type: linear, out_features: 65536},
                                         {type: linear, out_features: 65536}, {type: linear, out_features: 4}]}
        data: {dataset: synthetic, num_samples: 16, num_classes: 4}
        train: {device: cpu}
    """
    result = invoke("train", write_yaml(huge), "--run-dir", tmp_path / "r", "-q")
    assert result.exit_code == 1
    assert "GiB" in result.stderr and "12,885," in result.stderr
