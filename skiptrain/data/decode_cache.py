"""Decode image folders once: the first pass keeps the resized uint8 samples, later passes run in memory.

``imagefolder`` and ``segfolder`` decode and resize every file in DataLoader workers. With
``data.cache: true`` (the default) a split's batches are :class:`CachedBatches`: its first pass
is the DataLoader's, exactly as without the cache, and each batch's uint8 samples (and labels or
masks) are kept as they arrive. From the next pass on, whatever that pass missed (the dropped last
partial batch, another rank's share) is decoded once, and the split is batched by
``TensorBatches``, the in-memory path of ``digits`` and ``mnist1d``: same order, same augmentation
numbers, same pipeline, so the results are bitwise those of the uncached run.

Where the samples live: in memory when the split takes at most :data:`MEMORY_BUDGET` bytes;
otherwise, on the CPU, in a memory-mapped file in the run directory (``cache/decoded-<id>.bin``,
written under a temporary name and renamed when complete). The file's header holds a key: a digest
of every file's path, size and ``st_mtime_ns``, the target of each sample, the target size and
mode, and the decode settings (PIL's version and pixel limit, the mask checks); a resumed run in the
same directory reuses a file whose key matches and rebuilds one that is stale, cut short or
unreadable, with a one-line warning. Without a run directory (another rank, ``evaluate``) a split
over the budget is not cached.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import warn
from .batches import LoaderBatches, Pipeline, Plan, TensorBatches, located

MEMORY_BUDGET = 2 * 2**30  # bytes of decoded samples (images and targets) one split may hold in memory
MAGIC = b"SKIPTRAIN-DECODED-SAMPLES 1\n"
HEADER_BYTES = 4096
FOLDER = "cache"  # inside the run directory


# ---------------------------------------------------------------- what the cache is keyed by

def _base(dataset) -> tuple[Any, list[int]]:
    """The dataset under any Subsets, and the indices into it of the split's positions."""
    positions = list(range(len(dataset)))
    while isinstance(dataset, torch.utils.data.Subset):
        positions = [dataset.indices[p] for p in positions]
        dataset = dataset.dataset
    return dataset, positions


def split_key(dataset) -> tuple[str, str] | None:
    """``(name, key)`` of a split: ``name`` from its files' paths (a stale file has the same name and is
    replaced), ``key`` also from each file's size and mtime_ns, each sample's target and the decode
    settings. None: the dataset cannot say which files it reads (then nothing is written to disk)."""
    base, positions = _base(dataset)
    if not hasattr(base, "decode_settings") or not hasattr(base, "sample_files"):
        return None
    from PIL import Image

    settings = {"format": 1, "pil": Image.__version__, "max_pixels": Image.MAX_IMAGE_PIXELS, **base.decode_settings()}
    name, key = hashlib.sha256(str(settings["kind"]).encode()), hashlib.sha256()
    key.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for index in positions:
        files, target = base.sample_files(index)
        for path in files:
            try:
                stat = os.stat(path)
            except OSError:
                return None
            name.update(f"{path}\0".encode())
            key.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        key.update(f"{target}\n".encode())
    return name.hexdigest()[:20], key.hexdigest()


# ---------------------------------------------------------------- the cache file

