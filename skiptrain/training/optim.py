"""Optimizers with sensible weight-decay groups, and the learning rate as a pure function of the step.

Because the schedule is a function of the step (as in nanoGPT), resuming needs only the
step count, never a scheduler object's state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import id_patterns

_OPTIMIZERS = {
    "sgd": (torch.optim.SGD, ("lr", "momentum", "nesterov", "weight_decay")),
    "adamw": (torch.optim.AdamW, ("lr", "betas", "eps", "weight_decay")),
    "adam": (torch.optim.Adam, ("lr", "betas", "eps", "weight_decay")),
    "rmsprop": (torch.optim.RMSprop, ("lr", "momentum", "alpha", "eps", "weight_decay")),
}


def build_optimizer(model: nn.Module, cfg: dict[str, Any],
                    grouping: "Grouping | None" = None) -> torch.optim.Optimizer:
    """Weight decay on matrices and kernels only: not on biases and norm scales (1-D tensors).
    Frozen parameters (``requires_grad=False``) stay out; ``loop.unfreeze`` adds them later."""
    cls, accepted = _OPTIMIZERS[cfg["name"]]
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in accepted}
    kwargs.setdefault("lr", 1e-3)
    kwargs.pop("weight_decay", None)
    if cfg["name"] == "sgd" and kwargs.get("nesterov") and not kwargs.get("momentum"):
        kwargs["momentum"] = 0.9
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return cls(param_groups(trainable, cfg, grouping), **kwargs)


def param_groups(named: list[tuple[str, nn.Parameter]], cfg: dict[str, Any],
                 grouping: "Grouping | None" = None) -> list[dict[str, Any]]:
    """The optimizer's groups for ``named``, in a fixed order (a resumed run must rebuild the same ones):
    the base group, then train.param_groups in order; within each, layers from the first (most decayed)
    to the last; within each layer, decayed tensors before biases and norm scales."""
    lr, decay = cfg.get("lr", 1e-3), cfg.get("weight_decay", 0.0)
    buckets: dict[tuple[int, int, bool], dict[str, Any]] = {}
    for name, parameter in named:
        index, distance = grouping.of(name) if grouping else (0, 0)
        spec = grouping.specs[index - 1] if index else None
        group_lr = lr if spec is None or spec.lr is None else spec.lr
        group_decay = decay if spec is None or spec.weight_decay is None else spec.weight_decay
        plain = not cfg.get("decay_norm_and_bias") and parameter.dim() < 2
        key = (index, -distance, plain)
        if key not in buckets:
            rate = group_lr * (grouping.layer_decay ** distance if grouping else 1.0)
            buckets[key] = {"params": [], "weight_decay": 0.0 if plain else group_decay, "base_lr": rate,
                            "lr": rate, "match": spec.match if spec else None}
        buckets[key]["params"].append(parameter)
    return [buckets[key] for key in sorted(buckets)]


@dataclass
class Grouping:
    """Which train.param_groups entry (1-based; 0: none) and how many layers from the last each parameter is."""

    specs: list[Any]
    layer_decay: float
    assigned: dict[str, tuple[int, int]]
    layers: int = 1

    def of(self, name: str) -> tuple[int, int]:
        return self.assigned.get(name, (0, 0))

    def describe(self) -> str:
        """The report line at the start of a run: how far the layer decay reaches."""
        count = len(self.specs)
        groups = f"{count} parameter group{'s' if count != 1 else ''}" if count else "no parameter groups"
        if self.layer_decay == 1.0:
            return groups
        first = self.layer_decay ** (self.layers - 1)
        return f"{groups}; layer_decay {self.layer_decay:g} over {self.layers} layers: the first at lr x {first:.3g}"


def grouping(model: nn.Module, plan: Any, settings: Any, train: Any) -> Grouping | None:
    """``train.param_groups`` and ``train.layer_decay`` applied to ``model``'s parameters (None: neither set).
    A layer, for the decay, is a top-level node or a run of nodes of one block instance (``layer1.0``);
    a projection counts with the node its skip merges into."""
    if not settings.param_groups and settings.layer_decay is None:
        return None
    id_patterns.check(plan, settings, train)
    owned = id_patterns.units(plan)
    chosen = [id_patterns.select(group.match, owned) for group in settings.param_groups]
    depth = _layer_distances(plan)
    aliases: dict[int, list[str]] = {}  # a tied tensor answers to each of its names (tie: in YAML)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(parameter), []).append(name)
    assigned = {}
    for name, parameter in model.named_parameters():
        paths = [id_patterns.owner(alias, owned) for alias in aliases[id(parameter)]]
        index = next((i + 1 for i, chosen_paths in enumerate(chosen) if any(p in chosen_paths for p in paths)), 0)
        path = paths[0]
        assigned[name] = (index, depth.get(owned.get(path, ""), 0) if settings.layer_decay is not None else 0)
    layers = max(depth.values(), default=0) + 1
    return Grouping(list(settings.param_groups), settings.layer_decay or 1.0, assigned, layers)


def _layer_distances(plan: Any) -> dict[str, int]:
    """Node id -> layers between it and the last layer with parameters (0 for the last)."""
    learns = {node.id for node in plan.graph.order if node.meta.get("params")}
    learns |= {proj.skip.target for proj in plan.projections.values() if proj.params}
    layers: list[str] = []
    layer_of: dict[str, int] = {}
    for node in plan.graph.order:
        if node.id not in learns:
            continue
        scope = node.id.rpartition(".")[0]
        key = scope if scope else node.id  # a top-level node is a layer of its own
        if not layers or layers[-1] != key:
            layers.append(key)
        layer_of[node.id] = len(layers) - 1
    return {node_id: len(layers) - 1 - index for node_id, index in layer_of.items()}


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


def base_lr(cfg: dict[str, Any]) -> float:
    """train.optimizer's lr: what the schedule's factor is reported against (groups scale from their own)."""
    return cfg.get("lr", 1e-3)


def set_lr(optimizer: torch.optim.Optimizer, factor: float, base: float | None = None) -> float:
    """Every group at its own base lr times ``factor``; returns the base lr so scaled (the first group's
    when ``base`` is not given)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"] if base is None else base * factor
