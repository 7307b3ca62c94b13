"""torchrun's restarts under 2 gloo processes on CPU: a process killed mid-run costs nothing (the restarted
group continues from the run directory's last checkpoint, to the same weights bit for bit), and a process
that raises ends the whole job with its message, never a hang."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from .test_distributed import run as train, weights

CONFIG = """
model:
  name: restart
  input: [1, 8, 8]
  layers:
    - {id: stem, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: relu}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 4}
data: {dataset: synthetic, num_samples: 160, num_classes: 4, batch_size: 32, augment: [horizontal_flip]}
train:
  epochs: 2
  optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
  device: cpu
  deterministic: true
"""
STEPS_PER_EPOCH = 4  # 128 training samples, global batch 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("restart")
    (root / "c.yaml").write_text(CONFIG)
    straight = train("c.yaml", "--run-dir", "straight", "--nproc", 2, "-q", cwd=root)
    assert straight.returncode == 0, straight.stderr
    return root


def test_a_killed_worker_costs_nothing(root):
    """Rank 1 SIGKILLs itself in epoch 2 (after epoch 1's checkpoint); torchrun restarts the group, which
    continues from last.pt: the final weights are the uninterrupted run's, bit for bit."""
    marker = root / "killed.once"
    killed = train("c.yaml", "--run-dir", "killed", "--nproc", 2, "--max-restarts", 1, "-q", cwd=root,
                   fault=f"1:{STEPS_PER_EPOCH + 2}:kill:{marker}")
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert marker.exists()  # the kill happened
    straight, again = weights(root / "straight"), weights(root / "killed")
    assert straight.keys() == again.keys()
    for key in straight:
        assert torch.equal(again[key], straight[key]), key
    rows = [json.loads(line) for line in (root / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # epoch 2 once: the killed attempt had not written it


def test_a_rank_that_raises_ends_the_job_with_its_message(root):
    marker = root / "raised.once"
    started = time.perf_counter()
    failed = train("c.yaml", "--run-dir", "raised", "--nproc", 2, "-q", cwd=root, fault=f"1:2:raise:{marker}",
                   timeout=120)
    assert failed.returncode != 0
    assert "a fault injected on rank 1 after step 2" in failed.stderr
    assert "rank 0 lost another process of the group" in failed.stderr  # one line, not a gloo traceback
    assert "Traceback" not in failed.stderr
    assert time.perf_counter() - started < 120  # before: the raising rank waited at the exit barrier forever


@pytest.mark.slow
def test_plain_torchrun_restarts_continue_too(root):
    """torchrun itself, its store shared with the workers (the default): the restarted attempt gets its own
    prefix in that store, and continues from last.pt."""
    marker = root / "torchrun.once"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SKIPTRAIN_TEST_FAULT": f"0:{STEPS_PER_EPOCH + 1}:kill:{marker}"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "--max-restarts", "1", "-m", "skiptrain", "train", "c.yaml", "--run-dir", "plain", "-q"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists() and "continues from plain's last checkpoint" in done.stderr
    straight, again = weights(root / "straight"), weights(root / "plain")
    assert all(torch.equal(again[key], straight[key]) for key in straight)


@pytest.mark.slow
def test_a_kill_before_the_first_checkpoint_starts_the_run_again(root):
    marker = root / "early.once"
    early = train("c.yaml", "--run-dir", "early", "--nproc", 2, "--max-restarts", 1, "-q", cwd=root,
                  fault=f"1:2:kill:{marker}")
    assert early.returncode == 0, early.stderr[-3000:]
    assert marker.exists()
    straight, again = weights(root / "straight"), weights(root / "early")
    assert all(torch.equal(again[key], straight[key]) for key in straight)


def test_only_the_jobs_own_run_is_continued_after_a_restart(tmp_path, monkeypatch):
    """restart_resume, without processes: which run directory a restarted process continues."""
    from skiptrain.distributed import restart_resume
    from skiptrain.training.rundir import RunDir

    for key in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    RunDir.create(".", "r", str(tmp_path / "mine"))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    RunDir.create(".", "r", str(tmp_path / "theirs"))
    for run in ("mine", "theirs"):
        (tmp_path / run / "checkpoints" / "last.pt").write_bytes(b"")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    mine, theirs = str(tmp_path / "mine"), str(tmp_path / "theirs")
    assert restart_resume(mine, None, False) == (mine, False)  # this job's run: from its last checkpoint
    assert restart_resume(theirs, None, False) == (None, False)  # another job's: as asked (refused as usual)
    assert restart_resume(None, "x", False) == ("x", False)
    (tmp_path / "mine" / "checkpoints" / "last.pt").unlink()
    assert restart_resume(mine, None, False) == (None, True)  # killed before its first checkpoint: again
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert restart_resume(mine, None, False) == (None, False)  # the first attempt: nothing changes
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default id names no job
    assert restart_resume(theirs, None, False) == (None, False)
