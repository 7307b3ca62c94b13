"""The training loop's promises (issue 15): only finite weights are ever checkpointed, a run that
trained nothing never exits 0, signals wait for a checkpoint write and are honoured everywhere in
an epoch, an orphan temporary file is cleared, and sync_bn without CUDA is refused before launch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from .conftest import invoke

MODEL = """
model:
  name: guard
  input: [1, 8, 8]
  layers:
    - {id: stem, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
    - {type: relu}
    - {id: body, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 2}
  skips: [{from: stem, to: body}]
"""
# Epoch 1 trains normally (lr * weight_decay = 1e-2); the step schedule then multiplies lr by 1e45, so
# the first update of epoch 2 (1e5 * 1e38 * w) makes every decayed weight infinite in float32, while
# the loss of that batch, computed before the update, is finite.
EXPLODES_IN_EPOCH_2 = MODEL + """
data: {dataset: synthetic, num_samples: SAMPLES, num_classes: 2, batch_size: 16}
train:
  epochs: 2
  optimizer: {name: sgd, lr: 1.0e-40, weight_decay: 1.0e+38}
  scheduler: {name: step, step_size: 1, gamma: 1.0e+45}
  device: cpu
  on_nan: POLICY
"""


def explodes_in_epoch_2(samples: int, policy: str) -> str:
    return EXPLODES_IN_EPOCH_2.replace("SAMPLES", str(samples)).replace("POLICY", policy)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["model"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def checkpoints_are_finite(run: Path) -> None:
    for file in (run / "checkpoints").glob("*.pt"):
        assert finite(file), f"{file.name} holds non-finite weights"


def test_skip_batch_stops_when_an_update_breaks_the_weights(write_yaml, tmp_path):
    """Before: the broken update was skipped over batch after batch, saved as last.pt and best.pt, exit 0."""
    config = write_yaml(explodes_in_epoch_2(64, "skip_batch"))
    result = invoke("train", config, "--run-dir", tmp_path / "r", "-q")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    last = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    checkpoints_are_finite(tmp_path / "r")
    assert f"weights non-finite at step {last['step'] + 1} (epoch 2)" in result.stderr  # epoch 2's first
    assert "`stem.weight` is the first tensor" in result.stderr and "grad_clip" in result.stderr


def test_weights_broken_by_an_epochs_last_update_are_never_checkpointed(write_yaml, tmp_path):
    """One batch per epoch: the update that breaks the weights is the epoch's last, its loss was finite."""
    for policy in ("stop", "skip_batch"):
        config = write_yaml(explodes_in_epoch_2(16, policy), f"{policy}.yaml")
        result = invoke("train", config, "--run-dir", tmp_path / policy, "-q")
        assert result.exit_code == 1, (policy, result.output)
        assert "non-finite" in result.stderr and "step 2" in result.stderr, result.stderr
        checkpoints_are_finite(tmp_path / policy)
        assert torch.load(tmp_path / policy / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1


def test_a_run_whose_every_batch_was_skipped_does_not_exit_0(write_yaml, tmp_path):
    """threshold sets every activation to 1e38: the head overflows, every loss is non-finite."""
    config = write_yaml(MODEL.replace("- {type: relu}", "- {type: threshold, threshold: 1.0e+30, value: 1.0e+38}")
                        + """
data: {dataset: synthetic, num_samples: 64, num_classes: 2, batch_size: 16}
train: {epochs: 2, device: cpu, on_nan: skip_batch}
""")
    result = invoke("train", config, "--run-dir", tmp_path / "r", "-q")
    assert result.exit_code == 1, result.output
    assert "every batch" in result.stderr and "epoch 1" in result.stderr
    assert not list(tmp_path.glob("r/checkpoints/*.pt"))


SLOW = """
import os, sys, time
import torch
import skiptrain.checkpoint as ck
import skiptrain.training.loop as loop
marker, calls = os.environ["MARKER"], {"save": 0, "evaluate": 0}
real_save, real_evaluate = torch.save, loop.evaluate
def slow(kind, real):
    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        calls[kind] += 1
        if calls[kind] == int(os.environ.get("SLOW_" + kind.upper(), "0")):
            open(marker, "w").close()
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                time.sleep(0.05)
        return result
    return wrapped
ck.torch.save = slow("save", real_save)
loop.evaluate = slow("evaluate", real_evaluate)
from skiptrain.cli import main
sys.argv = ["skiptrain", "train", *sys.argv[1:]]
main()
"""
SIGNALLED = MODEL + """
data: {dataset: synthetic, num_samples: 96, num_classes: 2, batch_size: 16}
train: {epochs: 2, device: cpu, deterministic: true, checkpoint_every_steps: 2}
"""


def start_slow(tmp_path: Path, run: str, **slow: int) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "c.yaml").write_text(SIGNALLED)
    marker = tmp_path / f"{run}.marker"
    env = {**ENV, "MARKER": str(marker), **{f"SLOW_{k.upper()}": str(v) for k, v in slow.items()}}
    process = subprocess.Popen([sys.executable, "-c", SLOW, "c.yaml", "--run-dir", run], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), process.communicate()
    return process, marker


def resume(run: Path):
    return invoke("train", "--resume", run, "--run-dir", run, "-q")


def test_two_sigterms_during_a_checkpoint_write_wait_for_it(tmp_path):
    """Before: the second SIGTERM killed the write (SIG_DFL), leaving no checkpoint and a .tmp."""
    process, _ = start_slow(tmp_path, "r", save=1)  # inside the first save's write (step 2)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "resume with: skiptrain train --resume r" in err and "Traceback" not in err
    checkpoints = tmp_path / "r" / "checkpoints"
    assert torch.load(checkpoints / "last.pt", weights_only=True)["step"] == 2
    assert not list(checkpoints.glob(".*.tmp"))
    orphan = checkpoints / ".last.pt.k1ll3d.tmp"  # what a SIGKILL during a write leaves
    orphan.write_bytes(b"PK\x03\x04 half")
    resumed = resume(tmp_path / "r")
    assert resumed.exit_code == 0, resumed.output
    assert not orphan.exists()
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 2


def test_sigint_during_the_last_validation_stops_with_130(tmp_path):
    """Before: the signal was only looked at between batches; the run finished and exited 0."""
    process, _ = start_slow(tmp_path, "r", evaluate=2)  # epoch 2 (the last) is validating
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "SIGINT" in err and "resume with" in err and "Traceback" not in err
    run = tmp_path / "r"
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert not (run / "summary.json").exists()
    resumed = resume(run)
    assert resumed.exit_code == 0, resumed.output
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


SYNC_BN = MODEL.replace("- {type: relu}", "- {type: batchnorm2d}\n    - {type: relu}", 1) + """
data: {dataset: synthetic, num_samples: 64, num_classes: 2, batch_size: 16}
train: {epochs: 1, device: cpu, sync_bn: true}
"""


def test_sync_bn_on_the_cpu_is_refused_before_launch(write_yaml, tmp_path):
    config = write_yaml(SYNC_BN)
    result = invoke("train", config, "--nproc", "2", "--run-dir", tmp_path / "r")
    assert result.exit_code == 1, result.output
    assert f"{config}:" in result.stderr and "sync_bn" in result.stderr and "CUDA" in result.stderr
    assert not (tmp_path / "r").exists()


def test_sync_bn_on_the_cpu_is_refused_under_torchrun_before_joining(write_yaml, tmp_path):
    """As torchrun starts each process (no rendezvous is reachable: joining would fail differently)."""
    config = write_yaml(SYNC_BN)
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "9", "TORCH_DIST_INIT_BARRIER": "0"}
    result = subprocess.run([sys.executable, "-m", "skiptrain", "train", config, "--run-dir", tmp_path / "r"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "sync_bn" in result.stderr and "CUDA" in result.stderr
    assert not (tmp_path / "r").exists()


def test_sync_bn_with_one_process_trains(write_yaml, tmp_path):
    """One process: BN statistics are already over the whole batch, so sync_bn changes nothing."""
    result = invoke("train", write_yaml(SYNC_BN), "--run-dir", tmp_path / "r", "-q")
    assert result.exit_code == 0, result.output


def _skip_on_rank(rank: int, folder: str) -> None:
    """One process of two: rank 0's loss is NaN, rank 1's is finite; write what skip() decided."""
    import types

    import torch.distributed as dist

    from skiptrain.training.nonfinite import NonFiniteWatch

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        run = types.SimpleNamespace(settings=types.SimpleNamespace(on_nan="skip_batch"), skipped=0,
                                    model=torch.nn.Linear(2, 2), step=0, batch=0, finite_at=0)
        watch = NonFiniteWatch(run, 1, torch.zeros(()))
        loss = torch.tensor(float("nan") if rank == 0 else 1.0)
        Path(folder, f"rank{rank}").write_text(str(watch.skip(loss)))
    finally:
        dist.destroy_process_group()


def test_skip_batch_skips_on_every_rank_when_one_ranks_loss_is_not_finite(tmp_path):
    """Before: only the rank with the NaN skipped its backward, and the other ranks waited in DDP's
    gradient all-reduce for ever (a hang under --nproc)."""
    torch.multiprocessing.spawn(_skip_on_rank, args=(str(tmp_path),), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["True", "True"]
