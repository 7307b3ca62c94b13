"""The `train:` section as typed settings: every key checked, every default in one place."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import where
from ..errors import ConfigError, choices_hint

TASKS = ("classification", "segmentation", "regression")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw", "adam", "rmsprop")
SCHEDULERS = ("none", "step", "multistep", "cosine", "onecycle")
LOSSES = ("auto", "cross_entropy", "mse")
NAN_POLICIES = ("stop", "skip_batch")
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainSettings:
    epochs: int = 10
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01})
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "auto"})
    task: str | None = None  # None: the dataset's own task
    device: str = "auto"
    precision: str = "auto"
    compile: bool | str = False  # true, or a torch.compile mode: reduce-overhead uses CUDA graphs
    channels_last: str = "auto"  # auto: on CUDA for 2-D convnets
    grad_clip: float | None = None
    seed: int = 0
    deterministic: bool = False
    out_dir: str = "runs"
    checkpoint_every: int = 1
    checkpoint_every_steps: int | None = None  # also save inside long epochs
    sync_bn: bool = False
    on_nan: str = "stop"
    tensorboard: bool = False  # also write RUN_DIR/tensorboard/ (needs the tensorboard package)


_CHOICES = {"precision": PRECISIONS, "on_nan": NAN_POLICIES}
_SUBKEYS = {
    "optimizer": ("name", "lr", "weight_decay", "momentum", "nesterov", "betas", "eps", "alpha",
                  "decay_norm_and_bias"),
    "scheduler": ("name", "warmup_epochs", "step_size", "milestones", "gamma", "min_lr", "pct_start",
                  "div_factor", "final_div_factor"),
    "loss": ("name", "label_smoothing", "ignore_index"),
}
_NAMES = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "loss": LOSSES}


def parse_settings(train: dict) -> TrainSettings:
    defaults = TrainSettings()
    values: dict[str, Any] = {}
    for key, value in train.items():
        if not hasattr(defaults, key):
            raise ConfigError(f"unknown key `train.{key}`", _key_loc(train, key),
                              choices_hint(key, TrainSettings.__dataclass_fields__, "train keys"))
        if key in _SUBKEYS:
            value = _section(train, key, value)
        elif key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"unknown {key} `{value}`", where(train, key), choices_hint(value, _CHOICES[key], key))
        elif key == "compile" and not any(value is mode or (isinstance(value, str) and value == mode)
                                          for mode in COMPILE_MODES):
            raise ConfigError(f"`train.compile` must be true, false or a torch.compile mode, not {value!r}",
                              where(train, key), "modes: " + ", ".join(m for m in COMPILE_MODES if isinstance(m, str))
                              + "; reduce-overhead (CUDA graphs) speeds up small models most on a GPU")
        elif key == "task" and value is not None and value not in TASKS:
            raise ConfigError(f"unknown task `{value}`", where(train, key), choices_hint(value, TASKS, "tasks"))
        values[key] = value
    settings = TrainSettings(**values)
    if settings.checkpoint_every_steps is not None and (type(settings.checkpoint_every_steps) is not int
                                                        or settings.checkpoint_every_steps < 1):
        raise ConfigError("`train.checkpoint_every_steps` must be a positive integer or null",
                          where(train, "checkpoint_every_steps"))
    if not isinstance(settings.tensorboard, bool):
        raise ConfigError(f"`train.tensorboard` must be true or false, not {settings.tensorboard!r}",
                          where(train, "tensorboard"))
    for key in ("epochs", "checkpoint_every", "seed"):
        value = getattr(settings, key)
        if type(value) is not int or value < (0 if key == "seed" else 1):
            raise ConfigError(f"`train.{key}` must be a {'non-negative' if key == 'seed' else 'positive'} integer, "
                              f"not {value!r}", where(train, key))
    if settings.grad_clip is not None and (isinstance(settings.grad_clip, bool)
                                           or not isinstance(settings.grad_clip, (int, float)) or settings.grad_clip <= 0):
        raise ConfigError("`train.grad_clip` must be a positive number or null", where(train, "grad_clip"))
    return settings


def _key_loc(mapping: dict, key: str):
    return mapping.where(key, of_key=True) if hasattr(mapping, "key_locs") else where(mapping, key)


def _section(train: dict, key: str, value: Any) -> dict:
    """`optimizer: adamw` or `optimizer: {name: adamw, lr: ...}`, merged over the defaults."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"`train.{key}` must be a name or a mapping", where(train, key))
    for sub in value:
        if sub not in _SUBKEYS[key]:
            raise ConfigError(f"unknown key `train.{key}.{sub}`", _key_loc(value, sub),
                              choices_hint(sub, _SUBKEYS[key], f"{key} keys"))
    name = value.get("name", getattr(TrainSettings(), key)["name"])
    if name not in _NAMES[key]:
        raise ConfigError(f"unknown {key} `{name}`", where(value, "name"), choices_hint(name, _NAMES[key], f"{key}s"))
    base = getattr(TrainSettings(), key)
    merged = dict(base) if base.get("name") == name else {"name": name}
    merged.update(value)
    for number in ("lr", "weight_decay", "momentum", "label_smoothing", "warmup_epochs", "gamma", "min_lr"):
        if number in merged and (isinstance(merged[number], bool) or not isinstance(merged[number], (int, float))
                                 or merged[number] < 0):
            raise ConfigError(f"`train.{key}.{number}` must be a non-negative number, not {merged[number]!r}",
                              where(value, number))
    return merged
