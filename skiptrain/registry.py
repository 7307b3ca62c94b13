"""The one registry of layer types: a dict, a decorator, a lookup with did-you-mean.

A layer type owns its arguments (read from its constructor's signature), the
arguments it infers from the input shape, the axis its skips project on, and its
construction. The builder looks types up here and never branches on their names.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from . import arguments
from .errors import ConfigError, Location, did_you_mean, warn
from .registries import Registry

Shape = tuple[int, ...]

# Constructor arguments that follow from the input shape of one sample (channels first).
INFERRED: dict[str, Callable[[Shape], Any]] = {
    "in_channels": lambda shape: shape[0],
    "input_channels": lambda shape: shape[0],  # torchvision's SqueezeExcitation
    "num_features": lambda shape: shape[0],
    "num_channels": lambda shape: shape[0],
    "in_features": lambda shape: shape[-1],
    "normalized_shape": lambda shape: shape[-1],
    "embed_dim": lambda shape: shape[-1],
    "d_model": lambda shape: shape[-1],
    "input_shape": lambda shape: tuple(shape),  # learnable tensors shaped like the input (position embedding)
}
_CHANNEL_ARGS = {"in_channels", "input_channels", "num_features", "num_channels"}
_NOT_ARGUMENTS = {"self", "device", "dtype"}
AXES = ("channels", "last", "inherit")


@dataclass
class LayerType:
    """A registered layer: how to build it from config arguments, and what it infers."""

    name: str
    factory: Callable[..., Any]
    axis: str = "inherit"  # the axis a skip into this layer projects on (see projection.py)
    passthrough: bool = False  # merges: no module, the graph does the work
    # Its output is a new tensor that its own backward does not read, so a merge may add into
    # it in place (as torchvision's `out += identity` does after a BatchNorm).
    fresh_output: bool = False
    # It has an `inplace` argument that is safe to turn on when it is the sole reader of a
    # fresh value (ReLU after `out += identity`).
    may_run_inplace: bool = False
    # A learnable tensor (class token, layer scale): the module's one parameter `weight` lives at the
    # node's id itself, as a torch.fx get_attr target does (`encoder.pos_embedding`, torchvision's key),
    # and the module's static `expression(value, tensor)` is the node's code in the generated forward.
    tensor: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)  # skiptrain's defaults over torch's
    aliases: tuple[str, ...] = ()
    doc: str = ""

    @cached_property
    def parameters(self) -> dict[str, inspect.Parameter]:
        if self.passthrough:
            return {}
        signature = inspect.signature(self.factory)
        return {name: p for name, p in signature.parameters.items()
                if name not in _NOT_ARGUMENTS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    @cached_property
    def inferred(self) -> list[str]:
        return [name for name in self.parameters if name in INFERRED]

    def resolve_args(self, args: dict[str, Any], in_shape: Shape, node_id: str,
                     arg_locs: dict[str, Location], loc: Location | None) -> dict[str, Any]:
        """The constructor's keyword arguments: the config's, checked, plus the inferred ones."""
        accepted = self.parameters
        for key in args:
            if key not in accepted:
                hint = did_you_mean(key, accepted) or (
                    f"`{self.name}` takes: {', '.join(a for a in accepted if a not in INFERRED) or 'no arguments'}"
                    + "".join(f"; `{a}` is inferred from the input shape" for a in self.inferred))
                raise ConfigError(f"`{self.name}` has no argument `{key}` (layer `{node_id}`)",
                                  arg_locs.get(key, loc), hint)
        arguments.check(self.name, self.factory, args, node_id, arg_locs, loc)  # kinds, before torch sees them
        resolved = {**self.defaults, **{k: _tuples(v) for k, v in args.items()}}
        for key in self.inferred:
            try:
                value = INFERRED[key](in_shape)
            except IndexError:
                raise ConfigError(f"`{self.name}` `{node_id}` cannot infer `{key}` from an input of shape "
                                  f"{list(in_shape)}", loc) from None
            if key in args and key != "normalized_shape" and args[key] != value:
                raise ConfigError(f"`{key}: {args[key]}` disagrees with the input shape {list(in_shape)} "
                                  f"of `{node_id}`, which gives {value}", arg_locs.get(key, loc),
                                  f"remove `{key}`: skiptrain infers it from the incoming shape")
            resolved.setdefault(key, value)
        missing = [name for name, p in accepted.items() if p.default is p.empty and name not in resolved]
        if missing:
            raise ConfigError(f"`{self.name}` `{node_id}` needs `{missing[0]}`", loc,
                              f"add `{missing[0]}: ...` to the layer")
        return resolved

    def build(self, args: dict[str, Any]) -> Any:
        return self.factory(**args)


def _tuples(value: Any) -> Any:
    """YAML lists as tuples: torch.nn takes tuples everywhere (``scale_factor: [2, 1]``)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


