"""Hostile and careless input for tests/test_fuzz_hostile.py: what a user can hand each command.

A *case* is a folder copied from one shared workspace (a config, a trained run, a predict input, an
image folder), one damage done to it, and one command run in it through the CLI. The property,
checked by ``run_case``: the command exits 0, 1 or 2 (Click's usage error), a refusal is a message
on stderr and never a traceback, it finishes within ``HANG_SECONDS``, and not one file outside the
places the command may write (its run directory, its ``--output``, ``predictions/``) changed, was
created or disappeared. A config value that would run code (``!!python/...``) would create
``PWNED``; its absence is checked too.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st

from .conftest import TINY_RESIDUAL, TINY_RESIDUAL_MODEL
from .fuzz_oracle import HANG_SECONDS, PROFILE, PROFILE_NAME, time_limit

STATS: Counter = Counter()
# Each example trains, resumes or exports for real (about a second), so the counts are the fuzz
# profile's own: ``SKIPTRAIN_HOSTILE_EXAMPLES`` overrides them.
EXAMPLES = int(os.environ.get("SKIPTRAIN_HOSTILE_EXAMPLES") or (1500 if PROFILE_NAME == "long" else 150))


def hostile_settings(share: float) -> settings:
    return settings(PROFILE, max_examples=max(1, round(EXAMPLES * share)))
CHEAP = ("--epochs", "1", "--limit-batches", "1", "-q")

# -- the shared workspace ------------------------------------------------------------------------

IMAGE_CONFIG = TINY_RESIDUAL_MODEL.replace("input: [1, 8, 8]", "input: [3, 8, 8]") + """\
data: {dataset: imagefolder, root: images, batch_size: 4, num_workers: 0}
train: {epochs: 1, device: cpu, optimizer: {name: sgd, lr: 0.01}}
"""


def make_workspace(root: Path, invoke) -> Path:
    """A config, a one-epoch run of it, a model-only config, a .npy input and a small image folder."""
    from PIL import Image

    (root / "tiny.yaml").write_text(TINY_RESIDUAL)
    (root / "model.yaml").write_text(TINY_RESIDUAL_MODEL)
    (root / "images.yaml").write_text(IMAGE_CONFIG)
    result = invoke("train", root / "tiny.yaml", "--run-dir", root / "run", *CHEAP)
    assert result.exit_code == 0, result.output
    np.save(root / "x.npy", np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32))
    rng = np.random.default_rng(1)
    for label in ("cat", "dog"):
        (root / "images" / label).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, size=(10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / label / f"{i}.png")
    return root


# -- what may change -----------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` -> a fingerprint (file digest, folder, link target)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            elif path.is_file():
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[rel] = "other"
    return found


def changed_outside(before: dict, after: dict, allowed: list[str]) -> list[str]:
    """What changed outside ``allowed``; ``new:PATH`` allows PATH only when it did not exist before, or
    was an empty folder (a new run may go into an empty folder)."""
    def fresh(path: str) -> bool:
        return path not in before or (before[path] == "dir" and not any(k.startswith(path + "/") for k in before))
    allowed = [a.removeprefix("new:") for a in allowed if not a.startswith("new:") or fresh(a[4:])]

    def inside(rel: str) -> bool:
        return any(rel == a or rel.startswith(a.rstrip("/") + "/") for a in allowed)
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k) and not inside(k))


@contextmanager
def inside(folder: Path):
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def run_case(workspace: Path, damage, command: list, allowed: list[str], invoke_raw) -> str:
    """Copy the workspace, ``damage(case)``, run ``command`` (``{case}`` substituted) there; check."""
    case = Path(tempfile.mkdtemp(prefix="case-", dir=workspace.parent))
    try:
        shutil.copytree(workspace, case, dirs_exist_ok=True, symlinks=True)
        damage(case)
        args = [str(a).replace("{case}", str(case)) for a in command]
        before = snapshot(case)
        with inside(case), time_limit(HANG_SECONDS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = invoke_raw(*args)
        after = snapshot(case)
        STATS["tried"] += 1
        STATS[f"command_{args[0]}"] += 1
        where = f"skiptrain {' '.join(args)}"
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            f"{where}: {result.exception!r}"
        assert result.exit_code in (0, 1, 2), f"{where}: exit {result.exit_code}\n{result.output}"
        assert "Traceback" not in result.output, f"{where}:\n{result.output}"
        if result.exit_code:
            assert result.stderr.strip(), f"{where}: exit {result.exit_code} without a message"
        assert not (case / "PWNED").exists(), f"{where}: a config ran code"
        outside = changed_outside(before, after, allowed)
        assert not outside, f"{where}: changed outside {allowed}: {outside[:10]}"
        outcome = "accepted" if result.exit_code == 0 else "refused"
        STATS[outcome] += 1
        return outcome
    finally:
        shutil.rmtree(case, ignore_errors=True)


# -- damage --------------------------------------------------------------------------------------

HOSTILE_TEXT = [".nan", ".inf", "-.inf", "-1", "0", "1e400", "99999999999999999999999", "''", "[]", "{}",
                "null", "true", "three", "2024-06-01", "[bold]x[/]", "../../x", "é", "a" * 5000,
                "!!python/object/apply:os.system ['touch PWNED']", "{a: [1, {b: 2}]}", "0x10", "1_000",
                "[1, 2, 3]", "'0.1'", "*anchor", "&a 1", "~", "- 1", "{{", "${1/0}", "${__import__}"]
SET_KEYS = ["train.optimizer.lr", "train.optimizer.betas", "train.optimizer.eps", "train.optimizer.name",
            "train.scheduler.warmup_epochs", "train.seed", "train.epochs", "train.device", "train.on_nan",
            "train.loss.label_smoothing", "train.loss.ignore_index", "train.sync_bn", "train.out_dir",
            "train.checkpoint_every_steps", "data.batch_size", "data.num_samples", "data.num_classes",
            "data.normalize.std", "data.dataset", "data.root", "model.name", "model.input",
            "model.layers.0.kernel_size", "model.layers.0.out_channels", "model.layers.3.stride",
            "model.skips.0.from", "model.skips", "model.layers", "model", "train", "", "x.y.z",
            "model.layers.99.type", "train.optimizer"]


def set_values():
    """``validate`` / ``train`` with one hostile ``--set``."""
    return st.tuples(st.sampled_from(["validate", "train"]), st.sampled_from(SET_KEYS),
                     st.sampled_from(HOSTILE_TEXT))


def set_case(draw_value):
    command_name, key, value = draw_value
    command = ["validate", "tiny.yaml", "--set", f"{key}={value}"]
    if command_name == "train":
        command = ["train", "tiny.yaml", "--set", f"{key}={value}", "--run-dir", "new", *CHEAP]
    return (lambda case: None), command, ["new", "runs"]


CHECKPOINT_KEYS = ["model", "optimizer", "rng", "epoch", "step", "config", "best", "scaler", "classes"]
HOSTILE_VALUES = [None, "two", -1, 10 ** 30, 1.5, float("nan"), [], {}, [1, 2], "/etc/hostname",
                  {"a": torch.zeros(2)}, torch.zeros(3), "[bold]x[/]"]


def rewrite_checkpoint(path: Path, change) -> None:
    """Load, change and save a checkpoint, and write a *valid* checksum: wrong contents, right sum."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, path)
    (path.with_name(path.name + ".sha256")).write_text(
        hashlib.sha256(path.read_bytes()).hexdigest() + f"  {path.name}\n")


