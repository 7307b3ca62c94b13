"""skiptrain: networks written as graphs in YAML, with skips projected automatically.

    import skiptrain
    model = skiptrain.build_model("configs/quickstart.yaml")
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_config", "load", "check_model", "check_config", "build_model", "restore", "load_checkpoint", "train",
           "api", "SkiptrainError", "ConfigError", "__version__"]

from .config import load_config
from .errors import ConfigError, SkiptrainError


# The verbs whose names are not also modules of this package; all of them, evaluate, export,
# predict, gradflow and compare included, are in ``skiptrain.api``.
_API = ("load", "check_model", "check_config", "build_model", "restore", "load_checkpoint", "train")


def __getattr__(name: str):
    # torch is imported only when a model is checked or built, so `skiptrain --help` stays fast
    if name in _API or name == "api":
        import importlib

        api = importlib.import_module(".api", __name__)
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'skiptrain' has no attribute {name!r}")