LAYERS: Registry[LayerType] = Registry(
    "layer type", hint="see `docs/layers.md` for every layer type; torch.nn class names such as `Conv2d` work too")


def add(layer_type: LayerType) -> LayerType:
    """Register a layer type under its name and aliases; a name taken twice is an error."""
    if layer_type.axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, not {layer_type.axis!r}")
    return LAYERS.add(layer_type.name, layer_type, aliases=layer_type.aliases)


def register(name: str, *, axis: str = "inherit", aliases: tuple[str, ...] = (), fresh_output: bool = False,
             tensor: bool = False, **defaults: Any):
    """Class decorator: ``@register("self_attention", axis="last", fresh_output=True)``."""
    def decorate(cls):
        add(LayerType(name, cls, axis=axis, aliases=aliases, defaults=defaults, fresh_output=fresh_output,
                      tensor=tensor, doc=inspect.getdoc(cls) or ""))
        return cls
    return decorate


def axis_of(factory: Callable[..., Any]) -> str:
    """The projection axis a torch.nn class works on, read from what it infers."""
    names = set(inspect.signature(factory).parameters)
    if names & _CHANNEL_ARGS or "Pool" in getattr(factory, "__name__", ""):
        return "channels"
    if names & (set(INFERRED) - _CHANNEL_ARGS) or "Embedding" in getattr(factory, "__name__", ""):
        return "last"
    return "inherit"


def get(name: str, loc: Location | None = None) -> LayerType:
    """The layer type registered as ``name`` (any alias); unknown names get a suggestion."""
    _load_builtins()
    if name not in LAYERS:  # torchvision's blocks register on demand (its import takes a second)
        from .layers import on_demand
        on_demand()
    return LAYERS.get(name, loc)


def names() -> list[str]:
    from .layers import on_demand

    _load_builtins()
    on_demand()
    return LAYERS.names()


PLUGIN_GROUP = "skiptrain.layers"
_plugins_loaded = False


def _load_builtins() -> None:
    """The built-in types (on import), then once the plugins' types."""
    global _plugins_loaded
    from . import layers  # noqa: F401  (registers on import)
    if not _plugins_loaded:
        _plugins_loaded = True
        for entry_point in _plugin_entry_points():
            _load_plugin(entry_point)


def _plugin_entry_points():
    """Installed packages' ``[project.entry-points."skiptrain.layers"]``: code never comes from YAML."""
    from importlib.metadata import entry_points

    return entry_points(group=PLUGIN_GROUP)


def _load_plugin(entry_point) -> None:
    """Import a plugin (registering on import); call it if it names a function. A broken one only warns."""
    try:
        loaded = entry_point.load()
        if callable(loaded) and not inspect.ismodule(loaded):
            loaded()
    except Exception as error:  # a plugin's bug must not stop skiptrain: warn, go on without its types
        warn(f"skiptrain plugin `{entry_point.name}` ({entry_point.value}) failed to load and is "
             f"skipped: {type(error).__name__}: {error}")
