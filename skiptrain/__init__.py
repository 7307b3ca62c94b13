"""skiptrain: networks written as graphs in YAML, with skips projected automatically.

    import skiptrain
    model = skiptrain.build_model("configs/quickstart.yaml")
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_config", "check_model", "check_config", "build_model", "load_checkpoint", "train", "SkiptrainError",
           "ConfigError", "__version__"]

from .config import load_config
from .errors import ConfigError, SkiptrainError


def __getattr__(name: str):
    # torch is imported only when a model is checked or built, so `skiptrain --help` stays fast
    if name in ("check_model", "check_config", "build_model"):
        from . import api
        return getattr(api, name)
    if name == "load_checkpoint":
        from .checkpoint import load_checkpoint
        return load_checkpoint
    if name == "train":
        from .training.loop import train
        return train
    raise AttributeError(f"module 'skiptrain' has no attribute {name!r}")
