"""Batches: the epoch plan shared by every split, in memory or through a DataLoader.

An epoch's order and its augmentation randomness depend only on (seed, epoch, batch
index), never on global RNG state, so ``epoch(e, start=k)`` is exactly the tail of
``epoch(e)`` and a resumed run sees the same batches. With ``world_size > 1`` every
rank computes the same global order and takes its contiguous slice of each global batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from .augment import Draw, Step

SHUFFLE, AUGMENT, SPLIT, SUBSET = range(4)  # independent random streams of one seed


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, stream, epoch, batch, ...)."""
    words = np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def cpu_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@runtime_checkable
class Batches(Protocol):
    """Batches of one split. ``num_samples`` counts the whole split (all ranks);
    ``batch_size`` is the size of the batches this object yields (this rank's share)."""

    num_samples: int
    batch_size: int

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class Plan:
    """Which samples make up each batch of an epoch, for one rank."""

    num_samples: int
    batch_size: int  # the global batch
    train: bool  # shuffled, last partial batch dropped; else in order, everything kept
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def __len__(self) -> int:
        if self.train:  # drop the last partial batch, unless it is the only one
            return max(1, self.num_samples // self.batch_size)
        return -(-self.num_samples // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor | None:
        """The epoch's permutation (on the CPU, the same on every device), or None for in order."""
        if not self.train:
            return None
        return torch.randperm(self.num_samples, generator=cpu_generator(self.seed, SHUFFLE, epoch))

    def bounds(self, batch: int) -> tuple[int, int, int, int]:
        """``(first, last)`` positions in the order of this rank's part of the batch, the
        global batch's size, and this rank's offset inside it."""
        begin = batch * self.batch_size
        total = min(self.batch_size, self.num_samples - begin)
        lo, hi = self.rank * total // self.world_size, (self.rank + 1) * total // self.world_size
        return begin + lo, begin + hi, total, lo

    def draw(self, epoch: int, batches: range, device: torch.device) -> Draw:
        """The augmentation numbers of ``batches``, each from a generator of (seed, epoch, batch)."""
        parts = []
        for batch in batches:
            first, last, total, lo = self.bounds(batch)
            parts.append((derive_seed(self.seed, AUGMENT, epoch, batch), total, lo, lo + last - first))
        return Draw(parts, device)


@dataclass
class Pipeline:
    """Raw stored batch -> model input: float, augment, normalise, reshape.

    Augmentations run on the dataset's native sample shape in input units (before
    normalisation, so a crop pads with black as torchvision does); the reshape to the
    model's input shape (``[1, 40]`` -> ``[40]``) comes last.
    """

    input_shape: tuple[int, ...]
    scale: float = 1.0
    mean: torch.Tensor | None = None  # [C] per channel (sample axis 0), or [1]
    std: torch.Tensor | None = None
    steps: list[Step] = field(default_factory=list)
    spatial_targets: bool = False  # y is a mask per input position: augmentations move it with x
    float_input: bool = True

    def to(self, device: torch.device) -> "Pipeline":
        move = (lambda t: None if t is None else t.to(device))
        return Pipeline(self.input_shape, self.scale, move(self.mean), move(self.std), self.steps,
                        self.spatial_targets, self.float_input)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, draw: Draw | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.float_input:
            x = x.to(torch.float32)
            if self.scale != 1.0:
                x = x * self.scale
            if draw is not None and self.steps:
                mask = y if self.spatial_targets else None
                for step in self.steps:
                    x, mask = step(x, mask, draw)
                y = mask if self.spatial_targets else y
            if self.mean is not None:
                shape = (1, -1) + (1,) * (x.dim() - 2) if len(self.mean) > 1 else (1,) * x.dim()
                x = (x - self.mean.view(shape)) / self.std.view(shape)
        return x.reshape(x.shape[0], *self.input_shape), y


class _PlannedBatches:
    """What every split's batches share: the plan, and the sizes the Batches protocol reports."""

    def __init__(self, plan: Plan, pipeline: Pipeline, device: torch.device, augment: bool):
        self.device = torch.device(device)
        self.plan, self.pipeline, self.augment = plan, pipeline.to(self.device), augment
        self.num_samples = plan.num_samples
        self.batch_size = plan.batch_size // plan.world_size
        self.global_batch_size = plan.batch_size

    def __len__(self) -> int:
        return len(self.plan)

    def draw(self, epoch: int, batches: range) -> Draw | None:
        return self.plan.draw(epoch, batches, self.device) if self.augment else None


class TensorBatches(_PlannedBatches):
    """A split held as tensors on the device, batched there with index tensors.

    On a GPU, ``chunk`` consecutive batches are gathered and augmented together, so that each
    operation is one kernel launch per chunk instead of per batch; the batches are the same
    for any chunk size (each batch draws its own numbers).
    """

    CHUNK_BYTES = 64 * 2**20

    def __init__(self, x: torch.Tensor, y: torch.Tensor, plan: Plan, pipeline: Pipeline,
                 device: torch.device, augment: bool = False, chunk: int | None = None):
        super().__init__(plan, pipeline, device, augment)
        self.x, self.y = x.to(self.device), y.to(self.device)
        if chunk is None:
            batch_bytes = max(1, self.batch_size * x[0].numel() * 4)
            chunk = 1 if self.device.type == "cpu" else max(1, min(8, self.CHUNK_BYTES // batch_bytes))
        self.chunk = chunk

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.plan.order(epoch)
        for chunk_start in range(start, len(self.plan), self.chunk):
            batches = range(chunk_start, min(chunk_start + self.chunk, len(self.plan)))
            spans = [self.plan.bounds(batch)[:2] for batch in batches]
            contiguous = order is None and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            if contiguous:
                x, y = self.x[spans[0][0]:spans[-1][1]], self.y[spans[0][0]:spans[-1][1]]
            else:
                pieces = [torch.arange(a, b) if order is None else order[a:b] for a, b in spans]
                index = torch.cat(pieces).to(self.device, non_blocking=True)
                x, y = self.x[index], self.y[index]
            x, y = self.pipeline(x, y, self.draw(epoch, batches))
            sizes = [b - a for a, b in spans]
            yield from zip(x.split(sizes), y.split(sizes))


class EpochBatchSampler(torch.utils.data.Sampler):
    """A DataLoader batch sampler that follows a Plan; ``set_epoch`` picks epoch and start."""

    def __init__(self, plan: Plan):
        self.plan, self.epoch, self.start = plan, 0, 0
        self._order: tuple[int | None, torch.Tensor | None] = (None, None)  # (epoch, its permutation)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, len(self.plan) - self.start)

    def __iter__(self):
        for batch in range(self.start, len(self.plan)):
            yield self.indices(batch - self.start)

    def indices(self, position: int) -> list[int]:
        """The samples of the ``position``-th batch this sampler yields (of the epoch set last)."""
        if self._order[0] != self.epoch:
            self._order = (self.epoch, self.plan.order(self.epoch))
        order = self._order[1]
        first, last, _, _ = self.plan.bounds(self.start + position)
        return list(range(first, last)) if order is None else order[first:last].tolist()


def located(loader: torch.utils.data.DataLoader, indices: Callable[[int], Iterable[int]]) -> Iterator:
    """``loader``'s batches; when a worker fails, its batch is read again here to raise the original error.

    A DataLoader worker's exception reaches the main process rebuilt from its traceback text, so a
    DataError naming a bad file would arrive without its location and hint and with a traceback in
    its message. Reading the samples of the failed batch (``indices(k)`` for the k-th batch) in
    this process raises the error as the dataset made it; if they read fine, the worker's error stands.
    """
    batches = iter(loader)
    position = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as error:
            if not loader.num_workers:
                raise
            batches, error.__traceback__ = None, None  # its workers stop now, not when a collector finds them
            for index in indices(position):
                loader.dataset[index]
            raise error
        yield batch
        position += 1


class LoaderBatches(_PlannedBatches):
    """A split read from files by a DataLoader (workers decode and resize), then moved to
    the device where the same batch pipeline as in memory runs."""

    def __init__(self, dataset, plan: Plan, pipeline: Pipeline, device: torch.device,
                 num_workers: int = 2, augment: bool = False):
        super().__init__(plan, pipeline, device, augment)
        self.sampler = EpochBatchSampler(plan)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if start >= len(self.plan):
            return
        self.sampler.set_epoch(epoch, start)
        blocking = self.device.type != "cuda"
        for batch, (x, y) in enumerate(located(self.loader, self.sampler.indices), start):
            x = x.to(self.device, non_blocking=not blocking)
            y = y.to(self.device, non_blocking=not blocking)
            yield self.pipeline(x, y, self.draw(epoch, range(batch, batch + 1)))
