"""The dataset registry: a dict, a decorator, and what a dataset function returns.

A dataset function takes a :class:`Request` (the parsed ``data:`` options and the
model's input) and returns a :class:`Source`: its splits either as in-memory tensors
``(x, y)`` (batched on the device, see ``batches.py``) or as ``torch.utils.data.Dataset``
objects (batched by a DataLoader). ``load_data`` does the rest: the validation split,
normalisation statistics, augmentation and batching are the same for every dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import DataError, Location
from ..registries import Registry
from .options import DataOptions


@dataclass
class Request:
    """What a dataset function is asked for."""

    options: DataOptions
    input_shape: tuple[int, ...]  # one sample as the model receives it
    input_dtype: str  # "float32" | "int64"
    task: str | None  # a name in skiptrain.tasks.TASKS; None: the dataset's own task
    ignore_index: int | None = None  # train.loss.ignore_index: a target value the loss leaves out


@dataclass
class Source:
    """A dataset's splits and facts, before batching.

    A split is ``(x, y)`` tensors on the CPU (x in the dataset's native sample shape,
    channels first) or a ``Dataset`` of ``(x, y)`` items. ``scale`` turns stored inputs
    into model units (``1/255`` for uint8 images). ``val`` is None unless the dataset
    has its own; then ``load_data`` carves it from ``train`` by ``val_fraction``.
    """

    task: str  # the task its targets are for: a name in skiptrain.tasks.TASKS
    train: Any
    test: Any = None
    val: Any = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    scale: float = 1.0
    # A dataset that makes its own batches (text: random windows): (device, rank, world_size) ->
    # (train, val, test) Batches; load_data then adds nothing. ``meta`` goes into the checkpoint's
    # `data`, ``run_files`` (name -> text) into the run directory.
    batches: Callable[..., tuple[Any, Any, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    run_files: dict[str, str] = field(default_factory=dict)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, tuple)


DatasetFn = Callable[[Request], Source]
DATASETS: Registry[DatasetFn] = Registry("dataset", DataError)


def dataset(name: str) -> Callable[[DatasetFn], DatasetFn]:
    """Register a dataset function under ``name`` (registering a name twice raises)."""
    return DATASETS.register(name)


def get_dataset(name: str, location: Location | None = None) -> DatasetFn:
    """The registered dataset function, or a DataError with a did-you-mean."""
    return DATASETS.get(name, location)


def check_task(name: str, have: str, want: str | None) -> None:
    """A dataset made for one task cannot train another (``want`` None: no request)."""
    if want is not None and have != want:
        raise DataError(f"`{name}` is a {have} dataset, but the run's task is {want}", None,
                        f"set `train.task: {have}`, or pick a {want} dataset")
