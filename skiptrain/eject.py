"""`skiptrain eject`: a skiptrain model as one standalone PyTorch file that never imports skiptrain.

The file holds the model class, whose ``__init__`` creates every module under the SkipNet's own
paths (so the state-dict keys, tied weights included, are the same and a checkpoint's ``"model"``
loads as it is), and whose ``forward`` is the SkipNet's generated forward. Layers are built from
the arguments the plan resolved; projections from their built modules' attributes, checked by
rebuilding; skiptrain's own layer classes are copied into the file with the helpers they use.
Correctness first: the modules are the SkipNet's, so eval-mode outputs are bitwise equal.
"""
from __future__ import annotations

import importlib
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import Location, SkiptrainError


class EjectError(SkiptrainError):
    """A model skiptrain cannot write as plain PyTorch source (a plugin's layer built by a function)."""

    kind = "eject error"


class _Source:
    """What the file needs besides its model class: imports, and copied classes and helpers in order."""

    def __init__(self) -> None:
        self.froms: dict[str, set[str]] = {"torch": {"nn"}}  # module -> names imported from it
        self.copied: dict[str, str] = {}  # name -> source, in dependency order

    def ref(self, cls: type) -> str:
        """An expression naming ``cls`` in the ejected file."""
        if getattr(nn, cls.__name__, None) is cls:
            return f"nn.{cls.__name__}"
        if cls.__module__.split(".")[0] in ("torch", "torchvision"):
            self.froms.setdefault(_public_module(cls), set()).add(cls.__name__)
            return cls.__name__
        self.copy(cls)
        return cls.__name__

    def copy(self, obj: Any) -> None:
        """Copy a class or function of skiptrain (or a plugin) into the file, after what it uses."""
        name = obj.__name__
        if name in self.copied:
            return
        self.copied[name] = ""  # taken: recursion stops here
        if isinstance(obj, type):
            for base in obj.__bases__:
                if base is not object:
                    self.ref(base)
        source = inspect.getsource(obj)
        source = re.sub(r"^@register\(.*\)\n", "", source, flags=re.M)  # skiptrain's registry stays behind
        module_globals = vars(inspect.getmodule(obj))
        for word in sorted(set(re.findall(r"\b[A-Za-z_]\w*\b", source)) - {name}):
            value = module_globals.get(word)
            if value is None or word in self.copied:
                continue
            if isinstance(value, (types.FunctionType, type)) and _is_own(value):
                self.copy(value) if isinstance(value, types.FunctionType) else self.ref(value)
            elif isinstance(value, (int, float, str, tuple, types.GenericAlias)) and not isinstance(value, bool):
                self.copied[word] = f"{word} = {value!r}\n"
        del self.copied[name]
        self.copied[name] = source


