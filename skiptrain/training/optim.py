"""Optimizers with sensible weight-decay groups, and the learning rate as a pure function of the step.

Because the schedule is a function of the step (as in nanoGPT), resuming needs only the
step count, never a scheduler object's state.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

_OPTIMIZERS = {
    "sgd": (torch.optim.SGD, ("lr", "momentum", "nesterov", "weight_decay")),
    "adamw": (torch.optim.AdamW, ("lr", "betas", "eps", "weight_decay")),
    "adam": (torch.optim.Adam, ("lr", "betas", "eps", "weight_decay")),
    "rmsprop": (torch.optim.RMSprop, ("lr", "momentum", "alpha", "eps", "weight_decay")),
}


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Weight decay on matrices and kernels only: not on biases and norm scales (1-D tensors)."""
    cls, accepted = _OPTIMIZERS[cfg["name"]]
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in accepted}
    kwargs.setdefault("lr", 1e-3)
    decay = kwargs.pop("weight_decay", 0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.get("decay_norm_and_bias"):
        groups = [{"params": params, "weight_decay": decay}]
    else:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if cfg["name"] == "sgd" and kwargs.get("nesterov") and not kwargs.get("momentum"):
        kwargs["momentum"] = 0.9
    for group in groups:
        group["base_lr"] = kwargs["lr"]
    return cls([g for g in groups if g["params"]], **kwargs)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: dict[str, Any], base_lr: float = 1.0) -> float:
    """Multiplier on the base learning rate at optimizer step ``step`` (0-based)."""
    total = max(1, steps_per_epoch * epochs)
    warmup = round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    name = cfg["name"]
    epoch = step // max(1, steps_per_epoch)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if name == "step":
        return cfg.get("gamma", 0.1) ** (epoch // int(cfg.get("step_size", 30)))
    if name == "multistep":
        return cfg.get("gamma", 0.1) ** sum(epoch >= m for m in cfg.get("milestones", []))
    if name == "cosine":
        floor = float(cfg.get("min_lr", 0.0)) / base_lr if base_lr else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if name == "onecycle":
        start, end = 1 / cfg.get("div_factor", 25.0), 1 / (cfg.get("div_factor", 25.0) * cfg.get("final_div_factor", 1e4))
        peak = cfg.get("pct_start", 0.3)
        if progress < peak:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * progress / peak))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (progress - peak) / (1 - peak)))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
