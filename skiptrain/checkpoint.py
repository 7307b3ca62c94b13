"""Checkpoints: atomic writes, safe loads, and the one type that owns a training checkpoint's keys.

``TrainingState`` declares every key (see ``KEYS`` and docs/checkpoints.md), writes
them, checks them when a file is read (a missing or malformed key is a
``CheckpointError``, never a ``KeyError`` minutes into a resume) and restores them in a
fixed order: model, grad scaler, optimizer, schedule position, RNG streams, data position.
"""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import random
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint_checks as checks
from .checkpoint_checks import is_int as _is_int
from .errors import CheckpointError

FORMAT = "skiptrain-checkpoint-1"
SIDECAR_LIMIT = 200  # bytes: a checksum file is one sha256 and a name, never more
_TORCH_WRITER = ("inline_container", "PytorchStreamWriter")  # torch's zip writer failing (ENOSPC among others)


def _is_mapping(*keys: str):
    return lambda value: isinstance(value, dict) and all(key in value for key in keys)


def _optional(check):
    return lambda value: value is None or check(value)


def _key(doc: str, check, default: Any = None, saved: bool = True, rule: str = ""):
    """A checkpoint key: what it holds (for the docs), how a read checks it, and what a malformed one is told."""
    return field(default=default, metadata={"doc": doc, "check": check, "saved": saved, "rule": rule})


@dataclass
class TrainingState:
    """Everything a training checkpoint holds: enough to rebuild the model and to continue exactly."""

    format: str = _key("`skiptrain-checkpoint-1`", lambda v: v == FORMAT, FORMAT)
    skiptrain_version: str = _key("the skiptrain version that wrote it", lambda v: isinstance(v, str), "")
    config: dict = _key("the resolved config (model, data, train): the file alone rebuilds its model",
                        checks.is_config, rule="the checkpoint's config must be the resolved config mapping "
                        "(model, data and train sections, each a mapping): a checkpoint never names a file to read")
    model: dict = _key("the model's state dict (plain keys, never a compiled or DDP wrapper's)", checks.is_state_dict)
    optimizer: dict = _key("the optimizer's state dict", checks.is_optimizer)
    scaler: dict | None = _key("the fp16 grad scaler's state dict, or null", _optional(_is_mapping()))
    epoch: int = _key("epochs completed", _is_int, 0)
    step: int = _key("optimizer steps taken: the learning-rate schedule's position", _is_int, 0)
    batch: int = _key("batches done in the current epoch (a mid-epoch checkpoint), else 0", _is_int, 0)
    partial: tuple = _key("the current epoch's loss sum and sample count so far", checks.is_partial, (0.0, 0))
    best: dict | None = _key("the best epoch so far: metric, value, epoch", checks.is_best)
    rng: dict = _key("every RNG stream: torch, cuda, python, numpy", checks.is_rng)
    data: dict = _key("what eval, export and predict need of the data: task, classes, mean and std", checks.is_data)
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
            if not _CHECKS[key](state[key]):  # only the kind is shown, never the value: it may be anything
                rule = f": {_RULES[key]}" if _RULES[key] else ""
                raise CheckpointError(f"{path} has a malformed `{key}` ({type(state[key]).__name__}){rule}", None,
                                      f"`{key}` holds {_DOCS[key]}; the file was not written by `skiptrain "
                                      "train` or was edited")
        return cls(**{key: state[key] for key in KEYS}, path=str(path))

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                scaler: torch.amp.GradScaler | None = None) -> None:
        """Load into a freshly built run, in a fixed order: model, scaler, optimizer, then every RNG
        stream. The schedule and data positions (``step``, ``epoch``, ``batch``, ``partial``) are read
        by the loop from this object. The weights are compared with the model first, by name and shape."""
        hint = ("its weights were saved from another config, or the file was edited: use the checkpoint as "
                "written, or train a new run with this config")
        mismatch = checks.weights_mismatch(model.state_dict(), self.model)
        if mismatch:
            raise CheckpointError(f"checkpoint {self.path} does not match its config: {mismatch}", None, hint)
        try:
            model.load_state_dict(self.model)
        except RuntimeError as exc:
            raise CheckpointError(f"{self.path}: its weights do not fit the model its config builds "
                                  f"({str(exc).splitlines()[0][:200]})", None, hint) from None
        if optimizer is None:
            return
        if scaler is not None and scaler.is_enabled() and self.scaler:
            scaler.load_state_dict(self.scaler)
        mismatch = checks.optimizer_mismatch(optimizer, self.optimizer)
        try:
            if mismatch:
                raise ValueError(mismatch)
            optimizer.load_state_dict(self.optimizer)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.path}: its optimizer state does not fit this run's optimizer ({exc})",
                                  None, "resume with the optimizer the run was trained with") from None
        set_rng_state(self.rng)