def checkpoint_damage():
    """A change to last.pt's contents (top-level value, a weight's shape, dtype, values, the config)."""
    def top(key, value):
        def change(state):
            if value == "<delete>":
                state.pop(key, None)
            else:
                state[key] = value
        return change

    def weights(kind, index):
        def change(state):
            names = sorted(state["model"])
            name = names[index % len(names)]
            tensor = state["model"][name]
            if kind == "delete":
                del state["model"][name]
            elif kind == "extra":
                state["model"]["ghost.weight"] = torch.zeros(2)
            elif kind == "shape":
                state["model"][name] = torch.zeros(tuple(d + 1 for d in tensor.shape) or (2,))
            elif kind == "dtype":
                state["model"][name] = tensor.to(torch.float64 if tensor.is_floating_point() else torch.float32)
            elif kind == "nan" and tensor.is_floating_point():
                state["model"][name] = torch.full_like(tensor, float("nan"))
        return change

    def config(kind):
        def change(state):
            model = state["config"]["model"] if isinstance(state.get("config"), dict) else {}
            if kind == "wider" and model:
                model["layers"][0]["out_channels"] = 12
            elif kind == "no-layers" and model:
                model["layers"] = []
            elif kind == "bad-type" and model:
                model["layers"][0]["type"] = "no_such_layer"
            elif kind == "input" and model:
                model["input"] = [3, 8, 8]
        return change

    return st.one_of(
        st.builds(top, st.sampled_from(CHECKPOINT_KEYS), st.sampled_from(HOSTILE_VALUES + ["<delete>"])),
        st.builds(weights, st.sampled_from(["delete", "extra", "shape", "dtype", "nan"]), st.integers(0, 20)),
        st.builds(config, st.sampled_from(["wider", "no-layers", "bad-type", "input"])))


