"""Training end to end through the CLI, on small synthetic data: files, resume, eval, errors."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from skiptrain.training.optim import build_optimizer, lr_factor

from .conftest import TINY_RESIDUAL, invoke, straight_and_resumed


def test_train_writes_a_complete_run_directory(tiny_residual, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", tiny_residual, "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and str(run) in result.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds", "samples_per_s"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["test_acc"] <= 1.0 and "test_loss" in summary
    for name in ("config.yaml", "curves.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert state["epoch"] == 2 and "rng" in state and state["config"]["model"]["name"] == "tiny"
    assert not any(k.startswith("_orig_mod") for k in state["model"])


def test_resume_continues_exactly(tiny_residual, tmp_path):
    config = tiny_residual
    a, b, split = straight_and_resumed(config, tmp_path)  # the cosine schedule is the 2-epoch one
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_existing_run_dir_is_refused_without_force(write_yaml, tmp_path):
    config = write_yaml(TINY_RESIDUAL.replace("epochs: 2", "epochs: 1"))
    run = tmp_path / "run"
    assert invoke("train", config, "--run-dir", run, "-q").exit_code == 0
    result = invoke("train", config, "--run-dir", run, "-q")
    assert result.exit_code == 1 and "already holds a run" in result.stderr
    assert invoke("train", config, "--run-dir", run, "-q", "--force").exit_code == 0


def test_eval_on_a_run_and_a_checkpoint(write_yaml, tmp_path):
    run = tmp_path / "run"
    config = write_yaml(TINY_RESIDUAL.replace("epochs: 2", "epochs: 1"))
    assert invoke("train", config, "--run-dir", run, "-q").exit_code == 0
    result = invoke("eval", run, "--json")
    data = json.loads(result.stdout)
    assert {"accuracy", "top5", "loss", "per_class_acc"} <= set(data) or {"accuracy", "loss"} <= set(data)
    assert data["accuracy"] == data["acc"]
    assert len(data["confusion"]) == 4
    assert (run / "confusion_test.png").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert data["acc"] == pytest.approx(summary["test_acc"])
    text = invoke("eval", run / "checkpoints" / "best.pt", "--split", "val")
    assert text.exit_code == 0 and "acc" in text.output


class Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED_MARKER', 'w').write('x')",))


def test_unsafe_checkpoint_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"format": "skiptrain-checkpoint-1", "model": Exploit()}, handle)
    result = invoke("eval", path)
    assert result.exit_code == 1 and "refused" in result.stderr
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_broken_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    result = invoke("eval", path)
    assert result.exit_code == 1 and "not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("change, message", [
    (("out_features: 4", "out_features: 5"), "has 4 classes"),
    (("epochs: 2", "epochs: 2\n  optimiser: sgd"), "did you mean `optimizer`"),
    (("name: sgd", "name: sdg"), "did you mean `sgd`"),
    (("dataset: synthetic", "dataset: cifar10, root: NOWHERE"), "NOWHERE"),
    (("epochs: 2", "epochs: 2\n  compile: fast"), "modes: default, reduce-overhead"),
])
def test_bad_training_inputs_exit_1_with_a_message(write_yaml, tmp_path, change, message):
    result = invoke("train", write_yaml(TINY_RESIDUAL.replace(*change)), "--run-dir", tmp_path / "r", "-q")
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_segmentation_and_regression_tasks(write_yaml, tmp_path):
    seg = """
        model:
          input: [1, 16, 16]
          layers:
            - {id: enc, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
            - {type: maxpool2d, kernel_size: 2}
            - {id: up, type: conv_transpose2d, out_channels: 8, kernel_size: 2, stride: 2}
            - {type: conv2d, out_channels: 3, kernel_size: 1}
          skips: [{from: enc, to: up, merge: concat}]
        data: {dataset: synthetic, num_samples: 64, num_classes: 3, batch_size: 16}
        train: {task: segmentation, epochs: 1, device: cpu}
    """
    run = tmp_path / "seg"
    assert invoke("train", write_yaml(seg, "seg.yaml"), "--run-dir", run, "-q").exit_code == 0
    assert "test_miou" in json.loads((run / "summary.json").read_text())
    reg = """
        model: {input: [6], layers: [{type: linear, out_features: 16}, {type: relu}, {type: linear, out_features: 2}]}
        data: {dataset: synthetic, num_samples: 64, num_classes: 2, batch_size: 16}
        train: {task: regression, epochs: 1, device: cpu}
    """
    run = tmp_path / "reg"
    assert invoke("train", write_yaml(reg, "reg.yaml"), "--run-dir", run, "-q").exit_code == 0
    assert "test_loss" in json.loads((run / "summary.json").read_text())


def test_learning_rate_schedules():
    cosine = {"name": "cosine", "warmup_epochs": 1}
    assert lr_factor(0, 10, 5, cosine) == pytest.approx(0.1)
    assert lr_factor(9, 10, 5, cosine) == pytest.approx(1.0)
    assert lr_factor(49, 10, 5, cosine) < 0.01
    multistep = {"name": "multistep", "milestones": [2, 4], "gamma": 0.1}
    assert [round(lr_factor(e * 10, 10, 6, multistep), 6) for e in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    assert lr_factor(45, 10, 6, {"name": "step", "step_size": 2, "gamma": 0.5}) == 0.25
    onecycle = [lr_factor(s, 10, 10, {"name": "onecycle"}) for s in range(100)]
    assert onecycle.index(max(onecycle)) in range(28, 32) and onecycle[-1] < 1e-3 and onecycle[0] < 0.05
    assert lr_factor(50, 10, 10, {"name": "none"}) == 1.0


def test_weight_decay_skips_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, {"name": "adamw", "lr": 0.1, "weight_decay": 0.5})
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(model[0].weight)] == 0.5
    assert decays[id(model[0].bias)] == 0.0 and decays[id(model[1].weight)] == 0.0
    everything = build_optimizer(model, {"name": "adamw", "lr": 0.1, "weight_decay": 0.5, "decay_norm_and_bias": True})
    assert all(g["weight_decay"] == 0.5 for g in everything.param_groups)


from .conftest import EXAMPLES  # noqa: E402


@pytest.mark.parametrize("example", [e for e in EXAMPLES if "data:" in e.read_text()], ids=lambda p: p.name)
def test_every_shared_example_with_data_trains(example, tmp_path):
    """Each example trains unchanged (two batches of one epoch); CIFAR ones only when their data is there."""
    text = example.read_text()
    if "cifar" in text and not (example.parent / "data").exists() and not (tmp_path / "data").exists():
        result = invoke("train", example, "--run-dir", tmp_path / "run", "--epochs", "1", "--limit-batches", "2", "-q")
        assert result.exit_code == 1 and "data error" in result.stderr and "Traceback" not in result.output
        return
    result = invoke("train", example, "--run-dir", tmp_path / "run", "--epochs", "1", "--limit-batches", "2", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "summary.json").is_file()


def test_python_api_trains_and_loads_a_checkpoint(write_yaml, tmp_path):
    import skiptrain

    config = skiptrain.load_config(write_yaml(TINY_RESIDUAL.replace("epochs: 2", "epochs: 1")))
    summary = skiptrain.train(config, run_dir=str(tmp_path / "run"), quiet=True)
    model, loaded = skiptrain.load_checkpoint(tmp_path / "run")
    assert not model.training and loaded.model["name"] == "tiny"
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 4)
    assert summary["run_dir"] == str(tmp_path / "run")


def test_bf16_autocast_trains_on_cpu(write_yaml, tmp_path):
    config = TINY_RESIDUAL.replace("epochs: 2", "epochs: 1\n  precision: bf16")
    result = invoke("train", write_yaml(config), "--run-dir", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "precision bfloat16" in result.output


def test_deterministic_runs_are_bitwise_repeatable(write_yaml, tmp_path):
    config = write_yaml(TINY_RESIDUAL.replace("epochs: 2", "epochs: 1"))
    for name in ("a", "b"):
        assert invoke("train", config, "--run-dir", tmp_path / name, "-q").exit_code == 0
    a = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_compile_trains_and_saves_plain_keys(write_yaml, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    config = TINY_RESIDUAL.replace("epochs: 2", "epochs: 1\n  compile: true")
    result = invoke("train", write_yaml(config), "--run-dir", tmp_path / "r", "-q")
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "r/checkpoints/last.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in state["model"])


def test_the_result_line_reads_the_same_with_and_without_quiet(write_yaml, tmp_path):
    config = write_yaml(TINY_RESIDUAL.replace("epochs: 2", "epochs: 1"))
    loud = invoke("train", config, "--run-dir", tmp_path / "a")
    quiet = invoke("train", config, "--run-dir", tmp_path / "b", "-q")
    line = next(text for text in quiet.output.splitlines() if text.startswith("test accuracy: "))
    assert line in loud.output.splitlines()  # deterministic: the same figure, worded the same


def test_a_run_without_a_test_split_says_so(write_yaml, tmp_path):
    import numpy as np

    from .test_data import write_png

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(8):
            write_png(tmp_path / "images" / cls / f"{i}.png", rng.integers(0, 256, (8, 8, 3)))
    config = TINY_RESIDUAL.replace("input: [1, 8, 8]", "input: [3, 8, 8]") \
        .replace("out_features: 4", "out_features: 2") \
        .replace("data: {dataset: synthetic, num_samples: 160, num_classes: 4, batch_size: 32}",
                 f"data: {{dataset: imagefolder, root: {tmp_path / 'images'}, batch_size: 4, num_workers: 0}}")
    result = invoke("train", write_yaml(config), "--run-dir", tmp_path / "r", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "no test split" in result.output and "--split val" in result.output
    assert "test accuracy" not in result.output
