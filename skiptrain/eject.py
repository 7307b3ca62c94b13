"""`skiptrain eject`: a skiptrain model as one standalone PyTorch file that never imports skiptrain.

The file holds a class per block definition (``eject_blocks.py``, ``eject_classes.py``) and the model
class composing them; every module sits under the SkipNet's own path (so the state-dict keys, tied
weights included, are the same and a checkpoint's ``"model"`` loads as it is), and each ``forward``
computes what the SkipNet's generated forward computes, in its order. Layers are built from the
arguments the plan resolved; projections from their built modules' attributes, checked by rebuilding;
skiptrain's own layer classes are copied into the file with the helpers they use. Correctness first:
eval-mode outputs are bitwise equal.
"""
from __future__ import annotations

import importlib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import Location, SkiptrainError
from .graph import INPUT


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
        source = re.sub(r"^@register\(.*\)\n", "", source, flags=re.MULTILINE)  # skiptrain's registry stays behind
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


@dataclass
class Leaf:
    """One constructor argument's value: its source text, and the value (for a parameter's type and name)."""

    text: str
    value: Any


@dataclass
class Call:
    """A constructor call kept as data, so that the values that differ between a block's instances can
    become the block class's constructor arguments. ``args``: positional Calls, or (key, Call) pairs for
    ``OrderedDict``/dict-built containers (``keyed``: ``"sequential"`` or ``"dict"``)."""

    callee: str
    kwargs: dict[str, Leaf | Call] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)
    keyed: str = ""
    factory: Any = None  # the class called, for its defaults


def _call(cls: type, kwargs: dict[str, Any], out: _Source) -> Call:
    return Call(out.ref(cls), {k: Leaf(_value(v, out), v) for k, v in kwargs.items()}, factory=cls)


def _layer_call(layer: Any, args: dict[str, Any], module: nn.Module, out: _Source, loc: Location | None) -> Call:
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


def _module_call(module: nn.Module, out: _Source, loc: Location | None = None) -> Call:
    """A built module (a projection) as a constructor call, read from its attributes and checked by rebuilding."""
    cls = type(module)
    if cls is nn.Sequential:
        return Call("nn.Sequential", args=[_module_call(child, out, loc) for child in module])
    kwargs = {}
    for name, param in inspect.signature(cls).parameters.items():
        if name in ("device", "dtype") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "bias" and isinstance(getattr(module, "bias", None), (torch.Tensor, type(None))):
            kwargs[name] = module.bias is not None
        elif hasattr(module, name):
            kwargs[name] = getattr(module, name)
    if not _rebuilds(cls, kwargs, module):
        raise EjectError(f"cannot write the projection's {cls.__name__} as source", loc, "please report this model")
    short = {k: v[0] if isinstance(v, tuple) and v and all(type(e) is int and e == v[0] for e in v) else v
             for k, v in kwargs.items()}
    kwargs = short if _rebuilds(cls, short, module) else kwargs  # `stride=2`, as written by hand, not `(2, 2)`
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    return _call(cls, {k: v for k, v in kwargs.items() if not _is_default(v, defaults.get(k))}, out)


def _rebuilds(cls: type, kwargs: dict[str, Any], module: nn.Module) -> bool:
    try:
        with torch.device("meta"):
            rebuilt = cls(**kwargs)
    except (TypeError, ValueError):
        return False
    return repr(rebuilt) == repr(module) and _shapes(rebuilt) == _shapes(module)


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
    """The standalone file for ``model`` (a SkipNet) built from ``plan``: a class per block, then the model."""
    from .eject_blocks import RESERVED, Blocks
    from .eject_classes import class_source, classes, model_body, name_classes

    out = _Source()
    graph = plan.graph
    blocks = Blocks(model, plan, out)
    taken = set(RESERVED) | {_class_name(inst.block) for inst in blocks.instances.values()}
    found = classes(blocks, taken)
    template = blocks.template("", 0, graph.order, INPUT, graph.output, taken)
    names = set(out.copied) | {n for names in out.froms.values() for n in names} | set(RESERVED)
    name = _class_name(graph.name)
    names.add(name)
    name_classes(found, names)
    body = model_body(template)
    for node in graph.order:
        for attr, path in node.meta.get("tied", {}).items():
            owner, _, leaf = f"{node.id}.{attr}".rpartition(".")
            body.append(f"self.get_submodule({owner!r}).{leaf} = self.get_parameter({path!r})  # tie:")
    lines_at = sorted(n.loc.line for n in graph.order if n.loc is not None and n.loc.line)
    origin = f"{origin}, lines {lines_at[0]}-{lines_at[-1]}" if lines_at else origin
    init = "\n".join(f"        {line}" for line in ["super().__init__()", *body])
    forward = "\n".join(f"        {line}" for line in template.forward)
    put = template.put or any(cls.template.put for cls in found)
    text = _TEMPLATE.format(origin=origin, name=name, graph=graph.name, init=init, forward=forward,
                            copied="".join(s.rstrip("\n") + "\n\n\n" for s in out.copied.values()),
                            put=_PUT if put else "", shape=list(graph.input_shape), imports="{imports}",
                            classes="".join(cls.token + "\n\n" for cls in found))
    for cls in found:  # each class's source, then its name wherever it is called
        text = text.replace(cls.token + "\n", class_source(cls))
    for cls in found:
        text = text.replace(cls.token, cls.name)
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.replace("{imports}", _imports(text, out.froms))


def _imports(text: str, froms: dict[str, set[str]]) -> str:
    """The file's imports in isort's order (ruff's I001), only those it uses."""
    first = [*(["from collections import OrderedDict"] if "OrderedDict(" in text else []),
             *(["import math"] if "math." in text else [])]
    third = ["import torch", *(["import torch.nn.functional as F"] if "F." in text else [])]
    third += [f"from {module} import {', '.join(sorted(names))}" for module, names in sorted(froms.items())]
    return "\n".join([*first, *([""] if first else []), *third])


_PUT = '''def _put(root: nn.Module, path: str, module: nn.Module | nn.Parameter) -> None:
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
'''

_TEMPLATE = '''"""{graph}: ejected by `skiptrain eject` from {origin}. Needs only PyTorch.

    model = {name}()
    model.load_state_dict(torch.load("last.pt", weights_only=True)["model"])
    model.eval()(torch.randn(1, *{shape}))
"""
from __future__ import annotations

{imports}


{put}


{copied}


{classes}


class {name}(nn.Module):
    """The model of {origin} (`{graph}`): its blocks are the classes above; every module keeps its
    config id as its key path, so skiptrain's checkpoints load as they are."""

    def __init__(self) -> None:
{init}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
{forward}
'''


def eject(source: str | Path, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write ``source``'s model (a config, run directory or checkpoint) as one PyTorch file at ``output``."""
    from .export import CONFIG_SUFFIXES, load_source
    from .outputs import check_output, write_text

    out = check_output(output, [source], overwrite=overwrite)
    path = Path(source)
    if path.is_file() and path.suffix.lower() in CONFIG_SUFFIXES:  # no weights to write: build on the meta device
        from .api import check_model
        from .module import build_module

        plan = check_model(path)
        model, kind = build_module(plan, device="meta"), "config"
    else:
        loaded = load_source(source)
        model, plan, kind = loaded.model, loaded.plan, loaded.kind
    write_text(out, source_of(model, plan, path.name))
    return {"output": str(out), "class": _class_name(plan.graph.name), "kind": kind}
