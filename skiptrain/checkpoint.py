"""Checkpoints: atomic writes, safe loads, and the one type that owns a training checkpoint's keys.

``TrainingState`` declares every key (see ``KEYS`` and docs/checkpoints.md), writes
them, checks them when a file is read (a missing or malformed key is a
``CheckpointError``, never a ``KeyError`` minutes into a resume) and restores them in a
fixed order: model, grad scaler, optimizer, schedule position, RNG streams, data position.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

FORMAT = "skiptrain-checkpoint-1"


def _is_int(value: Any, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def _is_mapping(*keys: str):
    return lambda value: isinstance(value, dict) and all(key in value for key in keys)


def _optional(check):
    return lambda value: value is None or check(value)


def _key(doc: str, check, default: Any = None, saved: bool = True):
    """A checkpoint key: what it holds (for the docs) and how a read checks it."""
    return field(default=default, metadata={"doc": doc, "check": check, "saved": saved})


@dataclass
class TrainingState:
    """Everything a training checkpoint holds: enough to rebuild the model and to continue exactly."""

    format: str = _key("`skiptrain-checkpoint-1`", lambda v: v == FORMAT, FORMAT)
    skiptrain_version: str = _key("the skiptrain version that wrote it", lambda v: isinstance(v, str), "")
    config: dict = _key("the resolved config (model, data, train): the file alone rebuilds its model",
                        _is_mapping("model"))
    model: dict = _key("the model's state dict (plain keys, never a compiled or DDP wrapper's)",
                       lambda v: isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values()))
    optimizer: dict = _key("the optimizer's state dict", _is_mapping("state", "param_groups"))
    scaler: dict | None = _key("the fp16 grad scaler's state dict, or null", _optional(_is_mapping()))
    epoch: int = _key("epochs completed", _is_int, 0)
    step: int = _key("optimizer steps taken: the learning-rate schedule's position", _is_int, 0)
    batch: int = _key("batches done in the current epoch (a mid-epoch checkpoint), else 0", _is_int, 0)
    partial: tuple = _key("the current epoch's loss sum and sample count so far",
                         lambda v: isinstance(v, (list, tuple)) and len(v) == 2, (0.0, 0))
    best: dict | None = _key("the best epoch so far: metric, value, epoch", _optional(_is_mapping("metric", "value")))
    rng: dict = _key("every RNG stream: torch, cuda, python, numpy", _is_mapping("torch", "python", "numpy"))
    data: dict = _key("what eval, export and predict need of the data: task, classes, mean and std",
                      _is_mapping())
    settings: dict = _key("the train settings in force", _is_mapping())
    world_size: int = _key("how many processes trained it", lambda v: _is_int(v, 1), 1)
    path: str = _key("where it was read from (not saved)", None, "", saved=False)

    def to_dict(self) -> dict[str, Any]:
        """The saved keys, in types that ``torch.load(weights_only=True)`` accepts."""
        return {name: getattr(self, name) for name in KEYS}

    @classmethod
    def from_dict(cls, state: Any, path: str | Path) -> "TrainingState":
        """Check every key of a loaded file; the first missing or malformed one is a CheckpointError."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a skiptrain checkpoint", None, "it must be written by `skiptrain train`")
        missing = [key for key in KEYS if key not in state]
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)}", None,
                                  "the checkpoint is incomplete; use another one (checkpoints/best.pt or "
                                  "checkpoints/previous.pt) or retrain")
        for key in KEYS:
            if not _CHECKS[key](state[key]):
                raise CheckpointError(f"{path} has a malformed `{key}` ({type(state[key]).__name__})", None,
                                      f"`{key}` holds {_DOCS[key]}; the file was not written by `skiptrain "
                                      "train` or was edited")
        return cls(**{key: state[key] for key in KEYS}, path=str(path))

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                scaler: torch.amp.GradScaler | None = None) -> None:
        """Load into a freshly built run, in a fixed order: model, scaler, optimizer, then every RNG
        stream. The schedule and data positions (``step``, ``epoch``, ``batch``, ``partial``) are read
        by the loop from this object."""
        try:
            model.load_state_dict(self.model)
        except RuntimeError as exc:
            raise CheckpointError(f"{self.path}: its weights do not fit the model its config builds "
                                  f"({str(exc).splitlines()[0][:200]})", None,
                                  "the config inside the checkpoint was changed; use the checkpoint as written") from None
        if optimizer is None:
            return
        if scaler is not None and scaler.is_enabled() and self.scaler:
            scaler.load_state_dict(self.scaler)
        try:
            optimizer.load_state_dict(self.optimizer)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.path}: its optimizer state does not fit this run's optimizer ({exc})",
                                  None, "resume with the optimizer the run was trained with") from None
        set_rng_state(self.rng)


