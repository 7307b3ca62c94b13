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


def run(*args, cwd, fault: str | None = None, timeout: float = 300):
    """`skiptrain train ARGS` in a fresh process, outside any launcher; ``fault``: SKIPTRAIN_TEST_FAULT."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT", "SKIPTRAIN_TEST_FAULT"):
        env.pop(key, None)
    if fault:
        env["SKIPTRAIN_TEST_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "skiptrain", "train", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


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


# Evaluation sharded over ranks: each rank measures a contiguous run of whole batches and the tasks' sums
# are gathered; every metric must be the one-process figure exactly (same thread count: torchrun's 1).
EVAL_WORKER = """
import json, sys
from skiptrain import api, distributed
from skiptrain.data import load_data
from skiptrain.evaluate import evaluate

world = distributed.join("cpu")
found = {}
for run in sys.argv[2:]:
    restored = api.restore(run, device="cpu")
    meta, task = restored.model.meta["skiptrain"], restored.data["task"]
    data = load_data(restored.config.data, input_shape=tuple(meta["input_shape"]), input_dtype=meta["input_dtype"],
                     task=task, device="cpu", seed=0)
    for split in ("val", "test"):
        batches = getattr(data, split)
        sharded = evaluate(restored.model, distributed.shard_batches(world, batches), task, data.num_classes,
                           world=world)
        whole = evaluate(restored.model, batches.epoch(0), task, data.num_classes)
        mine = distributed.shard(world, len(batches))
        found[f"{run}/{split}"] = {"sharded": sharded, "whole": whole, "batches": len(batches),
                                   "mine": [mine.start, mine.stop]}
distributed.leave(world)
with open(f"{sys.argv[1]}.{world.rank}.json", "w") as f:
    json.dump(found, f)
"""

EVAL_CONFIGS = {
    "cls": """
model:
  input: [1, 6, 6]
  layers: [{type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}, {type: relu}, {type: global_avgpool},
           {type: linear, out_features: 10}]
data: {dataset: synthetic, num_samples: 420, num_classes: 10, batch_size: 8, val_fraction: 0.12}
train: {epochs: 1, device: cpu, optimizer: {name: sgd, lr: 0.1}}
""",
    "seg": """
model:
  input: [1, 6, 6]
  layers: [{type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}, {type: relu},
           {type: conv2d, out_channels: 3, kernel_size: 1}]
data: {dataset: synthetic, num_samples: 420, num_classes: 3, batch_size: 8, val_fraction: 0.12}
train: {task: segmentation, epochs: 1, device: cpu, optimizer: {name: sgd, lr: 0.1}}
""",
    "reg": """
