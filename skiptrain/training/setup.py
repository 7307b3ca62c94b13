"""What a run needs before its first step: device, precision, seeds, loss, and a model that fits the data."""
from __future__ import annotations

import math
import os
import random
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..errors import Location, SkiptrainError
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


def check_memory(params: int, optimizer: dict, device: torch.device, plan=None) -> None:
    """Refuse, before allocating anything, a model whose training state cannot fit the device.

    With ``plan``, a forward's activations at batch 1 count too (``activation_bytes``: a lower bound,
    so a refusal is never wrong; training keeps more of them for the backward pass)."""
    needed, available = memory_needed(params, optimizer), available_memory(device)
    activations = activation_bytes(plan, 1) if plan is not None else 0
    if available is not None and needed + activations > available:
        also = f" and a forward at batch 1 at least {human_bytes(activations)} of activations" if activations else ""
        raise SkiptrainError(f"the model has {params:,} parameters: weights, gradients and {optimizer['name']} state "
                             f"need {human_bytes(needed)}{also}, but {device} has {human_bytes(available)} available",
                             plan.graph.loc if plan is not None else None, "use a smaller model (width_multiplier, fewer blocks) or input, another device, "
                                   "or sgd without momentum (no optimizer state); larger batches need more activations")


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name such as ``float32`` or ``int64``."""
    return getattr(torch, dtype).itemsize


def activation_bytes(plan, batch: int) -> int:
    """A lower bound on a forward's peak activation memory at ``batch`` (see ``activation_peak``)."""
    return activation_peak(plan)[0] * batch


def activation_peak(plan) -> tuple[int, Any]:
    """Bytes per sample and the node where they peak (None: the model's input): a lower bound on a
    forward's activation memory. The model's input, and each layer's input and output, are alive
    together (only the larger of the two for a layer that may run in place). Read from the plan's
    meta-device shapes, so it costs no allocation; values kept longer (skips, autograd's saved
    tensors) only add to it, so a refusal from it is never wrong."""
    from .. import registry
    from ..graph import INPUT

    graph = plan.graph
    dtypes = {INPUT: graph.input_dtype, **{node.id: node.meta["dtype"] for node in graph.order}}
    peak, where = math.prod(graph.input_shape) * dtype_bytes(graph.input_dtype), None
    for node in graph.order:
        source = math.prod(node.meta["in_shape"]) * dtype_bytes(dtypes.get(node.inputs[0], graph.input_dtype))
        result = math.prod(node.meta["shape"]) * dtype_bytes(node.meta["dtype"])
        in_place = registry.get(node.type).may_run_inplace or node.meta.get("args", {}).get("inplace") is True
        live = max(source, result) if in_place else source + result
        if live > peak:
            peak, where = live, node
    return peak, where


def check_fits(what: str, needed: int, detail: str, device: torch.device, hint: str,
               location: Location | None = None) -> None:
    """Refuse ``what`` before allocating when ``needed`` bytes exceed what ``device`` has available."""
    available = available_memory(device)
    if available is not None and needed > available:
        raise SkiptrainError(f"{what} needs at least {human_bytes(needed)} ({detail}), but {device} has "
                             f"{human_bytes(available)} available", location, hint)


def check_weights(plan, what: str, device: torch.device | str | None = None) -> None:
    """Refuse, before any weight is allocated, a model whose fp32 weights cannot fit ``device`` (CPU by default)."""
    check_fits(what, plan.params * 4, f"{plan.params:,} parameters in fp32", torch.device(device or "cpu"),
               "use a smaller model (width_multiplier, fewer blocks)", plan.graph.loc)


def human_bytes(size: int) -> str:
    """A memory figure for messages: GiB, MiB below one GiB, bytes below one MiB (never a bare `0.0 GiB`)."""
    if size >= 2**30:
        return f"{size / 2**30:.1f} GiB"
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size:,} bytes"
