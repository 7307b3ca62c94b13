"""Datasets that need no files: digits, mnist1d, shapes and synthetic.

Their contents are fixed (generated or split with seed 0 whatever the run's seed), so
every run is measured on the same test set; the run's seed picks the validation carve,
the shuffle and the augmentation.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import DataError
from ..tasks import DEFAULT, TASKS
from .registry import Request, Source, check_task, dataset

DIGIT_NAMES = [str(d) for d in range(10)]
_CACHE: dict[str, tuple[torch.Tensor, ...]] = {}  # generated arrays, per process


@contextmanager
def global_rng_kept():
    """Put the global ``random`` and ``np.random`` states back afterwards: mnist1d reseeds
    both, and importing scikit-learn draws from ``random``."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _float_input(name: str, request: Request) -> None:
    if request.input_dtype != "float32":
        raise DataError(f"`{name}` gives float inputs, but the model takes {request.input_dtype}", None,
                        "set `model.input_dtype: float32`")


@dataset("digits")
def digits(request: Request) -> Source:
    """scikit-learn's 8x8 digits: [1, 8, 8] in [0, 1], a fixed stratified 80/20 split."""
    check_task("digits", "classification", request.task)
    _float_input("digits", request)
    if "digits" not in _CACHE:
        with global_rng_kept():
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split

            bunch = load_digits()
        x = torch.from_numpy(bunch.data.astype(np.float32) / 16.0).view(-1, 1, 8, 8)
        y = torch.from_numpy(bunch.target.astype(np.int64))
        train, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=bunch.target)
        train, test = torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))
        _CACHE["digits"] = (x[train], y[train], x[test], y[test])
    x, y, x_test, y_test = _CACHE["digits"]
    return Source("classification", (x, y), (x_test, y_test), num_classes=10, class_names=DIGIT_NAMES)


@dataset("mnist1d")
def mnist1d(request: Request) -> Source:
    """MNIST-1D, generated offline: 4000 train / 1000 test signals [1, 40]."""
    check_task("mnist1d", "classification", request.task)
    _float_input("mnist1d", request)
    if "mnist1d" not in _CACHE:
        try:
            with global_rng_kept():  # make_dataset reseeds the global `random` and `np.random`
                from mnist1d.data import get_dataset_args, make_dataset
                made = make_dataset(get_dataset_args())
        except ImportError as exc:
            raise DataError(f"the mnist1d package is not importable ({exc})", None,
                            "pip install mnist1d") from None
        _CACHE["mnist1d"] = tuple(torch.from_numpy(np.asarray(made[key], dtype=dtype)).clone()
                                  for key, dtype in (("x", np.float32), ("y", np.int64),
                                                     ("x_test", np.float32), ("y_test", np.int64)))
    x, y, x_test, y_test = _CACHE["mnist1d"]
    return Source("classification", (x.unsqueeze(1), y), (x_test.unsqueeze(1), y_test),
                  num_classes=10, class_names=DIGIT_NAMES)


def draw_shapes(count: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images [count, 1, H, W] of up to three circles and squares on noise, and
    their masks [count, H, W] (0 background, 1 circle, 2 square; later shapes on top).

    Vectorised over samples: each shape is drawn in a small window around its centre and
    written into the flattened batch with one indexed assignment per shape slot.
    """
    gen = torch.Generator().manual_seed(seed)
    image = (0.2 + 0.08 * torch.randn(count, height, width, generator=gen)).clamp_(0, 1)
    mask = torch.zeros(count, height, width, dtype=torch.uint8)
    side = min(height, width)
    window = 2 * math.ceil(0.2 * side) + 3
    steps = torch.arange(window) - window // 2
    base = torch.arange(count).view(count, 1, 1) * (height * width)
    for slot in range(3):
        present = torch.rand(count, generator=gen) < (1.0 if slot == 0 else 0.6)
        kind = torch.randint(1, 3, (count,), generator=gen)
        radius = side * (0.08 + 0.12 * torch.rand(count, generator=gen))
        cy = radius + torch.rand(count, generator=gen) * (height - 2 * radius)
        cx = radius + torch.rand(count, generator=gen) * (width - 2 * radius)
        brightness = 0.55 + 0.45 * torch.rand(count, generator=gen)
        rows = cy.round().long().view(count, 1) + steps  # [count, window] pixel coordinates
        cols = cx.round().long().view(count, 1) + steps
        dy = (rows - cy.view(count, 1)).view(count, window, 1)
        dx = (cols - cx.view(count, 1)).view(count, 1, window)
        r = radius.view(count, 1, 1)
        circle = dy.square() + dx.square() <= r.square()
        square = torch.maximum(dy.abs(), dx.abs()) <= 0.886 * r  # the circle's area
        inside = torch.where(kind.view(count, 1, 1) == 1, circle, square) & present.view(count, 1, 1)
        inside &= ((rows >= 0) & (rows < height)).view(count, window, 1)
        inside &= ((cols >= 0) & (cols < width)).view(count, 1, window)
        where = (base + rows.view(count, window, 1) * width + cols.view(count, 1, window))[inside]
        shade = brightness.view(count, 1, 1) + 0.05 * torch.randn(count, window, window, generator=gen)
        image.view(-1)[where] = shade[inside].clamp(0, 1)
        mask.view(-1)[where] = kind.view(count, 1, 1).expand(count, window, window)[inside].to(torch.uint8)
    return image.unsqueeze(1), mask.long()


@dataset("shapes")
def shapes(request: Request) -> Source:
    """Synthetic segmentation: circles and squares at the model input's H, W (64x64
    by default); ``num_samples`` training images (2000) and a quarter as many for test."""
    check_task("shapes", "segmentation", request.task)
    _float_input("shapes", request)
    shape = request.input_shape
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"`shapes` gives images [1, H, W] (or [3, H, W]); the model's input is {list(shape)}",
                        request.options.where("dataset"), "set `model.input: [1, 64, 64]`")
    n_train = request.options.num_samples or 2000
    n_test = max(1, n_train // 4)
    key = f"shapes-{n_train + n_test}-{shape[1]}x{shape[2]}"
    if key not in _CACHE:
        _CACHE[key] = draw_shapes(n_train + n_test, shape[1], shape[2], seed=0)
    x, y = _CACHE[key]
    return Source("segmentation", (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]),
                  num_classes=3, class_names=["background", "circle", "square"])


@dataset("synthetic")
def synthetic(request: Request) -> Source:
    """Random inputs of the model's input shape (token ids in [0, 100) for int64 inputs)
    and random targets for the run's task (its ``synthetic_targets``); splits 80/10/10 (val by
    ``val_fraction``)."""
    options, shape, task = request.options, request.input_shape, TASKS.get(request.task or DEFAULT)
    n = options.num_samples or 1024
    k = options.num_classes or 10
    gen = torch.Generator().manual_seed(0)
    if request.input_dtype == "int64":
        x = torch.randint(0, 100, (n, *shape), generator=gen)
    else:
        x = torch.randn((n, *shape), generator=gen)
    y = task.synthetic_targets(n, shape, k, gen, request.options.where("dataset"))
    n_test = max(1, n // 10)
    n_val = int(round(n * options.val_fraction))
    n_train = n - n_test - n_val
    if n_train < 1:
        raise DataError(f"synthetic: {n} samples leave none for training", options.where("num_samples"),
                        "raise `num_samples`")
    val = (x[n_train:n_train + n_val], y[n_train:n_train + n_val]) if n_val else None
    return Source(task.name, (x[:n_train], y[:n_train]), (x[n - n_test:], y[n - n_test:]), val=val,
                  num_classes=k if task.has_classes else None)
