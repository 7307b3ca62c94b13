"""A run directory: the resolved config, one metrics line per epoch, checkpoints, summary, curves.

skiptrain writes only into a run directory it created, or one that holds one of its runs:
every run directory gets a marker file (``.skiptrain-run``: the run's name and a random id)
when it is created. Which folder a run may write into is decided here, in ``RunDir.open``, and
nowhere else:

- a new run goes into a folder that does not exist yet, or exists and is empty;
- an existing folder that is not a run (no marker) is refused, even with ``--force``;
- a folder holding another run is refused unless ``--force``, which replaces that run whole
  (checkpoints including ``previous.pt``, metrics, summary, curves) before anything is written;
- ``--resume`` continues into the run directory its checkpoint belongs to (the marker two
  levels above it); a checkpoint that is not inside a run directory continues into a NEW run
  directory under ``train.out_dir`` (or the ``--run-dir`` given), never into the folders around it.

Before anything is built, ``target`` also refuses a folder that cannot be written (under a file,
read-only, or holding a run file of the wrong kind, such as a ``metrics.jsonl`` folder), and
``resumable`` says whether a run has something to resume (``last.pt`` or ``previous.pt``; orphan
``*.tmp`` files never count): ``train --run-dir`` and ``--resume`` give the same answer. Every file
of a run except the appended metrics line is written atomically (``outputs.write_text``).

Folders written by older versions (``config.yaml`` beside ``checkpoints/last.pt``, no marker)
count as runs, and get their marker when next written to.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError, Location, SkiptrainError
from ..files import MiB, read_bytes
from ..outputs import atomic_output, nearest_existing, write_text

MARKER = ".skiptrain-run"
# replaced or appended
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "transfer.json", "report.html", MARKER)
CHECKPOINT_FILES = ("last.pt", "previous.pt", "best.pt", "last.pt.validation", "best.pt.validation")
METRICS_LIMIT = 256 * MiB  # one short line per epoch


class RunDirError(SkiptrainError):
    """A run directory skiptrain may not write into."""


def run_id(path: Path) -> str | None:
    """The id of the run held in ``path`` ("legacy" for an older run without a marker), or None."""
    marker = path / MARKER
    try:
        if marker.is_file():
            try:
                value = json.loads(read_bytes(marker, "run marker", 64 << 10).decode("utf-8", "replace")).get("id")
            except (SkiptrainError, ValueError, AttributeError):
                value = None
            return str(value) if value else "unreadable"
        if (path / "config.yaml").is_file() and (path / "checkpoints" / "last.pt").is_file():
            return "legacy"
    except OSError:
        return None
    return None


def job_of(path: Path) -> str | None:
    """The torchrun job (``TORCHELASTIC_RUN_ID``) that created the run in ``path``, if one did: a restarted
    job continues only its own run (``distributed.restart_resume``)."""
    try:
        value = json.loads(read_bytes(path / MARKER, "run marker", 64 << 10).decode("utf-8", "replace")).get("job")
    except (OSError, SkiptrainError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def resumable(path: Path) -> list[Path]:
    """The checkpoints ``--resume path`` continues from, best first: ``last.pt``, then ``previous.pt``
    (a kill between the two renames of a save leaves only it). Orphan ``*.tmp`` files never count.
    A run with none of them has nothing to resume: ``train`` and ``--resume`` both say so."""
    return [f for f in (path / "checkpoints" / "last.pt", path / "checkpoints" / "previous.pt") if f.is_file()]


def no_checkpoint(path: Path, which: str = "last") -> CheckpointError:
    """The one answer to "resume a folder that has no checkpoint", shared by ``--resume`` and ``train``."""
    if run_id(path) is not None and not resumable(path):
        return CheckpointError(f"{path} holds a run with nothing to resume: no checkpoints/last.pt or previous.pt "
                               "(it was stopped before its first save)", Location(str(path)),
                               f"start it again with `skiptrain train CONFIG --run-dir {path} --force`, "
                               "or pick another --run-dir")
    return CheckpointError(f"{path} has no checkpoints/{which}.pt", Location(str(path)),
                           "give a run directory written by `skiptrain train`, or a .pt file")


def _writable(path: Path, option: str) -> None:
    """Refuse, before anything is built, a run folder that cannot be written: under a file, in a
    read-only folder, or holding a run file of the wrong kind (a ``metrics.jsonl`` folder)."""
    loc = Location(option)
    existing = nearest_existing(path)
    if not existing.is_dir():
        inside = "" if existing == path else f", so {path} cannot be created"
        raise RunDirError(f"{existing} is a file, not a folder{inside}", loc, "name a folder that is not inside a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"the folder {existing} is not writable", loc,
                          "fix its permissions or choose a folder you can write to")
    if existing != path:
        return
    for sub in [path / "checkpoints", *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
        if sub.exists() and not (sub.is_dir() and os.access(sub, os.W_OK | os.X_OK)):
            raise RunDirError(f"{sub} is {'not writable' if sub.is_dir() else 'a file, not a folder'}", loc,
                              "fix it (or move it away) and run again; nothing was written")
    wrong = [path / name for name in RUN_FILES] + [path / "checkpoints" / n for n in CHECKPOINT_FILES]
    for item in wrong:
        if (item.exists() or item.is_symlink()) and not item.is_file():
            raise RunDirError(f"{item} is not a regular file", loc,
                              "skiptrain writes this file of the run; move what is there away and run again")


def _remove_orphans(path: Path) -> None:
    """Remove what a kill during an atomic write of a run file left (``outputs.atomic_output``'s
    ``.NAME.*.tmp`` folders); the files themselves are intact, old or new."""
    for name in RUN_FILES:
        for orphan in path.glob(f".{name}.*.tmp"):
            if orphan.is_dir() and not orphan.is_symlink():
                shutil.rmtree(orphan, ignore_errors=True)
            else:
                orphan.unlink(missing_ok=True)


def _is_empty(path: Path) -> bool:
    try:
        return not any(path.iterdir())
    except OSError:
        return False


def _checked(run_dir: str | os.PathLike) -> Path:
    if not str(run_dir).strip():
        raise RunDirError("--run-dir is empty", None,
                          "name a new folder, e.g. --run-dir runs/my-run (or leave --run-dir out)")
    path = Path(run_dir)
    if path.is_symlink() and not path.exists():  # exists() follows the link: a loop or a dangling link
        raise RunDirError(f"--run-dir {path} is a link that leads to no folder (dangling, or a loop)", None,
                          "name a new folder, or point the link at an existing folder")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--run-dir {path} is a file, not a folder", None,
                          "name a new folder, or leave --run-dir out")
    return path


def _fresh(out_dir: str, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(out_dir) / f"{name}-{stamp}"
    k = 1
    while path.exists():
        k += 1
        path = Path(out_dir) / f"{name}-{stamp}-{k}"
    return path


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def target(out_dir: str, name: str, run_dir: str | os.PathLike | None, force: bool = False,
           resumed_from: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Where a run may write and how: ``(path, "new" | "continue" | "replace")``; writes nothing.
    Raises RunDirError where skiptrain may not write (see the module's docstring)."""
    own = Path(resumed_from).parent.parent if resumed_from is not None else None
    own_id = run_id(own) if own is not None and Path(resumed_from).parent.name == "checkpoints" else None
    if run_dir is None:
        if own_id is not None:  # continue the checkpoint's own run
            _writable(own, "--resume")
            return own, "continue"
        _writable(Path(out_dir), "train.out_dir")
        return _fresh(out_dir, name), "new"
    path = _checked(run_dir)
    if not path.exists() or _is_empty(path):
        _writable(path, "--run-dir")
        return path, "new"
    if run_id(path) is None:
        raise RunDirError(f"--run-dir {path} is a folder with files that is not a skiptrain run", None,
                          "skiptrain never writes into folders it did not create (not even with "
                          "--force): name a new or empty folder, or leave --run-dir out")
    _writable(path, "--run-dir")
    if own is not None and own_id is not None and _same(own, path):
        return path, "continue"
    if not force and resumed_from is None and not resumable(path):
        raise RunDirError(no_checkpoint(path).message, Location("--run-dir"), no_checkpoint(path).hint)
    if not force:
        what = "another run" if resumed_from is not None else "a run"
        resume = "" if resumed_from is not None else f"continue it with --resume {path}, "
        raise RunDirError(f"--run-dir {path} already holds {what}", None,
                          f"{resume}pick another --run-dir, or pass --force to replace that run whole")
    return path, "replace"


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.jsonl"

    @classmethod
    def create(cls, out_dir: str, name: str, run_dir: str | None, force: bool = False) -> "RunDir":
        """A new run (see the module's docstring for where it may go)."""
        return cls.open(out_dir, name, run_dir, force)

    @classmethod
    def open(cls, out_dir: str, name: str, run_dir: str | os.PathLike | None, force: bool = False,
             resumed_from: str | os.PathLike | None = None) -> "RunDir":
        """The run directory a run writes into: new, or (``resumed_from``: a checkpoint file) the one
        that checkpoint belongs to. Raises RunDirError, having written nothing, where it may not write."""
        path, action = target(out_dir, name, run_dir, force, resumed_from)
        if action == "continue":
            return cls._continue(path, name)
        if action == "replace":
            cls._clear(path)
        return cls._new(path, name)

    @classmethod
    def _new(cls, path: Path, name: str) -> "RunDir":
        run = cls(path)
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        run._write_marker(name)
        return run

    @classmethod
    def _continue(cls, path: Path, name: str) -> "RunDir":
        run = cls(path)
        _remove_orphans(path)
        if not (path / MARKER).is_file():  # an older run: mark it now
            run._write_marker(name)
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        return run

    @staticmethod
    def _clear(path: Path) -> None:
        """Remove everything in a run directory, the marker last (a kill midway leaves a run)."""
        for entry in path.iterdir():
            if entry.name == MARKER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        (path / MARKER).unlink(missing_ok=True)

    def _write_marker(self, name: str) -> None:
        job = {"job": os.environ["TORCHELASTIC_RUN_ID"]} if os.environ.get("TORCHELASTIC_RUN_ID") else {}
        self._write(MARKER, json.dumps({"name": name, "id": secrets.token_hex(8),
                                        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **job}) + "\n")

    def _write(self, name: str, text: str) -> None:
        """Every file of a run but the appended metrics: a temporary beside it, fsync, ``os.replace``."""
        write_text(self.path / name, text, option=str(self.path / name))

    def write_config(self, config: dict) -> None:
        self._write("config.yaml", yaml.safe_dump(config, sort_keys=False))

    def write_transfer(self, report: dict[str, Any]) -> None:
        """transfer.json: what ``train.init`` loaded into this run's first weights (written once, by a new run)."""
        self._write("transfer.json", json.dumps(report, indent=2) + "\n")

    def history(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        data = read_bytes(self.metrics_path, "metrics file", METRICS_LIMIT, RunDirError)
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything after it is discarded
        return rows

    def truncate_history(self, epochs_done: int) -> None:
        """Keep the metrics of epochs that the resumed checkpoint includes: each epoch once."""
        rows = [r for r in self.history() if r.get("epoch", 0) <= epochs_done]
        self._write_lines(rows)

    def _write_lines(self, rows: list[dict]) -> None:
        self._write(self.metrics_path.name, "".join(json.dumps(r) + "\n" for r in rows))

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write("summary.json", json.dumps(summary, indent=2) + "\n")

    def plot_curves(self) -> Path | None:
        """curves.png: losses and the validation metric against epochs."""
        rows = self.history()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in rows]
        metric = next((k for k in rows[0] if k.startswith("val_") and k != "val_loss"), None)  # the task's
        fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(10 if metric else 5, 4), squeeze=False)
        axes[0][0].plot(epochs, [r["train_loss"] for r in rows], label="train")
        if "val_loss" in rows[0]:
            axes[0][0].plot(epochs, [r.get("val_loss") for r in rows], label="val")
        axes[0][0].set(xlabel="epoch", ylabel="loss", title="loss")
        axes[0][0].legend()
        if metric:
            axes[0][1].plot(epochs, [r.get(metric) for r in rows], color="tab:green")
            axes[0][1].set(xlabel="epoch", ylabel=metric, title=metric)
        fig.tight_layout()
        target = self.path / "curves.png"
        try:
            with atomic_output(target, option=str(target)) as temp:
                fig.savefig(temp, dpi=100)
        finally:
            plt.close(fig)
        return target
