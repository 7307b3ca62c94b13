"""Starter configs for ``skiptrain init``: commented YAML files shipped in ``skiptrain/templates/``,
and the model zoo in ``skiptrain/zoo/`` (torchvision's architectures, key for key: ``init resnext50_32x4d``).

A template's first line is a ``# description`` comment; the file name is its name.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import ConfigError, choices_hint
from .outputs import check_output, write_text

ORDER = ("quickstart", "resnet-cifar", "resnet-imagenet", "plain", "unet", "transformer", "mlp")


FOLDERS = ("templates", "zoo")


def _names(folder: str) -> set[str]:
    return {entry.name[:-len(".yaml")] for entry in (resources.files("skiptrain") / folder).iterdir()
            if entry.name.endswith(".yaml")}


def _folder(name: str):
    return resources.files("skiptrain") / next(f for f in FOLDERS if name in _names(f))


def zoo_names() -> list[str]:
    """The zoo's models, by name: torchvision's own names (`mobilenet_v3_small`)."""
    return sorted(_names("zoo"))


def template_names() -> list[str]:
    """Every shipped template: the usual order first, any others after, by name, then the zoo."""
    found = _names("templates")
    return [name for name in ORDER if name in found] + sorted(found - set(ORDER)) + zoo_names()


def template_text(name: str) -> str:
    """The YAML of one template; an unknown name is a ConfigError with a did-you-mean."""
    names = template_names()
    if name not in names:
        raise ConfigError(f"unknown template `{name}`", None, choices_hint(name, names, "templates"))
    return (_folder(name) / f"{name}.yaml").read_text(encoding="utf-8")


def describe(name: str) -> str:
    """The template's one-line description (its first comment line)."""
    first = template_text(name).split("\n", 1)[0]
    return first.lstrip("#").strip()


def write_template(name: str, output: str | Path | None = None, force: bool = False) -> Path:
    """Write a template to ``output`` (default ``<name>.yaml``); an existing file needs ``force``."""
    text = template_text(name)
    path = check_output(Path(output) if output is not None else Path(f"{name}.yaml"), overwrite=force)
    return write_text(path, text)  # atomically: a temporary file beside it, fsync, os.replace