def _public_module(cls: type) -> str:
    """The shortest module path that exports ``cls`` (``torchvision.ops``, not ``torchvision.ops.stochastic_depth``,
    whose name the package rebinds to a function)."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        path = ".".join(parts[:end])
        try:
            if getattr(importlib.import_module(path), cls.__name__, None) is cls:
                return path
        except ImportError:
            continue
    return cls.__module__


def _is_own(value: Any) -> bool:
    return not value.__module__.split(".")[0] in ("torch", "torchvision", "typing", "builtins")


def _value(value: Any, out: _Source) -> str:
    """A constructor argument as source: literals by repr (floats round-trip), classes by reference."""
    if isinstance(value, type):
        return out.ref(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(_value(v, out) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v, out) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_value(v, out)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    raise TypeError(f"no source for {value!r}")


def _call(cls: type, kwargs: dict[str, Any], out: _Source) -> str:
    args = ", ".join(f"{k}={_value(v, out)}" for k, v in kwargs.items())
    return f"{out.ref(cls)}({args})"


def _layer_call(layer: Any, args: dict[str, Any], module: nn.Module, out: _Source, loc: Location | None) -> str:
    """The constructor call of a layer node: its class and the arguments the plan resolved."""
    factory = layer.factory
    args = dict(args)
    if "inplace" in inspect.signature(type(module)).parameters and hasattr(module, "inplace"):
        args["inplace"] = module.inplace  # the builder turns it on for a sole reader of a fresh tensor
    cls = getattr(factory, "__wrapped_class__", factory)
    if cls is not factory:  # torchvision's class behind an adapter: its own argument names and classes
        from .layers.torchvision_ops import _CLASS_ARGS, layer_class

        ours = list(inspect.signature(factory).parameters)
        theirs = list(inspect.signature(cls).parameters)
        back = dict(zip(ours, theirs))
        args = {back.get(k, k): v for k, v in args.items()}
        for name, param in inspect.signature(cls).parameters.items():
            if name in _CLASS_ARGS and name not in args and isinstance(param.default, str):
                args[name] = param.default
        lists = {k for k, p in inspect.signature(cls).parameters.items() if typing.get_origin(p.annotation) is list}
        args = {k: layer_class(v, k) if k in _CLASS_ARGS else list(v) if k in lists and isinstance(v, tuple) else v
                for k, v in args.items()}  # as the adapter does: torchvision copies its lists
    if not isinstance(cls, type):
        raise EjectError(f"layer type `{layer.name}` is built by a function, not a class", loc,
                         "register the layer as an nn.Module class to eject it")
    try:
        return _call(cls, args, out)
    except TypeError as error:  # an argument with no source form (a plugin's object)
        raise EjectError(f"layer type `{layer.name}`: {error}", loc, "give the layer plain arguments") from None


def _module_call(module: nn.Module, out: _Source, loc: Location | None = None) -> str:
    """A built module (a projection) as a constructor call, read from its attributes and checked by rebuilding."""
    cls = type(module)
    if cls is nn.Sequential:
        return "nn.Sequential(" + ", ".join(_module_call(child, out, loc) for child in module) + ")"
    kwargs = {}
    for name, param in inspect.signature(cls).parameters.items():
        if name in ("device", "dtype") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "bias" and isinstance(getattr(module, "bias", None), (torch.Tensor, type(None))):
            kwargs[name] = module.bias is not None
        elif hasattr(module, name):
            kwargs[name] = getattr(module, name)
    with torch.device("meta"):
        rebuilt = cls(**kwargs)
    if repr(rebuilt) != repr(module) or _shapes(rebuilt) != _shapes(module):
        raise EjectError(f"cannot write the projection's {cls.__name__} as source", loc, "please report this model")
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    return _call(cls, {k: v for k, v in kwargs.items() if not _is_default(v, defaults.get(k))}, out)


def _is_default(value: Any, default: Any) -> bool:
    """``stride=(1, 1)`` against a default of 1 is the default: the call reads as written by hand."""
    if isinstance(value, tuple) and value and not isinstance(default, tuple):
        return all(_is_default(v, default) for v in value)
    return type(value) is type(default) and value == default


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _class_name(name: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", name)
    text = "".join(w[:1].upper() + w[1:] for w in words) or "Model"
    return text if text[0].isalpha() else "Model" + text


def _where(loc: Location | None) -> str:
    return f"{Path(loc.file).name}:{loc.line}" if loc is not None and loc.line else "?"


def source_of(model: nn.Module, plan: Any, origin: str) -> str:
    """The standalone file for ``model`` (a SkipNet) built from ``plan``."""
    from . import registry

    out = _Source()
    graph = plan.graph
    built = dict(model.named_modules())
    lines: list[str] = []
    for node in graph.order:
        layer = registry.get(node.type, node.loc)
        if layer.passthrough:
            continue
        where = f"  # {node.type} at {_where(node.loc)}"
        if layer.tensor:
            shape = tuple(model.get_parameter(node.id).shape)
            lines.append(f"_put(self, {node.id!r}, nn.Parameter(torch.zeros({shape!r})))" + where)
        else:
            call = _layer_call(layer, node.meta["args"], built[node.id], out, node.loc)
            lines.append(f"_put(self, {node.id!r}, {call})" + where)
        for skip in graph.skips_into(node.id):
            proj = plan.projection_for(skip)
            if proj is not None:
                lines.append(f"_put(self, {proj.id!r}, {_module_call(built[proj.id], out, skip.loc)})"
                             f"  # projection of the skip {skip.source} -> {skip.target} at {_where(skip.loc)}")
    for node in graph.order:
        for name, path in node.meta.get("tied", {}).items():
            owner, _, leaf = f"{node.id}.{name}".rpartition(".")
            lines.append(f"self.get_submodule({owner!r}).{leaf} = self.get_parameter({path!r})  # tie:")
    name = _class_name(graph.name)
    lines_at = sorted(n.loc.line for n in graph.order if n.loc is not None and n.loc.line)
    origin = f"{origin}, lines {lines_at[0]}-{lines_at[-1]}" if lines_at else origin
    forward = model.code.replace("def forward(self, x):", "def forward(self, x: torch.Tensor) -> torch.Tensor:")
    body = "\n".join(f"        {line}" for line in lines) or "        pass"
    copied = "".join(s.rstrip("\n") + "\n\n\n" for s in out.copied.values())
    forward = "\n".join(f"    {line}" if line else "" for line in forward.splitlines())
    text = _TEMPLATE.format(origin=origin, name=name, graph=graph.name, body=body, copied=copied, forward=forward,
                            shape=list(graph.input_shape), imports="{imports}")
    return re.sub(r"\n{4,}", "\n\n\n", text).replace("{imports}", _imports(text, out.froms))


def _imports(text: str, froms: dict[str, set[str]]) -> str:
    """The file's imports in isort's order (ruff's I001), only those it uses."""
    first = ["import math"] if "math." in text else []
    third = ["import torch", *(["import torch.nn.functional as F"] if "F." in text else [])]
    third += [f"from {module} import {', '.join(sorted(names))}" for module, names in sorted(froms.items())]
    return "\n".join([*first, *([""] if first else []), *third])


_TEMPLATE = '''"""{graph}: ejected by `skiptrain eject` from {origin}. Needs only PyTorch.

    model = {name}()
    model.load_state_dict(torch.load("last.pt", weights_only=True)["model"])
    model.eval()(torch.randn(1, *{shape}))
"""
from __future__ import annotations

{imports}


def _put(root: nn.Module, path: str, module: nn.Module | nn.Parameter) -> None:
    """Place ``module`` at its dotted ``path`` (as skiptrain does), so the state-dict keys are skiptrain's."""
    *scopes, leaf = path.split(".")
    for scope in scopes:
        if scope not in root._modules:
            root.add_module(scope, nn.Module())
        root = root._modules[scope]
    if isinstance(module, nn.Parameter):
        root.register_parameter(leaf, module)
    else:
        root.add_module(leaf, module)


{copied}


class {name}(nn.Module):
    """The model of {origin} (`{graph}`): each module under its config id, as in skiptrain."""

    def __init__(self) -> None:
        super().__init__()
{body}

{forward}
'''


def eject(source: str | Path, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write ``source``'s model (a config, run directory or checkpoint) as one PyTorch file at ``output``."""
    from .export import load_source
    from .outputs import check_output, write_text

    out = check_output(output, [source], overwrite=overwrite)
    loaded = load_source(source)
    text = source_of(loaded.model, loaded.plan, Path(source).name)
    write_text(out, text)
    return {"output": str(out), "class": _class_name(loaded.plan.graph.name), "kind": loaded.kind}
