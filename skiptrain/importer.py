"""`skiptrain import MODULE:CALLABLE`: a PyTorch model as skiptrain YAML, checked by rebuilding it.

The user names the import target on the command line (the only code this runs). The model is traced
with torch.fx (``import_graph``), each module call's nodes become a `layers:` list (``import_scopes``),
and calls of one structure share a block definition (``import_blocks``). Before anything is written the
YAML is rebuilt with skiptrain and must give the original's parameter count, its state-dict keys in its
order, and bitwise-equal eval-mode outputs with the original's weights loaded: a mismatch is an error,
never a silent approximation.
"""
from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import ConfigError, Location
from .import_graph import ImportError_

_TARGET_HINT = "name a module and a callable in it that returns an nn.Module, e.g. torchvision.models:resnet18"


def parse_input(text: str | list[int] | tuple[int, ...]) -> list[int]:
    """``3,224,224`` (or a list) as the shape of one sample."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
        try:
            shape = [int(p) for p in parts]
        except ValueError:
            shape = []
    else:
        shape = [int(p) for p in text]
    if not shape or len(shape) > 5 or any(d < 1 for d in shape):
        raise ConfigError(f"--input `{text}` is not the shape of one sample", Location("--input"),
                          "channels first, without the batch, comma-separated: 3,224,224")
    return shape


def parse_kwargs(text: str | dict | None) -> dict[str, Any]:
    """``--kwargs`` as a JSON object."""
    if text is None or isinstance(text, dict):
        return dict(text or {})
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--kwargs is not JSON: {error.msg} at character {error.pos}", Location("--kwargs"),
                          'a JSON object such as \'{"num_classes": 10}\'') from None
    if not isinstance(value, dict):
        raise ConfigError(f"--kwargs must be a JSON object, not {type(value).__name__}", Location("--kwargs"),
                          'a JSON object such as \'{"num_classes": 10}\'')
    return value


def resolve(target: str) -> Callable[..., Any]:
    """``module:callable`` (``callable`` may be dotted: ``pkg.mod:Outer.build``), imported."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"`{target}` is not MODULE:CALLABLE", Location("MODULE:CALLABLE"), _TARGET_HINT)
    added = "" not in sys.path and "." not in sys.path  # the user's own package in the working directory
    if added:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as error:  # ModuleNotFoundError, or the user's module failing as it imports
        raise ConfigError(f"cannot import `{module_name}`: {type(error).__name__}: {error}",
                          Location("MODULE:CALLABLE"), "is it installed, or in the current folder?") from None
    finally:
        if added:
            sys.path.remove("")
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"`{module_name}` has no `{attr}`", Location("MODULE:CALLABLE"), _TARGET_HINT)
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"`{target}` is not callable", Location("MODULE:CALLABLE"), _TARGET_HINT)
    return obj


