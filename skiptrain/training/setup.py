"""What a run needs before its first step: device, precision, seeds, loss, and a model that fits the data."""
from __future__ import annotations

import os
import random
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..errors import SkiptrainError
from ..settings import DEVICE_PATTERN
from ..tasks import get_task


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(name, str) or not re.fullmatch(DEVICE_PATTERN, name):  # meta, xla, cuda:x ... never reach torch
        raise SkiptrainError(f"unknown device `{name}`", None, "use auto, cpu, cuda, cuda:1 or mps")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SkiptrainError(f"device `{name}` asked for, but this machine has no CUDA GPU", None,
                             "use --device cpu (or device: auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SkiptrainError(f"device `{name}` does not exist: {torch.cuda.device_count()} GPU(s)", None)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SkiptrainError("device `mps` asked for, but MPS is not available", None, "use --device cpu")
    return device


def select_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a gradient scaler is needed)."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return None, False
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reads it at its first call
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def make_loss(task: str, cfg: dict[str, Any]) -> nn.Module:
    """The task's training loss for ``train.loss``."""
    return get_task(task).loss(cfg)


def check_fit(config: Config, plan, data, task: str) -> None:
    """The model's input and output must match the dataset before any training starts (the task's check)."""
    get_task(task).check_fit(config, plan, data)


# bytes of optimizer state per parameter (fp32): Adam-style keeps two moments, SGD one momentum buffer
_STATE_BYTES = {"adam": 8, "adamw": 8, "rmsprop": 8, "sgd": 4}


def memory_needed(params: int, optimizer: dict) -> int:
    """Weights, gradients and optimizer state in fp32; activations come on top."""
    state = _STATE_BYTES[optimizer["name"]]
    if optimizer["name"] == "sgd" and not optimizer.get("momentum"):
        state = 0
    return params * (4 + 4 + state)


def available_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(params: int, optimizer: dict, device: torch.device) -> None:
    """Refuse, before allocating anything, a model whose training state cannot fit the device."""
    needed, available = memory_needed(params, optimizer), available_memory(device)
    if available is not None and needed > available:
        raise SkiptrainError(f"the model has {params:,} parameters: weights, gradients and {optimizer['name']} state "
                             f"need {needed / 2**30:.1f} GiB, but {device} has {available / 2**30:.1f} GiB available",
                             None, "use a smaller model (width_multiplier, fewer blocks), another device, or sgd "
                                   "(less optimizer state); activations need memory on top of this")
