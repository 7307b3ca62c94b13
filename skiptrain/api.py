"""The Python API behind the CLI: config in, checked plan or ``nn.Module`` out."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Union

from .config import Config, LocatedDict, load_config, where
from .spec import expand

Source = Union[str, Path, dict, Config]


def _config(source: Source, overrides: Iterable[str] = ()) -> Config:
    if isinstance(source, Config):
        return source
    if isinstance(source, dict) and not isinstance(source, LocatedDict) and "model" not in source:
        source = {"model": source}  # a bare model section
    return load_config(source, overrides)


def check_model(source: Source, overrides: Iterable[str] = (), strict: bool = False):
    """Expand, infer every shape on meta tensors and plan the projections: no weights allocated."""
    from .shapes import infer

    config = _config(source, overrides)
    return infer(expand(config.model, strict=strict))


def check_config(source: Source, overrides: Iterable[str] = (), strict: bool = False):
    """``check_model``, and the ``data:`` and ``train:`` sections' keys and values too (no data is
    read): a typo there is found by ``skiptrain validate``, not minutes later by ``train``."""
    from .data import parse_options
    from .data.registry import get_dataset
    from .training.settings import parse_settings

    config = _config(source, overrides)
    plan = check_model(config, strict=strict)
    if config.data:
        options = parse_options(config.data)
        get_dataset(options.dataset, where(config.data, "dataset"))
    parse_settings(config.train or {})
    return plan


def build_model(source: Source, overrides: Iterable[str] = (), strict: bool = False,
                device=None):
    """The ``torch.nn.Module`` (a ``SkipNet``; ``print(model.code)`` shows its forward) that a config describes."""
    from .module import build_module

    return build_module(check_model(source, overrides, strict), device=device)