def _layout(count: int, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Offsets of the samples and the targets, and the file's size."""
    x_bytes = count * int(np.prod(x_shape, dtype=np.int64))
    y_bytes = count * int(np.prod(y_shape, dtype=np.int64)) * 8
    return HEADER_BYTES, HEADER_BYTES + x_bytes, HEADER_BYTES + x_bytes + y_bytes


def _header(key: str, count: int, x_shape, y_shape) -> bytes:
    text = MAGIC + json.dumps({"key": key, "count": count, "x": list(x_shape), "y": list(y_shape)}).encode() + b"\n"
    return text.ljust(HEADER_BYTES, b" ")


def read_header(path: Path) -> tuple[dict | None, str]:
    """The header of a cache file and ``""``, or None and why it cannot be used."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if len(head) < HEADER_BYTES or not head.startswith(MAGIC):
        return None, "not a decode cache (bad header)"
    try:
        meta = json.loads(head[len(MAGIC):].split(b"\n", 1)[0])
        count, x_shape, y_shape = int(meta["count"]), tuple(map(int, meta["x"])), tuple(map(int, meta["y"]))
        if count < 0 or any(d < 1 for d in x_shape + y_shape) or not isinstance(meta["key"], str):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return None, "not a decode cache (bad header)"
    if size != _layout(count, x_shape, y_shape)[2]:
        return None, f"cut short or padded ({size:,} bytes, not {_layout(count, x_shape, y_shape)[2]:,})"
    return {"key": meta["key"], "count": count, "x": x_shape, "y": y_shape}, ""


def _mapped(path: Path, count: int, x_shape, y_shape, mode: str) -> tuple[np.memmap, np.memmap]:
    x_at, y_at, _ = _layout(count, x_shape, y_shape)
    x = np.memmap(path, np.uint8, mode, x_at, (count, *x_shape))
    y = np.memmap(path, "<i8", mode, y_at, (count, *y_shape))
    return x, y


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks now: a disk that fills up under a memory map kills the process (SIGBUS)
    instead of raising, so the space is claimed while running out of it is still an OSError."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:
        os.ftruncate(fd, size)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # a folder some filesystems cannot fsync; the rename is still atomic
    finally:
        os.close(fd)


class Store:
    """One split's decoded samples ``x`` (uint8) and targets ``y`` (int64), and which are filled."""

    def __init__(self, x: np.ndarray, y: np.ndarray, filled: bool = False, file: Path | None = None,
                 final: Path | None = None, key: str = ""):
        self.x, self.y = x, y
        self.seen = np.full(len(x), filled, dtype=bool)
        self.file, self.final, self.key = file, final, key  # the temporary file while building, its name

    @classmethod
    def new(cls, count: int, x_shape, y_shape, folder: Path | None, ident: tuple[str, str] | None,
            cuda: bool) -> "Store | None":
        """A store in memory when it fits the budget, else a file in ``folder`` (CPU only); None: neither."""
        if _layout(count, x_shape, y_shape)[2] - HEADER_BYTES <= MEMORY_BUDGET:
            return cls(np.empty((count, *x_shape), np.uint8), np.empty((count, *y_shape), np.int64))
        if folder is None or ident is None or cuda:
            return None
        name, key = ident
        final = folder / FOLDER / f"decoded-{name}.bin"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            for old in final.parent.glob(f".decoded-{name}.*.tmp"):  # a build a kill cut short
                old.unlink(missing_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".decoded-{name}.", suffix=".tmp", dir=final.parent)
            try:
                _reserve(fd, _layout(count, x_shape, y_shape)[2])
            finally:
                os.close(fd)
            x, y = _mapped(Path(temp), count, x_shape, y_shape, "r+")
        except OSError as exc:
            warn(f"cannot write the decode cache in {final.parent} ({exc.strerror or exc}): "
                 "this split is decoded every epoch")
            return None
        return cls(x, y, file=Path(temp), final=final, key=key)

    @classmethod
    def existing(cls, folder: Path | None, ident: tuple[str, str] | None) -> "Store | None":
        """A complete cache file of this split (matching key) in ``folder``; a stale or broken one is removed."""
        if folder is None or ident is None:
            return None
        path = folder / FOLDER / f"decoded-{ident[0]}.bin"
        if not path.exists():
            return None
        meta, why = read_header(path)
        if meta is not None and meta["key"] != ident[1]:
            meta, why = None, "stale (files or settings changed since it was written)"
        try:
            if meta is not None:
                x, y = _mapped(path, meta["count"], meta["x"], meta["y"], "c")  # copy-on-write: never written back
                return cls(x, y, filled=True)
        except (OSError, ValueError) as exc:
            why = f"unreadable ({getattr(exc, 'strerror', None) or exc})"
        warn(f"the decode cache {path} is {why}: rebuilding it")
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # the new one replaces it (or stays in memory) all the same
        return None

    def put(self, positions: list[int], x: torch.Tensor, y: torch.Tensor) -> None:
        self.x[positions] = x.numpy()
        self.y[positions] = y.numpy()
        self.seen[positions] = True

    def finish(self) -> None:
        """A file store is complete: write its header, fsync, rename it into place (nothing for memory)."""
        if self.file is None:
            return
        self.x.flush()
        self.y.flush()
        try:
            with open(self.file, "r+b") as f:
                f.write(_header(self.key, len(self.x), self.x.shape[1:], self.y.shape[1:]))
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.file, self.final)
            _fsync(self.final.parent)
        except OSError as exc:
            warn(f"cannot write the decode cache {self.final} ({exc.strerror or exc}); it stays for this run only")
        self.file = None