KEYS = tuple(f.name for f in fields(TrainingState) if f.metadata["saved"])
_CHECKS = {f.name: f.metadata["check"] for f in fields(TrainingState)}
_DOCS = {f.name: f.metadata["doc"] for f in fields(TrainingState)}
_RULES = {f.name: f.metadata["rule"] for f in fields(TrainingState)}


def key_table() -> str:
    """The documented key list (docs/checkpoints.md), from the type itself."""
    rows = [f"| `{name}` | {_DOCS[name]} |" for name in KEYS]
    return "\n".join(["| key | holds |", "|---|---|", *rows])


class _HashingWriter:
    """A file wrapper that hashes what torch.save writes, so verifying costs no second read; it keeps the
    OSError of a failed write, which torch's zip writer turns into a bare RuntimeError."""

    def __init__(self, handle):
        self.handle, self.digest, self.error = handle, hashlib.sha256(), None

    def write(self, data) -> int:
        self.digest.update(data)
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_failure(exc: BaseException, writer: _HashingWriter | None, folder: Path) -> str | None:
    """Why a save failed, in words, when the disk or the folder is to blame (None for anything else).
    torch's zip writer reports ENOSPC as `[enforce fail at inline_container.cc:...] unexpected pos`."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if not (isinstance(exc, RuntimeError) and any(mark in str(exc) for mark in _TORCH_WRITER)):
        return None
    cause = writer.error if writer is not None and writer.error is not None else exc.__context__
    if isinstance(cause, OSError):
        return cause.strerror or str(cause)
    try:
        full = shutil.disk_usage(folder).free < (1 << 20)  # measured before the partial file is removed
    except OSError:
        full = False
    return os.strerror(errno.ENOSPC) if full else f"torch's writer failed ({str(exc).splitlines()[0][:200]})"


def _cannot_write(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"could not write {path}: {reason}; the previous checkpoint is intact", None,
                           "free disk space (or fix the folder's permissions) and resume from the run directory")


def _write_temporary(obj: Any, path: Path) -> tuple[Path, str]:
    """torch.save into a temporary file beside ``path``, fsynced; returns it and its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    writer = None
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _HashingWriter(handle)
            torch.save(obj, writer)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as exc:
        reason = _write_failure(exc, writer, path.parent)
        Path(tmp).unlink(missing_ok=True)
        if reason is not None:
            raise _cannot_write(path, reason) from None
        raise
    return Path(tmp), writer.digest.hexdigest()


