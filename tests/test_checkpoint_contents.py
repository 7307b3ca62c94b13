"""A checkpoint is checked before it is used (issue 15): its structure, its weights against the model its
own config builds, a resume's config against the checkpoint's, its checksum file and its path (bounded
reads, regular files only); a full disk while saving and a fallback to previous.pt are said aloud.
Every refusal: exit 1, one message naming what differs, no traceback."""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import skiptrain
from skiptrain import checkpoint
from skiptrain.errors import CheckpointError

from .conftest import TINY_RESIDUAL, invoke

TINY = yaml.safe_load(TINY_RESIDUAL)
COMMANDS = ["eval", "export", "predict", "resume"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished two-epoch run: last.pt, previous.pt and best.pt, each with its checksum."""
    folder = tmp_path_factory.mktemp("contents") / "run"
    skiptrain.train(copy.deepcopy(TINY), run_dir=folder, quiet=True, limit_batches=1)
    return folder


@pytest.fixture(scope="module")
def raw(run) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _write(path: Path, state: dict) -> Path:
    """A checkpoint with a valid checksum beside it: only its contents are wrong."""
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    checkpoint.checksum_path(path).write_text(f"{digest}  {path.name}\n")
    return path


def _use(command: str, path: Path, tmp_path: Path):
    """Run ``command`` on the checkpoint ``path`` through the CLI."""
    if command == "resume":
        return invoke("train", "--resume", path, "--run-dir", tmp_path / "again", "-q")
    if command == "export":
        return invoke(command, path, "-o", tmp_path / "m.onnx", "--no-verify")
    if command == "predict":
        np.save(tmp_path / "x.npy", np.zeros((1, 8, 8), dtype=np.float32))
        return invoke(command, path, tmp_path / "x.npy")
    return invoke(command, path)


def _refused(result, *words: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "size mismatch" not in result.output
    assert "KeyError" not in result.output
    for word in words:
        assert word in result.output, result.output
    return result.output


def _other_weights(raw: dict) -> dict:
    """Weights of another config: stem 16 channels wide, one tensor dropped and one added."""
    other = copy.deepcopy(TINY)
    other["model"]["layers"][0]["out_channels"] = 16
    weights = skiptrain.build_model(other).state_dict()
    dropped = next(k for k in weights if k.startswith("head"))
    weights = {k: v for k, v in weights.items() if k != dropped}
    weights["extra.weight"] = torch.zeros(3)
    return {**raw, "model": weights}


@pytest.mark.parametrize("command", COMMANDS)
def test_weights_of_another_config_say_what_differs_before_loading(raw, tmp_path, command):
    path = _write(tmp_path / "other.pt", _other_weights(raw))
    text = _refused(_use(command, path, tmp_path), "does not match its config", "differ in shape",
                    "stem.weight", "1 missing", "1 unexpected")
    assert "[16, 1, 3, 3]" in text and "[8, 1, 3, 3]" in text
    assert not (tmp_path / "again").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("key, value", [
    ("rng", "torch-float"), ("rng", "python-short"), ("rng", "numpy-float"), ("rng", "cuda-strings"),
    ("epoch", "two"), ("optimizer", "params-not-ints"), ("partial", ["a", 1]), ("best", {"metric": 1, "value": "x"}),
    ("scaler", "not-a-mapping"), ("settings", []), ("data", {"class_names": "cat"}),
])
def test_a_malformed_value_is_refused_before_anything_uses_it(raw, tmp_path, key, value):
    state = copy.deepcopy(raw)
    rng = state["rng"]
    if value == "torch-float":
        rng["torch"] = rng["torch"].float()
    elif value == "python-short":
        rng["python"] = (3, (1, 2, 3), None)
    elif value == "numpy-float":
        rng["numpy"]["keys"] = rng["numpy"]["keys"].double()
    elif value == "cuda-strings":
        rng["cuda"] = ["x"]
    elif value == "params-not-ints":
        state["optimizer"]["param_groups"][0]["params"] = ["a"]
    else:
        state[key] = value
    path = _write(tmp_path / "bad.pt", state)
    _refused(_use("resume", path, tmp_path), f"malformed `{key}`")
    assert not (tmp_path / "again").exists()


def test_no_optimizer_is_named_not_a_key_error(raw, tmp_path):
    path = _write(tmp_path / "bad.pt", {k: v for k, v in raw.items() if k != "optimizer"})
    _refused(_use("resume", path, tmp_path), "lacks optimizer")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["config", "model"])
def test_a_checkpoint_never_names_a_file_to_read(raw, tmp_path, command, where):
    secret = tmp_path / "shadow"
    secret.write_text("root:SECRET-LINE-42:19000:0:99999:7:::\n")
    config = str(secret) if where == "config" else {**raw["config"], "model": str(secret)}
    path = _write(tmp_path / "named.pt", {**raw, "config": config})
    text = _refused(_use(command, path, tmp_path), "must be the resolved config mapping")
    assert "SECRET" not in text


# -- resume with another config -------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def own_run(run, tmp_path) -> Path:
    copy_ = tmp_path / "run"
    shutil.copytree(run, copy_)
    return copy_


@pytest.mark.parametrize("change", [["--set", "model.layers.0.out_channels=16"], ["other.yaml"],
                                    ["--set", "data.num_classes=5"]])
def test_resume_with_another_model_is_refused_before_anything_is_written(own_run, tmp_path, change):
    if change == ["other.yaml"]:
        (tmp_path / "other.yaml").write_text(TINY_RESIDUAL.replace("out_channels: 8", "out_channels: 12"))
        change = [tmp_path / "other.yaml"]
    before = _snapshot(own_run)
    result = invoke("train", *change, "--resume", own_run, "--epochs", "3", "-q")
    text = _refused(result, "differs from the checkpoint's", "hint:")
    assert ("model.layers.0.out_channels" in text) or ("data.num_classes" in text)
    assert _snapshot(own_run) == before


def test_resume_may_extend_epochs_or_name_its_own_config(own_run, tmp_path):
    config = tmp_path / "same.yaml"
    config.write_text(TINY_RESIDUAL)
    result = invoke("train", config, "--resume", own_run, "--set", "train.epochs=3", "--limit-batches", "1", "-q")
    assert result.exit_code == 0, result.output
    assert torch.load(own_run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3


# -- bounded reads, regular files only ------------------------------------------------------------

def _alarm(seconds: int):
    def stop(signum, frame):
        raise AssertionError("hung")
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)


@pytest.mark.parametrize("sidecar", ["dev-zero", "huge", "folder"])
def test_a_checksum_file_is_read_bounded_and_must_be_a_regular_file(run, tmp_path, sidecar):
    path = tmp_path / "last.pt"
    shutil.copy(run / "checkpoints" / "last.pt", path)
    side = checkpoint.checksum_path(path)
    if sidecar == "dev-zero":
        side.symlink_to("/dev/zero")
    elif sidecar == "huge":
        side.write_text("0" * 64 + "  last.pt\n" + "x" * 5_000_000)
    else:
        side.mkdir()
    _alarm(20)
    try:
        result = invoke("eval", path)
    finally:
        signal.alarm(0)
    _refused(result, "last.pt.sha256")
    assert "MemoryError" not in result.output


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_checkpoint_that_is_not_a_regular_file_is_refused_before_torch_load(tmp_path, kind):
    path = tmp_path / "last.pt"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        os.mkfifo(path)
    _alarm(20)
    try:
        result = invoke("eval", path)
    finally:
        signal.alarm(0)
    _refused(result, "not a regular file")


def test_a_run_whose_last_checkpoint_is_a_device_falls_back_aloud(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    last = folder / "checkpoints" / "last.pt"
    last.unlink()
    last.symlink_to("/dev/zero")
    _alarm(20)
    try:
        result = invoke("eval", folder)
    finally:
        signal.alarm(0)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "not a regular file" in result.stderr and "previous.pt" in result.stderr


# -- a full disk ----------------------------------------------------------------------------------

def test_torchs_zip_writer_failure_is_the_documented_full_disk_message(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.atomic_save({"w": torch.zeros(3)}, path, keep_previous=True)
    before = path.read_bytes()

    def full(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6, 0))
    with pytest.raises(CheckpointError) as info:
        checkpoint.atomic_save({"w": torch.zeros(3)}, path, keep_previous=True)
    assert "No space left on device" in info.value.message and "previous checkpoint is intact" in info.value.message
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 200 kB tmpfs (root only; skipped elsewhere)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode()[:200]}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("size", [200_000, 45_000])
def test_a_real_full_disk_keeps_the_previous_checkpoint(tiny_disk, size):
    path = tiny_disk / "last.pt"
    checkpoint.atomic_save({"w": torch.zeros(3)}, path, keep_previous=True)
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as info:
        for _ in range(3):  # the second or third save fills the disk when one fits
            checkpoint.atomic_save({"w": torch.zeros(size)}, path, keep_previous=True)
    message = info.value.message
    assert "No space left on device" in message and "previous checkpoint is intact" in message, message
    assert not [p for p in tiny_disk.iterdir() if p.name.endswith(".tmp")]
    checkpoint.verify(path)  # the last good checkpoint still matches its checksum and loads
    assert torch.load(path, weights_only=True)["w"].numel() in (3, size)
    if size == 200_000:
        assert path.read_bytes() == before


# -- fallbacks are said aloud ---------------------------------------------------------------------

@pytest.fixture
def broken_last(run, tmp_path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    last = folder / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    return folder


def test_export_refuses_a_broken_last_checkpoint_and_names_previous(broken_last, tmp_path):
    text = _refused(invoke("export", broken_last, "-o", tmp_path / "m.onnx", "--no-verify"), "last.pt")
    assert "previous.pt" in text and "export" in text
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_fall_back_aloud(broken_last, tmp_path, command):
    result = _use(command, broken_last, tmp_path)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "previous.pt instead" in result.stderr, result.stderr


def test_the_python_api_refuses_instead_of_falling_back_silently(broken_last):
    with pytest.raises(CheckpointError, match="previous.pt"):
        checkpoint.read(broken_last)
    told = []
    assert checkpoint.read(broken_last, on_fallback=told.append).path.endswith("previous.pt") and told
    with pytest.warns(skiptrain.errors.SkiptrainWarning, match="previous.pt instead"):
        skiptrain.load_checkpoint(broken_last)
