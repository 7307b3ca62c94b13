"""A layer's arguments checked by kind against its constructor's signature, before torch sees them.

torch reports a value of the wrong kind from deep inside (``empty(): argument 'size' failed to
unpack``), long after the YAML key it came from is forgotten. Every layer type (torch.nn's,
skiptrain's own, torchvision's, a plugin's) declares what it takes in its signature, so one check
here reads each parameter's kind from its type hint, or, without one, from its default (as
``schema.py`` does for editors), and refuses a value of another kind at the argument's own line.
Values of the right kind that torch still refuses are reported by ``shapes.layer_shape``.
"""
from __future__ import annotations

import collections.abc
import functools
import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError, Location, did_you_mean

# Integer arguments that torch needs to be at least 1 (an empty or negative size, a zero stride).
POSITIVE = frozenset({"out_channels", "out_features", "kernel_size", "stride", "dilation", "groups",
                      "num_groups", "num_heads", "nhead", "embedding_dim", "num_embeddings", "dim_feedforward",
                      "upscale_factor", "downscale_factor", "block_size", "squeeze_channels", "hidden_channels",
                      "chunks", "window_size"})
_SCALARS = {int: "int", float: "float", bool: "bool", str: "str", type(None): "none", dict: "dict"}
_SEQUENCES = (list, tuple, collections.abc.Sequence)


@dataclass(frozen=True)
class Kind:
    """What one argument accepts: scalars of some kinds, and lists of ``items`` (``length`` long when fixed)."""

    scalars: frozenset[str] = frozenset()  # of "int", "float" (any number), "bool", "str", "none", "dict"
    items: Kind | None = None
    length: int | None = None
    choices: tuple[str, ...] = ()  # a Literal of strings
    anything: bool = False


ANY = Kind(anything=True)


def kind_of_hint(hint: Any) -> Kind | None:
    """The kind a type hint allows; None where the hint is a string nobody could resolve."""
    if isinstance(hint, (str, typing.ForwardRef)):
        return None
    if hint in _SCALARS:
        return Kind(frozenset({_SCALARS[hint]}))
    if hint is _torch_size():
        return Kind(items=Kind(frozenset({"int"})))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [kind_of_hint(arg) for arg in args]
        return None if None in members else functools.reduce(_union, members)
    if origin is typing.Literal:
        texts = all(isinstance(arg, str) for arg in args)
        return Kind(frozenset({"str"}), choices=tuple(args)) if texts else ANY
    if origin is dict:
        return Kind(frozenset({"dict"}))
    if origin in _SEQUENCES or hint in _SEQUENCES:
        fixed = [arg for arg in args if arg is not Ellipsis]
        members = [kind_of_hint(arg) for arg in fixed]
        items = ANY if not members or None in members else functools.reduce(_union, members)
        length = len(args) if origin is tuple and fixed and Ellipsis not in args else None
        return Kind(items=items, length=length)
    return ANY  # a class (a Tensor, a Callable, a Module): nothing a config can write is ruled out


def _torch_size() -> type:
    import torch  # here: importing skiptrain.registry stays free of torch (a fast `--help`)

    return torch.Size


def _union(a: Kind, b: Kind) -> Kind:
    if a.anything or b.anything:
        return ANY
    items = a.items if b.items is None else b.items if a.items is None else _union(a.items, b.items)
    length = a.length if b.items is None else b.length if a.items is None else (
        a.length if a.length == b.length else None)
    choices = a.choices + b.choices if (a.choices or "str" not in a.scalars) and (
        b.choices or "str" not in b.scalars) else ()
    return Kind(a.scalars | b.scalars, items, length, choices)


def kind_of_default(default: Any) -> Kind:
    """Without a hint the default says what is meant, loosely: any number for a number (as the schema)."""
    if isinstance(default, bool):
        return Kind(frozenset({"bool"}))
    if isinstance(default, (int, float)):
        return Kind(frozenset({"float"}))
    if isinstance(default, str):
        return Kind(frozenset({"str"}))
    return ANY


def kinds(factory: Callable[..., Any]) -> dict[str, Kind]:
    """Each parameter's kind (read once per factory; a plugin's unhashable callable is read each time)."""
    try:
        return _cached_kinds(factory)
    except TypeError:  # unhashable
        return _kinds(factory)


@functools.cache
def _cached_kinds(factory: Callable[..., Any]) -> dict[str, Kind]:
    return _kinds(factory)


def _kinds(factory: Callable[..., Any]) -> dict[str, Kind]:
    """From each parameter's hint, else its default; a default of None also allows null."""
    try:
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # a hint its module cannot resolve: the raw annotations (strings count as none)
        hints = {}
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read: nothing is ruled out
        return {}
    result = {}
    for name, param in parameters.items():
        hint = hints.get(name, param.annotation)
        kind = None if hint is param.empty else kind_of_hint(hint)
        if kind is None:
            kind = kind_of_default(param.default)
        if param.default is None and not kind.anything:
            kind = _union(kind, Kind(frozenset({"none"})))
        result[name] = kind
    return result