COMMANDS_ON_RUN = [
    (["train", "--resume", "run", "--epochs", "2", "--limit-batches", "1", "-q"], ["run", "runs"]),
    (["eval", "run"], ["run"]),
    (["export", "run", "-o", "out.onnx"], ["out.onnx", "out.onnx.data"]),
    (["predict", "run", "x.npy", "--json"], ["predictions"]),
    (["predict", "run/checkpoints/last.pt", "x.npy"], ["predictions"]),
    (["train", "tiny.yaml", "--run-dir", "run", *CHEAP], ["new:run"]),
    (["train", "tiny.yaml", "--run-dir", "run", "--force", *CHEAP], ["run"]),
]


def run_files():
    return st.sampled_from(["config.yaml", "metrics.jsonl", ".skiptrain-run", "summary.json",
                            "checkpoints/last.pt", "checkpoints/last.pt.sha256", "checkpoints/previous.pt",
                            "checkpoints/best.pt", "checkpoints", "."])


def break_path(path: Path, how: str, rng_bytes: bytes) -> None:
    """Replace ``path`` by something careless or hostile."""
    if how == "delete":
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    elif how == "empty" and path.is_file():
        path.write_bytes(b"")
    elif how == "garbage" and path.is_file():
        path.write_bytes(rng_bytes)
    elif how == "truncate" and path.is_file():
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    elif how in ("directory", "dev-zero", "loop") and path.name not in ("", "."):
        break_path(path, "delete", rng_bytes)
        if how == "directory":
            path.mkdir()
        elif how == "dev-zero":
            path.symlink_to("/dev/zero")
        else:
            path.symlink_to(path.name)


def run_dir_damage():
    def damage(rel, how, data):
        return lambda case: break_path(case / "run" / rel, how, data)
    return st.builds(damage, run_files(),
                     st.sampled_from(["delete", "empty", "garbage", "truncate", "directory", "dev-zero", "loop"]),
                     st.binary(min_size=1, max_size=300))


OUTPUT_PATHS = ["tiny.yaml", "model.yaml", "run/checkpoints/last.pt", "run", "run/config.yaml", ".", "",
                "missing/x.out", "tiny.yaml/x.out", "out", "link-to-config", "images", "images/cat/0.png",
                "new.out", "x.npy"]
OUTPUT_COMMANDS = {
    "export-run": ["export", "run", "-o"], "export-config": ["export", "model.yaml", "-o"],
    "graph": ["graph", "tiny.yaml", "-o"], "graph-dot": ["graph", "tiny.yaml", "--format", "dot", "-o"],
    "schema": ["schema", "-o"], "init": ["init", "quickstart", "-o"],
}