def _write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` (a temporary name), fsynced: the caller renames it into place."""
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def atomic_save(obj: Any, path: Path, keep_previous: bool = False) -> None:
    """Save so that a kill or a full disk at any moment leaves a loadable checkpoint.

    Write the checkpoint and its checksum to temporary files in the same folder and fsync
    them (a full disk stops here, with nothing moved); with ``keep_previous`` move the
    current file to ``previous.pt`` (one bad write loses at most one interval); rename the
    checksum, then the checkpoint; fsync the folder.
    """
    path = Path(path)
    tmp, digest = _write_temporary(obj, path)
    sidecar_tmp = checksum_path(path).with_name(f".{checksum_path(path).name}.tmp")
    try:
        _write_text(sidecar_tmp, f"{digest}  {path.name}\n")
        if keep_previous and path.exists():
            previous = path.with_name("previous.pt")
            os.replace(path, previous)
            if checksum_path(path).exists():
                os.replace(checksum_path(path), checksum_path(previous))
        os.replace(sidecar_tmp, checksum_path(path))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        sidecar_tmp.unlink(missing_ok=True)
        raise _cannot_write(path, exc.strerror or str(exc)) from None
    _fsync_dir(path.parent)


def _open_regular(path: Path, what: str = "checkpoint"):
    """``files.open_regular`` with a checkpoint's error: a FIFO, a device (/dev/zero) or a folder is
    refused before a byte is read, so nothing hangs or reads without end."""
    from .files import open_regular

    return open_regular(path, what, CheckpointError, f"a {what} must be a regular file written by `skiptrain train`")


def _expected_digest(path: Path) -> str | None:
    """The sha256 written beside ``path`` (None when there is no checksum file), read bounded."""
    sidecar = checksum_path(path)
    if not os.path.lexists(sidecar):
        return None
    with _open_regular(sidecar, "checksum file") as handle:
        data = handle.read(SIDECAR_LIMIT + 1)
    words = data.decode("ascii", "replace").split() if len(data) <= SIDECAR_LIMIT else []
    if not words or len(words[0]) != 64 or any(c not in "0123456789abcdef" for c in words[0]):
        size = "over 200 bytes" if len(data) > SIDECAR_LIMIT else f"{len(data)} bytes"
        raise CheckpointError(f"{sidecar} is not a checksum file ({size}, not a sha256 and a name)", None,
                              "it was damaged or replaced; resume from the run directory to fall back to "
                              "checkpoints/previous.pt, or use checkpoints/best.pt")
    return words[0]


def _check_digest(path: Path, handle, expected: str | None) -> None:
    if expected is None:
        return
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    handle.seek(0)
    if digest.hexdigest() != expected:
        raise CheckpointError(f"{path} is corrupted: its sha256 does not match {checksum_path(path).name}", None,
                              "it was damaged after it was written; resume from the run directory to fall "
                              "back to checkpoints/previous.pt, or use checkpoints/best.pt")


def verify(path: Path) -> None:
    """Compare the file with the sha256 written beside it (when there is one); regular files only."""
    path = Path(path)
    with _open_regular(path) as handle:
        _check_digest(path, handle, _expected_digest(path))


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
    """Checkpoint files to try, best first: a file as given; a run directory's ``which``, then (for
    `last`) the previous one it kept. A broken or missing last.pt stays in the list, so that falling
    back past it is always said (``read``)."""
    path = Path(path)
    if path.is_dir():
        names = [which] + (["previous"] if which == "last" else [])
        found = [path / "checkpoints" / f"{name}.pt" for name in names]
        if not any(os.path.lexists(f) for f in found):  # one answer with `train --run-dir` (rundir.py)
            from .training.rundir import no_checkpoint

            raise no_checkpoint(path, which)
        return found if os.path.lexists(found[-1]) else found[:1]
    if not os.path.lexists(path):
        raise CheckpointError(f"no such checkpoint or run directory: {path}", None,
                              "run directories are under runs/ by default")
    return [path]


def read(path: str | Path, which: str = "last", on_fallback=None) -> TrainingState:
    """Load a checkpoint safely (``weights_only=True``), verified. From a run directory whose last
    checkpoint is broken, fall back to the previous one only when ``on_fallback`` is given (it is
    told why, to say it aloud); without it the broken file is an error that names the previous one."""
    files = candidates(path, which)
    for i, file in enumerate(files):
        try:
            return _read_one(file)
        except CheckpointError as exc:
            if i == len(files) - 1 or "refused" in exc.message:
                raise
            if on_fallback is None:
                raise CheckpointError(exc.message, exc.location,
                                      f"{exc.hint + '; ' if exc.hint else ''}the run also keeps {files[i + 1]}: "
                                      "give that file explicitly "
                                      f"to use the older weights (for example `skiptrain export {files[i + 1]} "
                                      "-o model.onnx`)") from None
            on_fallback(f"{exc.message}; using {files[i + 1]} instead")
    raise AssertionError("unreachable")


def _read_one(path: Path) -> TrainingState:
    if not os.path.lexists(path):
        raise CheckpointError(f"{path} is missing", None, "a save was interrupted; the run keeps the one before")
    with _open_regular(path) as handle:
        _check_digest(path, handle, _expected_digest(path))
        try:
            state = torch.load(handle, map_location="cpu", weights_only=True)
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