def check(layer_name: str, factory: Callable[..., Any], args: dict[str, Any], node_id: str,
          arg_locs: dict[str, Location], loc: Location | None) -> None:
    """Refuse, at the argument, a value its parameter cannot take, or a size below 1."""
    declared = kinds(factory)
    for key, value in args.items():
        kind = declared.get(key, ANY)
        where = arg_locs.get(key, loc)
        if not accepts(kind, value):
            raise ConfigError(f"`{layer_name}` `{node_id}`: `{key}` takes {describe(kind)}, not {shown(value, kind)}",
                              where, _hint(layer_name, key, value, kind))
        below = _below_one(value) if key in POSITIVE else None
        if below is not None:
            raise ConfigError(f"`{layer_name}` `{node_id}`: `{key}` must be at least 1, not {below}", where,
                              "sizes, strides, dilations, groups and heads count from 1")


def accepts(kind: Kind, value: Any) -> bool:
    """Whether ``value`` (as YAML gives it) is of ``kind``; an int is a number, a bool is neither."""
    if kind.anything:
        return True
    if isinstance(value, (list, tuple)):
        return (kind.items is not None and (kind.length is None or len(value) == kind.length)
                and all(accepts(kind.items, item) for item in value))
    if isinstance(value, bool):
        return "bool" in kind.scalars
    if isinstance(value, int):
        return bool({"int", "float"} & kind.scalars)
    if isinstance(value, str):
        return "str" in kind.scalars and (not kind.choices or value in kind.choices)
    scalar = "float" if isinstance(value, float) else "none" if value is None else \
        "dict" if isinstance(value, dict) else None
    return scalar in kind.scalars


def _below_one(value: Any) -> Any:
    values = value if isinstance(value, (list, tuple)) else [value]
    for item in values:
        if isinstance(item, int) and not isinstance(item, bool) and item < 1:
            return item
    return None


_SINGULAR = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text", "none": "null",
             "dict": "a mapping"}
_PLURAL = {"int": "integers", "float": "numbers", "bool": "booleans", "str": "texts", "none": "nulls",
           "dict": "mappings"}
_ORDER = ("int", "float", "bool", "str", "dict", "none")


def _ordered(scalars: frozenset[str]) -> list[str]:
    """The scalar kinds in a fixed order; "int" goes without saying where any number is taken."""
    return [s for s in _ORDER if s in scalars and not (s == "int" and "float" in scalars)]


def describe(kind: Kind) -> str:
    """``an integer or a list of 2 integers``: what a kind takes, as the message says it."""
    parts = [(f"one of {', '.join(f'`{c}`' for c in kind.choices)}" if s == "str" and kind.choices
              else _SINGULAR[s]) for s in _ordered(kind.scalars) if s != "none"]
    if kind.items is not None:
        of = "values" if kind.items.anything else " or ".join(_PLURAL[s] for s in _ordered(kind.items.scalars))
        parts.append(f"a list of {f'{kind.length} ' if kind.length else ''}{of}")
    if "none" in kind.scalars:
        parts.append("null")
    return ", ".join(parts[:-1]) + f" or {parts[-1]}" if len(parts) > 1 else (parts[0] if parts else "nothing")


def shown(value: Any, kind: Kind | None = None) -> str:
    """The value as a message shows it, with what it is: ``text 'three'``, ``a list of 3 items [3, 3, 3]``."""
    if isinstance(value, (list, tuple)):
        size = f" of {len(value)} items" if kind is not None and kind.length and len(value) != kind.length else ""
        return f"a list{size} {_yaml(value)}"
    if isinstance(value, bool) or value is None:
        return _yaml(value)
    if isinstance(value, str):
        return f"text {_yaml(value)}"
    if isinstance(value, dict):
        return f"a mapping {_yaml(value)}"
    if isinstance(value, (int, float)):
        return f"{'the integer' if isinstance(value, int) else 'the number'} {value!r}"
    return f"a {type(value).__name__} ({str(value)[:40]})"


def _yaml(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_yaml(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _hint(layer_name: str, key: str, value: Any, kind: Kind) -> str:
    """The likely slip behind a wrong kind, else where the expectation comes from."""
    if isinstance(value, str) and kind.choices:
        suggestion = did_you_mean(value, kind.choices)
        if suggestion:
            return suggestion
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()) and kind.scalars & {"int", "float"}:
        mantissa, _, exponent = value.strip().lower().partition("e")
        fixed = mantissa if "." in mantissa else f"{mantissa}.0"
        return f"YAML reads `{value}` as text: write `{fixed}e{exponent}`"
    if isinstance(value, float) and value.is_integer() and "int" in kind.scalars:
        return f"write `{int(value)}`; in `${{...}}` use `//` for an integer division (`/` gives a number like {value})"
    if isinstance(value, bool) and kind.scalars & {"int", "float"}:
        return f"`{key}` is a number here, not a switch"
    return f"`{layer_name}` reads `{key}` from its constructor's signature (`skiptrain schema` lists every argument)"
