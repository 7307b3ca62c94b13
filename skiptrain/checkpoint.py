"""Checkpoints: atomic writes, safe loads, and everything needed to continue a run exactly.

Keys: ``format``, ``skiptrain_version``, ``config`` (the resolved config: a checkpoint
alone rebuilds its model), ``model``, ``optimizer``, ``scaler``, ``epoch`` (epochs
completed), ``step``, ``best``, ``rng`` (torch, cuda, python, numpy), ``data``
(normalisation and class names, for eval, export and predict).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

FORMAT = "skiptrain-checkpoint-1"
REQUIRED = ("format", "config", "model", "epoch", "step")


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


def read(path: str | Path, which: str = "last", on_fallback=None) -> dict[str, Any]:
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


def _read_one(path: Path) -> dict[str, Any]:
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
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a skiptrain checkpoint", None,
                              "it must be written by `skiptrain train`")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}", None, "the checkpoint is incomplete")
    state["path"] = str(path)
    return state


def load_checkpoint(path: str | Path, which: str = "last", device=None):
    """``(model, config)`` from a checkpoint or run directory: the model in eval mode."""
    from .api import build_model
    from .config import load_config

    state = read(path, which)
    config = load_config(state["config"])
    model = build_model(config, device=device)
    model.load_state_dict(state["model"])
    model.meta["skiptrain"]["data"] = state.get("data", {})
    return model.eval(), config