def output_case(name: str, target: str):
    """An output path: the command's own input must never change; any other file may be replaced
    (as ``cp`` and ``torch.save`` do), a folder never."""
    def damage(case):
        (case / "out").mkdir(exist_ok=True)
        (case / "link-to-config").symlink_to("tiny.yaml")
    command = OUTPUT_COMMANDS[name]
    own_inputs = {"export": {command[1], "run"}, "graph": {"tiny.yaml", "link-to-config"}, "schema": set(),
                  "init": set()}[command[0]]
    folders = {"run", "images", "out", ".", "", "run/checkpoints/last.pt", "run/config.yaml"}  # a run's files
    writable = target not in own_inputs and target.split("/")[0] not in own_inputs and target not in folders
    allowed = [target, f"{target}.data"] if writable else []
    if command[0] == "init":  # init writes only a new file (it replaces one only with --force)
        allowed = [f"new:{target}"] if writable else []
    return damage, [*command, target], allowed


DTYPES = ["float32", "float64", "float16", "int64", "uint8", "bool", "complex64", "<U3", "V4", "object",
          [("a", "f4"), ("b", "i4")]]


def predict_inputs():
    """A .npy of any dtype and shape, raw bytes named .npy/.png, a folder, a link to /dev/zero."""
    array = st.builds(lambda dtype, shape, fill: (dtype, shape, fill), st.sampled_from(range(len(DTYPES))),
                      st.lists(st.integers(0, 9), min_size=0, max_size=5), st.sampled_from([0.0, float("nan"),
                                                                                             1e30, -3.0]))
    raw = st.tuples(st.sampled_from(["x.npy", "x.png", "x.jpg", "x.pt", "x.txt"]), st.binary(max_size=200))
    return st.one_of(array, raw, st.sampled_from(["folder", "dev-zero", "missing", "empty-folder"]))


def predict_case(what, source: str, json_flag: bool):
    def damage(case):
        target = case / "input.npy"
        if isinstance(what, tuple) and len(what) == 3:
            dtype_index, shape, fill = what
            dtype = DTYPES[dtype_index]
            try:
                with np.errstate(all="ignore"), warnings.catch_warnings():  # NaN cast to int is the point
                    warnings.simplefilter("ignore")
                    array = np.full(shape, fill).astype(dtype) if dtype != "object" else np.empty(shape, dtype=object)
            except (TypeError, ValueError):
                array = np.zeros(shape, dtype=dtype)
            np.save(target, array, allow_pickle=True)
        elif isinstance(what, tuple):
            name, data = what
            target = case / "input" / name
            target.parent.mkdir()
            target.write_bytes(data)
        elif what == "folder":
            shutil.copytree(case / "images" / "cat", case / "input.npy")
        elif what == "dev-zero":
            target.symlink_to("/dev/zero")
        elif what == "empty-folder":
            (case / "input.npy").mkdir()
    name = "input" if isinstance(what, tuple) and len(what) == 2 else "input.npy"
    return damage, ["predict", source, name, *(["--json"] if json_flag else [])], ["predictions"]


def image_damage():
    """One file of the image folder replaced by something careless or hostile."""
    def damage(rel, how, data):
        def apply(case):
            path = case / "images" / rel
            if how == "bomb" and path.is_file():
                from PIL import Image
                Image.new("L", (1, 1)).save(path)
                raw = bytearray(path.read_bytes())
                import struct
                import zlib
                raw[16:24] = struct.pack(">II", 200_000, 200_000)
                raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
                path.write_bytes(bytes(raw))
            elif how == "bomb":
                return
            elif how == "stray":
                (path.parent / ".DS_Store").write_bytes(data)
            else:
                break_path(path, how, data)
        return apply
    return st.builds(damage, st.sampled_from(["cat/0.png", "dog/3.png", "cat", "dog"]),
                     st.sampled_from(["delete", "empty", "garbage", "truncate", "directory", "dev-zero", "bomb",
                                      "stray"]),
                     st.binary(min_size=1, max_size=200))