KEYS = tuple(f.name for f in fields(TrainingState) if f.metadata["saved"])
_CHECKS = {f.name: f.metadata["check"] for f in fields(TrainingState)}
_DOCS = {f.name: f.metadata["doc"] for f in fields(TrainingState)}


def key_table() -> str:
    """The documented key list (docs/checkpoints.md), from the type itself."""
    rows = [f"| `{name}` | {_DOCS[name]} |" for name in KEYS]
    return "\n".join(["| key | holds |", "|---|---|", *rows])


class _HashingWriter:
    """A file wrapper that hashes what torch.save writes, so verifying costs no second read."""

    def __init__(self, handle):
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_temporary(obj: Any, path: Path) -> tuple[Path, str]:
    """torch.save into a temporary file beside ``path``, fsynced; returns it and its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _HashingWriter(handle)
            torch.save(obj, writer)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not write {path} ({exc.strerror or exc}); the previous checkpoint "
                                  "is intact", None, "free disk space (or fix the folder's permissions) and "
                                  "resume from the run directory") from None
        raise
    return Path(tmp), writer.digest.hexdigest()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def atomic_save(obj: Any, path: Path, keep_previous: bool = False) -> None:
    """Save so that a kill or a full disk at any moment leaves a loadable checkpoint.

    Write a temporary file in the same folder and fsync it; with ``keep_previous`` move
    the current file to ``previous.pt`` (one bad write loses at most one interval);
    write the checksum beside it; rename; fsync the folder.
    """
    path = Path(path)
    tmp, digest = _write_temporary(obj, path)
    try:
        if keep_previous and path.exists():
            previous = path.with_name("previous.pt")
            os.replace(path, previous)
            if checksum_path(path).exists():
                os.replace(checksum_path(path), checksum_path(previous))
        _write_text(checksum_path(path), f"{digest}  {path.name}\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path} ({exc.strerror or exc})", None,
                              "free disk space and resume from the run directory") from None
    _fsync_dir(path.parent)


def verify(path: Path) -> None:
    """Compare the file with the sha256 written beside it (when there is one)."""
    sidecar = checksum_path(path)
    if not sidecar.exists():
        return
    expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise CheckpointError(f"{path} is corrupted: its sha256 does not match {sidecar.name}", None,
                              "it was damaged after it was written; resume from the run directory to fall "
                              "back to checkpoints/previous.pt, or use checkpoints/best.pt")


def rng_state() -> dict[str, Any]:
    """Every RNG stream, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))


def candidates(path: str | Path, which: str = "last") -> list[Path]:
    """Checkpoint files to try, best first: a file as given; a run directory's ``which``,
    then (for `last`) the previous one it kept."""
    path = Path(path)
    if path.is_dir():
        names = [which] + (["previous"] if which == "last" else [])
        found = [path / "checkpoints" / f"{name}.pt" for name in names]
        found = [f for f in found if f.is_file()]
        if not found:
            raise CheckpointError(f"{path} has no checkpoints/{which}.pt", None,
                                  "give a run directory written by `skiptrain train`, or a .pt file")
        return found
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint or run directory: {path}", None,
                              "run directories are under runs/ by default")
    return [path]


def read(path: str | Path, which: str = "last", on_fallback=None) -> TrainingState:
    """Load a checkpoint safely (``weights_only=True``), verified; from a run directory, fall
    back to the previous checkpoint when the last one is broken (``on_fallback`` is told why)."""
    files = candidates(path, which)
    for i, file in enumerate(files):
        try:
            return _read_one(file)
        except CheckpointError as exc:
            if i == len(files) - 1 or "refused" in exc.message:
                raise
            if on_fallback is not None:
                on_fallback(f"{exc.message}; using {files[i + 1]} instead")
    raise AssertionError("unreachable")


def _read_one(path: Path) -> TrainingState:
    verify(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} was refused: it needs arbitrary Python objects to load "
                              f"({str(exc).splitlines()[0][:200]})", None,
                              "skiptrain only loads checkpoints made of tensors and plain values; "
                              "never load a file you do not trust") from None
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''})", None,
                              "the file may be truncated or corrupted; use another checkpoint "
                              "(checkpoints/best.pt) or retrain") from None
    return TrainingState.from_dict(state, path)
