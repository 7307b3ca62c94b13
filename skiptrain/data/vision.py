"""torchvision's classic datasets, read from their real on-disk formats and held in memory.

torchvision's classes find, check (and with ``download: true`` fetch) the files; their
whole arrays (``.data``, ``.targets``) then become uint8 tensors that use the fast
in-memory path. Nothing is downloaded unless the config says so.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .prepare import fit_images
from .registry import Request, Source, check_task, dataset

# name -> (torchvision class, the folder under `root` where its files live)
TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "mnist": ("MNIST", "MNIST/raw"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw"),
}
_READ_ERRORS = (RuntimeError, OSError, EOFError, ValueError, TypeError, KeyError, AssertionError,
                pickle.UnpicklingError)


def _open(name: str, request: Request, train: bool):
    import torchvision.datasets

    options = request.options
    cls_name, folder = TORCHVISION[name]
    expected = expected_folder(name, options.root).resolve()
    try:
        return getattr(torchvision.datasets, cls_name)(str(options.root), train=train, download=options.download)
    except _READ_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if options.download:
            raise DataError(f"could not download `{name}` into {expected}: {reason}", options.where("root"),
                            f"this machine may have no network access: download {name} on one that has "
                            f"(`download: true`) and copy the files into {expected}") from None
        raise DataError(f"`{name}` was not found in {expected} ({reason})", options.where("root"),
                        f"put the {name} files in {expected} (as torchvision's {cls_name} stores them), "
                        f"point `root:` at the folder that holds {folder.split('/')[0]}, or set "
                        f"`download: true` on a machine with network access") from None


def _arrays(raw) -> tuple[torch.Tensor, torch.Tensor]:
    data = raw.data if isinstance(raw.data, torch.Tensor) else torch.from_numpy(np.asarray(raw.data))
    if data.dim() == 3:  # MNIST-like: [N, 28, 28]
        data = data.unsqueeze(1)
    else:  # CIFAR: [N, 32, 32, 3] channels last
        data = data.permute(0, 3, 1, 2)
    targets = torch.as_tensor(np.asarray(raw.targets), dtype=torch.int64)
    return data.contiguous(), targets


def torchvision_dataset(name: str):
    def load(request: Request) -> Source:
        check_task(name, "classification", request.task)
        if request.input_dtype != "float32":
            raise DataError(f"`{name}` gives float images, but the model takes {request.input_dtype}", None)
        train_raw = _open(name, request, train=True)
        test_raw = _open(name, request, train=False)
        (x, y), (x_test, y_test) = _arrays(train_raw), _arrays(test_raw)
        classes = [str(c) for c in train_raw.classes]
        return Source("classification", (fit_images(x, request.input_shape), y),
                      (fit_images(x_test, request.input_shape), y_test),
                      num_classes=len(classes), class_names=classes, scale=1 / 255)
    load.__name__ = load.__qualname__ = name
    load.__doc__ = f"torchvision's {TORCHVISION[name][0]} under `root`/{TORCHVISION[name][1]}, in memory."
    return load


for _name in TORCHVISION:
    dataset(_name)(torchvision_dataset(_name))


def expected_folder(name: str, root: str | Path) -> Path:
    """Where ``name``'s files must be under ``root`` (for messages and tests)."""
    return Path(root) / TORCHVISION[name][1]