def build(target: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call the target with ``kwargs``; it must return an ``nn.Module``."""
    factory = resolve(target)
    try:
        model = factory(**kwargs)
    except Exception as error:
        raise ConfigError(f"`{target}(**{kwargs})` failed: {type(error).__name__}: {error}",
                          Location("--kwargs"), "check the keyword arguments the callable takes") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"`{target}` returned {type(model).__name__}, not an nn.Module", Location("MODULE:CALLABLE"),
                          _TARGET_HINT)
    return model.eval()


def section(model: nn.Module, input_shape: list[int], name: str, unify: bool = True) -> tuple[dict[str, Any], Any]:
    """The `model:` section of ``model`` and the example input it was traced and checked on."""
    from . import import_layers
    from .import_blocks import Blocks
    from .import_graph import trace
    from .import_scopes import Scopes
    from .import_yaml import model as write_model

    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *input_shape, generator=generator)
    traced = trace(model, example, import_layers.is_leaf)
    scopes = Scopes(traced, import_layers)
    scopes.body(traced.root)
    return write_model(Blocks(scopes, unify=unify), name, input_shape), example


def check(written: dict[str, Any], model: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """Rebuild the written section and compare: keys (and their order), shapes, parameters, outputs."""
    from .api import build_model
    from .errors import SkiptrainError

    try:
        rebuilt = build_model({"model": written}).eval()
    except SkiptrainError as error:
        raise ImportError_(f"the written YAML does not rebuild: {error.message}", None, error.hint) from None
    ours, theirs = rebuilt.state_dict(), model.state_dict()
    missing, extra = [k for k in theirs if k not in ours], [k for k in ours if k not in theirs]
    if missing or extra:
        raise ImportError_(f"the rebuilt model's state-dict keys differ: missing {missing[:5]}, extra {extra[:5]}",
                           None, "this is a bug of skiptrain import: please report it with the model")
    shapes = [k for k in theirs if ours[k].shape != theirs[k].shape]
    if shapes:
        k = shapes[0]
        raise ImportError_(f"`{k}` has shape {list(ours[k].shape)} in the rebuilt model, {list(theirs[k].shape)} "
                           "in the original", None, "this is a bug of skiptrain import: please report it")
    modules = dict(rebuilt.named_modules())
    for path, module in model.named_modules():  # what eval outputs do not show: dropout's p, stochastic depth's
        if path in modules and not list(module.children()) and _settings(module) != _settings(modules[path]):
            raise ImportError_(f"`{path}` is built as ({_settings(modules[path])}) in the rebuilt model, "
                               f"({_settings(module)}) in the original", None,
                               "this is a bug of skiptrain import: please report it with the model")
    rebuilt.load_state_dict(theirs, strict=True)
    count = [sum(p.numel() for p in m.parameters()) for m in (model, rebuilt)]
    if count[0] != count[1]:
        raise ImportError_(f"the rebuilt model has {count[1]:,} parameters, the original {count[0]:,}", None)
    with torch.no_grad():
        expected, got = model(example), rebuilt(example)
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape or not torch.equal(expected, got):
        diff = (expected - got).abs().max().item() if isinstance(expected, torch.Tensor) and \
            expected.shape == got.shape else None
        raise ImportError_("the rebuilt model computes other outputs than the original"
                           + (f" (largest difference {diff:.3g})" if diff is not None else ""), None,
                           "this is a bug of skiptrain import: please report it with the model")
    return {"parameters": count[0], "keys": len(theirs), "same_key_order": list(ours) == list(theirs)}


def _settings(module: nn.Module) -> str:
    """A module's settings as its repr shows them, less `inplace` (skiptrain decides that, see LayerType)."""
    return re.sub(r"(,\s*)?inplace=(True|False)", "", module.extra_repr()).strip(", ")


def dump(config: dict[str, Any], header: list[str]) -> str:
    """The config as YAML the zoo's way: sections in block style, each layer and skip on one line."""
    import yaml

    def flow(value: Any) -> str:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
        return text[:-3].strip() if text.endswith("\n...") else text  # a bare scalar's document end

    lines = [f"# {line}" for line in header]

    def write(mapping: dict[str, Any], indent: int) -> None:
        pad = "  " * indent
        for key, value in mapping.items():
            head = f"{pad}{key}:"
            if isinstance(value, dict) and key in ("model", "blocks") or (
                    isinstance(value, dict) and indent == 2 and "layers" in value):
                lines.append(head)
                write(value, indent + 1)
            elif isinstance(value, list) and key in ("layers", "skips"):
                lines.append(head)
                lines.extend(f"{pad}  - {flow(item)}" for item in value)
            else:
                lines.append(f"{head} {flow(value)}")

    write(config, 0)
    return "\n".join(lines) + "\n"


def import_model(target: str, input_shape: str | list[int], output: str | Path, kwargs: str | dict | None = None,
                 weights: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Import ``target`` (``module:callable``), check the YAML by rebuilding, write it (and ``weights``)."""
    from .import_fold import fold_dense
    from .outputs import atomic_output, check_output, write_text

    shape, arguments = parse_input(input_shape), parse_kwargs(kwargs)
    out = check_output(output, overwrite=overwrite)
    weights_out = check_output(weights, [out], overwrite=overwrite, option="--weights") if weights else None
    model = build(target, arguments)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", target.partition(":")[2].split(".")[-1]).lower() or "model"
    written, example = section(model, shape, name)
    try:
        report = {**check(written, model, example), "unified": True}
    except ImportError_:  # one definition for bodies that differ (`when:`) did not rebuild: one per structure
        written, example = section(model, shape, name, unify=False)
        report = {**check(written, model, example), "unified": False}
    folded = fold_dense(written)  # DenseNet's dense blocks as `repeat:`, kept only where it rebuilds bitwise
    if folded is not None:
        try:
            report = {**report, **check(folded, model, example)}
            written = folded
        except ImportError_:
            pass
    call = f"{target}(**{json.dumps(arguments)})" if arguments else f"{target}()"
    header = [f"Imported from {call} by `skiptrain import` ({report['parameters']:,} parameters).",
              f"Checked by rebuilding: the same {report['keys']} state-dict keys, bitwise-equal eval-mode outputs.",
              "Ids are the model's module paths, so its weights load with strict=True."]
    write_text(out, dump({"model": written}, header))
    if weights_out is not None:
        from safetensors.torch import save_file

        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}  # tied: copies
        with atomic_output(weights_out, "--weights") as temp:
            save_file(state, str(temp))
    return {"output": str(out), "weights": str(weights_out) if weights_out else None, "name": name,
            "blocks": sorted(written.get("blocks", {})), **report}
