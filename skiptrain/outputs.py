"""Files skiptrain writes at the user's request (`export -o`, `graph -o`, `schema -o`, `init -o`).

One place decides whether an output path may be written, before any work is done, and one
place writes it atomically:

- ``check_output(path, inputs, overwrite)`` refuses a path that is a folder, whose folder is
  missing, not a folder or not writable, that is the same file as one of the command's inputs
  (``os.path.samefile``: links and hard links included), or that already exists when the
  command does not overwrite by design.
- ``atomic_output(path)`` gives a temporary folder beside ``path`` to write ``path``'s name
  (and any companion such as ``<name>.data``) into; only when the block succeeds are the files
  fsynced and renamed over the old ones with ``os.replace``, and the folder fsynced. A failure
  or a kill leaves the previous file as it was, never an empty or half-written one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import Location, SkiptrainError


class OutputError(SkiptrainError):
    """An output path cannot be written: a folder, a missing or read-only folder, or an input."""

    kind = "output error"


def check_output(path: str | Path, inputs: Iterable[str | Path] = (), overwrite: bool = True,
                 option: str = "--output") -> Path:
    """``path`` as a Path when it may be written; an ``OutputError`` located at ``option`` otherwise."""
    out = Path(path)
    loc = Location(option)
    if str(path) == "" or out.name in ("", ".", ".."):
        raise OutputError(f"`{path}` is not a file name", loc, "give a file name, e.g. model.onnx")
    if out.is_dir():
        raise OutputError(f"{out} is a folder", loc, f"give a file name inside it, e.g. {out / 'out'}")
    parent = out.parent
    if not parent.exists():
        raise OutputError(f"the folder {parent} does not exist", loc, f"create it first: mkdir -p {parent}")
    if not parent.is_dir():
        raise OutputError(f"{parent} is a file, not a folder", loc, "give a path inside an existing folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"the folder {parent} is not writable", loc, "choose a folder you can write to")
    for source in inputs:
        if _same_file(out, Path(source)):
            raise OutputError(f"{out} is the command's input {source}; writing it would destroy the input",
                              loc, "give another file name")
    run_file = _run_file(out)
    if run_file:
        raise OutputError(f"{out} is {run_file}; skiptrain never writes over a run's own files", loc,
                          "give a new file name; writing a new file into a run directory is fine")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputError(f"{out} already exists", loc, "pass --force to overwrite it, or choose another file")
        if not out.is_file():
            raise OutputError(f"{out} exists and is not a regular file", loc, "give another file name")
    return out


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists: where a missing folder would be created, so the one
    whose kind (a folder, not a file) and permissions decide whether it can be."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def new_folder(path: str | Path, option: str = "--output-dir") -> Path:
    """A folder for a command's several outputs (``compare``): new, or existing and empty, so an
    earlier report or run in it is never replaced. Checked before any work; created here."""
    folder, loc = Path(path), Location(option)
    if str(path) == "":
        raise OutputError("an empty folder name", loc, "give a folder name, e.g. comparisons/first")
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise OutputError(f"{folder} is not a folder", loc, "give a new folder name")
        if any(folder.iterdir()):
            raise OutputError(f"{folder} already holds files (an earlier comparison?); they are never replaced",
                              loc, "give a new folder name, or remove that folder first")
    parent = nearest_existing(folder.resolve().parent)
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create {folder}: {parent} is not a writable folder", loc,
                          "choose a folder you can write to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {exc.strerror or exc}", loc, "choose another folder") from None
    return folder


def _run_file(out: Path) -> str | None:
    """What ``out`` is to a run directory (its checkpoint, config, metrics...), or None."""
    from .training.rundir import RUN_FILES, run_id

    if not (out.exists() or out.is_symlink()):
        return None
    parent = out.parent.resolve()
    if out.name in RUN_FILES and run_id(parent):
        return f"the run {parent}'s {out.name}"
    if parent.name == "checkpoints" and run_id(parent.parent):
        return f"a checkpoint file of the run {parent.parent}"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError, ValueError):
        return False


@contextlib.contextmanager
def atomic_output(path: str | Path, option: str = "--output") -> Iterator[Path]:
    """Yield a temporary path with ``path``'s name; on success move it (and companions) into place.

    The temporary folder is created beside ``path``, so the rename stays on one filesystem and
    file names written inside the file (an ONNX ``<name>.data`` location) remain valid.
    """
    final = Path(path)
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {final.parent}: {exc.strerror or exc}", Location(option)) from None
    try:
        temp = scratch / final.name
        yield temp
        written = sorted(scratch.iterdir(), key=lambda p: p.name == final.name)  # the main file last
        try:
            for item in written:
                _fsync(item)
            for item in written:
                os.replace(item, final.parent / item.name)
            _fsync(final.parent)
        except OSError as exc:
            raise OutputError(f"could not write {final}: {exc.strerror or exc}", Location(option),
                              "the previous file, if any, is unchanged") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_text(path: str | Path, text: str, option: str = "--output") -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, fsync, ``os.replace``)."""
    final = Path(path)
    with atomic_output(final, option) as temp:
        try:
            temp.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"could not write {final}: {exc.strerror or exc}", Location(option),
                              "the previous file, if any, is unchanged") from None
    return final


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # some filesystems cannot open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise  # a file that cannot reach the disk is a failed write
    finally:
        os.close(fd)