# ---------------------------------------------------------------- batches

class CachedBatches(LoaderBatches):
    """A file split whose first pass is the DataLoader's, kept; later passes run in memory (module doc)."""

    def __init__(self, dataset, plan: Plan, pipeline: Pipeline, device: torch.device,
                 num_workers: int = 2, augment: bool = False):
        super().__init__(dataset, plan, pipeline, device, num_workers, augment)
        self.folder: Path | None = None  # the run directory, where a split over the budget is kept
        self.store: Store | None = None
        self.memory: TensorBatches | None = None
        self.passes = 0
        self.enabled = True

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.memory is None and self.enabled and self.passes == 0 and self.device.type == "cpu":
            self.store = Store.existing(self.folder, split_key(self.loader.dataset))
        if self.memory is None and self.store is not None and (self.passes and self._mostly_seen()
                                                               or self.store.seen.all()):
            self._complete()
        self.passes += 1
        if self.memory is not None:
            yield from self.memory.epoch(epoch, start)
            return
        if start >= len(self.plan):
            return
        self.sampler.set_epoch(epoch, start)
        blocking = self.device.type != "cuda"
        for batch, (x, y) in enumerate(located(self.loader, self.sampler.indices), start):
            if self.enabled:
                self._keep(self.sampler.indices(batch - start), x, y)
            x = x.to(self.device, non_blocking=not blocking)
            y = y.to(self.device, non_blocking=not blocking)
            yield self.pipeline(x, y, self.draw(epoch, range(batch, batch + 1)))

    def _keep(self, positions: list[int], x: torch.Tensor, y: torch.Tensor) -> None:
        if self.store is None:
            if x.dtype != torch.uint8 or y.dtype != torch.int64:  # not decoded images: nothing to keep
                self.enabled = False
                return
            ident = split_key(self.loader.dataset) if self.folder is not None else None
            self.store = Store.new(self.plan.num_samples, tuple(x.shape[1:]), tuple(y.shape[1:]), self.folder,
                                   ident, self.device.type != "cpu")
            if self.store is None:
                self.enabled = False
                return
        self.store.put(positions, x, y)
        if self.store.seen.all():
            self.store.finish()  # a file store is complete: in place now, should the run stop before the next pass

    def _mostly_seen(self) -> bool:
        """The passes so far read at least half of this process's share: decoding the rest once is
        cheap. A pass cut short by ``limit_batches`` (a smoke test) or a 1/N shard of an evaluation
        split keeps the DataLoader instead of decoding the whole split."""
        return int(self.store.seen.sum()) * 2 * self.plan.world_size >= len(self.store.seen)

    def _complete(self) -> None:
        """Decode what the passes so far missed, then batch from the store."""
        missing = np.flatnonzero(~self.store.seen).tolist()
        if missing:
            subset = torch.utils.data.Subset(self.loader.dataset, missing)
            size = 64
            workers = self.loader.num_workers if len(missing) > 2 * size else 0
            loader = torch.utils.data.DataLoader(subset, batch_size=size, num_workers=workers)
            for k, (x, y) in enumerate(located(loader, lambda b: range(b * size, min(len(missing), b * size + size)))):
                self.store.put(missing[k * size:k * size + len(x)], x, y)
        self.store.finish()
        plan, pipeline = self.plan, self.pipeline
        self.memory = TensorBatches(torch.from_numpy(self.store.x), torch.from_numpy(self.store.y), plan, pipeline,
                                    self.device, augment=self.augment)


def keep_decoded_in(bundle, folder: Path) -> None:
    """Tell a data bundle's cached splits the run directory, where a split over the budget is kept."""
    for split in (bundle.train, bundle.val, bundle.test):
        if isinstance(split, CachedBatches):
            split.folder = Path(folder)