model: {input: [6], layers: [{type: linear, out_features: 8}, {type: relu}, {type: linear, out_features: 2}]}
data: {dataset: synthetic, num_samples: 420, num_classes: 2, batch_size: 8, val_fraction: 0.12}
train: {task: regression, epochs: 1, device: cpu, optimizer: {name: sgd, lr: 0.1}}
""",
}


def torchrun(*args, cwd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_sharded_evaluation_equals_one_process_exactly(tmp_path):
    from skiptrain import api

    for name, text in EVAL_CONFIGS.items():  # the checkpoints, trained here (a launch each would cost seconds)
        (tmp_path / f"{name}.yaml").write_text(text)
        api.train(tmp_path / f"{name}.yaml", run_dir=tmp_path / name, quiet=True)
    (tmp_path / "worker.py").write_text(EVAL_WORKER)
    result = torchrun("--standalone", "--nproc_per_node", 2, "worker.py", "out", *EVAL_CONFIGS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{rank}.json").read_text()) for rank in (0, 1)]
    for key in ranks[0]:
        for rank in ranks:
            assert rank[key]["sharded"] == rank[key]["whole"], key  # every metric, bit for bit
        shares = [range(*rank[key]["mine"]) for rank in ranks]
        assert len(shares[0]) and len(shares[1]) and shares[0].stop == shares[1].start  # disjoint, both busy
        assert shares[1].stop == ranks[0][key]["batches"]  # together the whole split
    whole = ranks[0]["cls/test"]["whole"]
    assert {"loss", "acc", "top5", "per_class_acc", "confusion"} <= set(whole)
    assert sum(map(sum, whole["confusion"])) == 42 and ranks[0]["cls/val"]["batches"] == 7  # 6 + a partial one
    assert {"miou", "pixel_acc", "per_class_iou", "confusion"} <= set(ranks[0]["seg/test"]["whole"])


def test_the_loop_evaluates_on_every_rank_with_one_process_figures(runs):
    """The 2-process run's test and last validation figures are a 1-process evaluation of its last.pt
    (its test split is one batch: rank 1 measures nothing and still takes part)."""
    from skiptrain import api

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun workers
    try:
        test = api.evaluate(runs / "double", "test", device="cpu")
        val = api.evaluate(runs / "double", "val", device="cpu")
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((runs / "double" / "summary.json").read_text())
    last = json.loads((runs / "double" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (summary["test_loss"], summary["test_acc"]) == (test["loss"], test["acc"])
    assert (last["val_loss"], last["val_acc"]) == (val["loss"], val["acc"])


def test_two_agents_on_one_machine_act_as_two_nodes(runs):
    """Two torchrun agents of one process each, meeting at a c10d rendezvous on 127.0.0.1 only, train as one
    agent of 2 processes does. Neither agent sets OMP_NUM_THREADS (torchrun does only for --nproc_per_node > 1):
    each process must still take only its share of the cores (all of them each made an epoch 20x slower)."""
    import socket

    with socket.socket() as probe:  # a free port on the loopback interface
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    for key in ("OMP_NUM_THREADS", "WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
               "-m", "skiptrain", "train", "c.yaml", "--run-dir", "nodes"]
    agents = [subprocess.Popen(command, cwd=runs, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outputs = [agent.communicate(timeout=300) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(err[-2000:] for _, err in outputs)
    line = next(line for out, _ in outputs for line in out.splitlines() if "x 2 processes" in line)
    threads = int(line.split(" of ")[-1].split()[0])
    cores = len(os.sched_getaffinity(0))
    assert threads == 1 or 2 * threads <= cores, line
    one, two = [[json.loads(r)["train_loss"] for r in (runs / name / "metrics.jsonl").read_text().splitlines()]
                for name in ("double", "nodes")]
    assert two == pytest.approx(one, rel=1e-6, abs=0)
    single, nodes = weights(runs / "double"), weights(runs / "nodes")
    for key in single:
        torch.testing.assert_close(nodes[key], single[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("task, shape, classes", [("classification", (10,), 10), ("segmentation", (3, 4, 4), 3),
                                                  ("regression", (2,), None), ("language_model", (5, 7), 7)])
def test_metrics_merged_over_shards_equal_one_pass(task, shape, classes):
    """Without processes: the tasks' state() of three shards (one empty), merged, is the one-pass summary."""
    from skiptrain.tasks import get_task

    gen = torch.Generator().manual_seed(0)
    batches = []
    for size in (8, 8, 8, 3):
        out = torch.randn(size, *shape, generator=gen) * 3
        if task == "regression":
            target = torch.randn(size, *shape, generator=gen)
        elif task == "language_model":
            target = torch.randint(0, classes, (size, shape[0]), generator=gen)
        else:
            target = torch.randint(0, classes, (size, *shape[1:]), generator=gen)
        batches.append((out, target))
    whole = get_task(task).metrics(classes)
    for out, target in batches:
        whole.update(out, target)
    shards = [get_task(task).metrics(classes) for _ in range(3)]
    for shard, part in zip(shards, (batches[:1], [], batches[1:])):
        for out, target in part:
            shard.update(out, target)
    states = [shard.state() for shard in shards]
    merged = shards[1]
    merged.merge(states)
    assert merged.summary() == whole.summary()


def test_a_config_error_is_named_once_before_launch(tmp_path):
    """Not once per process between torchrun's lines: `skiptrain validate`'s checks run before launching."""
    (tmp_path / "c.yaml").write_text(CONFIG.replace("batch_size: 32,", "batch_size: 32, batch_sise: 4,"))
    result = run("c.yaml", "--run-dir", "r", "--nproc", "2", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("unknown key `batch_sise`") == 1 and "elastic" not in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()
