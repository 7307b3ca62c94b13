"""Checkpoints: atomic writes, safe loads, and everything needed to continue a run exactly.

Keys: ``format``, ``skiptrain_version``, ``config`` (the resolved config: a checkpoint
alone rebuilds its model), ``model``, ``optimizer``, ``scaler``, ``epoch`` (epochs
completed), ``step``, ``best``, ``rng`` (torch, cuda, python, numpy), ``data``
(normalisation and class names, for eval, export and predict).
"""
from __future__ import annotations

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


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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


def resolve(path: str | Path, which: str = "last") -> Path:
    """A checkpoint file from a checkpoint path or a run directory."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / f"{which}.pt"
        if not candidate.is_file():
            raise CheckpointError(f"{path} has no checkpoints/{which}.pt", None,
                                  "give a run directory written by `skiptrain train`, or a .pt file")
        return candidate
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint or run directory: {path}", None,
                              "run directories are under runs/ by default")
    return path


def read(path: str | Path, which: str = "last") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check its structure."""
    path = resolve(path, which)
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
