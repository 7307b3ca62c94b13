"""From a torch module back to a skiptrain layer: the layer registry read in reverse, for `skiptrain import`.

The tracer (``importer.py``) asks these of every traced node (drop unused nodes first: ``x, _ = mha(...)``):

- ``is_leaf(module)``: does torch.fx stop at this module? Yes when one registered layer type rebuilds it,
  and for torch.nn's own classes that fx would not enter anyway (``layer_of`` then says why it fails).
- ``layer_of(module, in_shape=None) -> (type, args) | None``: the registered layer type and its arguments
  as a user writes them in YAML (defaults left out, arguments inferred from the input shape left out).
  ``None`` when no registered type fits; ``match`` is the same but raises ``ImportGap(reason)`` instead,
  for the error message. The arguments are read from the module's attributes through the type's
  constructor signature (or torch's conventions: ``qkv_bias`` is whether ``qkv.bias`` exists), and checked by
  rebuilding: same class, state-dict keys and shapes, attributes and repr, and with ``in_shape`` (one sample,
  batch excluded) a bitwise-equal eval-mode forward: pass it where known. A class that ``skiptrain eject``
  copied into a model file is the registered class it was copied from (same name and source).
- ``call_gap(node)``: why a ``call_module`` node is not its layer on one tensor (attention must be ``mha(x, x, x)``
  without masks); None when it is.
- ``function_of(node, shapes=None)``: a ``call_function``/``call_method`` node (``F.relu``, ``x.flatten(1)``,
  ``torch.cat``, ``x[:, 0]``, ...) as a layer or a merge (``import_functions.py``). It returns
    * ``(type, args)``: one registered layer applied to ``operands(node)[0]``;
    * ``(MERGE, merge_name, args)`` (``MERGE == "merge"``): a merge (``merges.MERGES``: ``add``, ``mul``,
      ``concat`` with ``args = {"axis": sample_axis}``) of ``operands(node)``, two or more, in that order (a
      merge layer with ``input: [...]``, or a skip); an operand may be a ``get_attr`` (ViT's ``x + pos_embedding``,
      ConvNeXt's ``layer_scale * x``), which the tracer turns into its learnable-tensor layer;
    * ``("identity", {})``: the node's value is its operand's (``x.contiguous()``, ``mha(x, x, x)[0]``):
      drop the node and read the operand;
    * ``None``: nothing expressible (``why_not(node, shapes)`` says why); ``ignorable(node)`` is True for
      nodes that compute no tensor (``x.shape``, ``x.size(0) // 2``, ``torch._assert``, a ``chunk`` whose
      pieces are read by ``getitem`` nodes): skip those.
  ``shapes`` maps nodes (or their names) to their per-sample shapes (batch axis excluded), or is a list in
  ``operands`` order; without it, fx's ShapeProp ``node.meta["tensor_meta"]`` is read. ``F.dropout(x, p,
  training=self.training)`` is a ``dropout`` layer: fx records ``training`` as a constant, so it is ignored.
``x * 0.5`` is a ``scale`` layer; ``get_attr`` tensors (class tokens, layer scales) are the tracer's: see
``layers/tensors.py``.
"""
from __future__ import annotations

import functools
import inspect
import re
import weakref
from typing import Any, Callable

import torch
from torch import nn

from . import registry
from .errors import ConfigError
from .registry import INFERRED, LAYERS, LayerType, Shape

# Arguments that change how a layer runs, never what it computes: skiptrain decides them (LayerType.may_run_inplace).
EXECUTION_ONLY = frozenset({"inplace"})
# Constructor arguments that modules keep under another attribute, or as a tensor that may be None.
_READERS: dict[str, tuple[str, ...]] = {"bias": ("bias", "in_proj_bias")}
_SCALARS = (bool, int, float, str, type(None))
_LEAVES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ImportGap(ConfigError):
    """A module or traced call that skiptrain's language cannot express; ``reason`` says why."""

    kind = "import error"

    def __init__(self, reason: str, location=None, hint: str | None = None):
        super().__init__(reason, location, hint)
        self.reason = reason


def layer_types() -> dict[type, list[LayerType]]:
    """Every registered layer type that is a module class, by the class it builds (torchvision's wrapped ones too)."""
    registry.names()  # the built-ins, torchvision's (on demand) and plugins'
    index: dict[type, list[LayerType]] = {}
    for _, layer in LAYERS.items():
        cls = getattr(layer.factory, "__wrapped_class__", layer.factory)
        if not layer.passthrough and not layer.tensor and isinstance(cls, type) and issubclass(cls, nn.Module):
            index.setdefault(cls, []).append(layer)
    return index


def candidates(cls: type) -> list[LayerType]:
    """The layer types that may rebuild an instance of ``cls``: its own class's, else a registered subclass that
    only wraps it (skiptrain's ``self_attention`` IS torch's MultiheadAttention)."""
    index = layer_types()
    if cls in index:
        return index[cls]
    if cls is nn.Module:
        return []
    wrapping = [layer for sub, layers in index.items() if issubclass(sub, cls) for layer in layers]
    return wrapping or [layer for sub, layers in index.items() if _same_source(sub, cls) for layer in layers]


def _same_source(a: type, b: type) -> bool:
    return a.__name__ == b.__name__ and _source(a) is not None and _source(a) == _source(b)


@functools.lru_cache(maxsize=None)
def _source(cls: type) -> str | None:
    """A class's source without skiptrain's ``@register(...)`` line: a copy that ``skiptrain eject`` wrote into
    a model file is skiptrain's own class again (the round trip import -> eject -> import)."""
    try:
        return re.sub(r"^@register\(.*\)\n", "", inspect.getsource(cls), flags=re.MULTILINE)
    except (OSError, TypeError):
        return None


def is_leaf(module: nn.Module) -> bool:
    """torch.fx's leaf test: modules that one registered layer rebuilds, and torch.nn's own (not containers)."""
    if module not in _LEAVES:
        default = (type(module).__module__.startswith("torch.nn")
                   and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)))
        _LEAVES[module] = default or layer_of(module) is not None
    return _LEAVES[module]


def layer_of(module: nn.Module, in_shape: Shape | None = None) -> tuple[str, dict[str, Any]] | None:
    """``match``, with None where no registered layer type rebuilds ``module``."""
    try:
        return match(module, in_shape)
    except ImportGap:
        return None


def match(module: nn.Module, in_shape: Shape | None = None) -> tuple[str, dict[str, Any]]:
    """(registered type, YAML args) that rebuild ``module``; ImportGap naming why when none does."""
    layers = candidates(type(module))
    if not layers:
        raise ImportGap(f"no registered layer type builds {_qualname(type(module))}",
                        hint="register one (docs/plugins.md), or let the tracer look inside it")
    reasons = []
    for layer in layers:
        try:
            return layer.name, _arguments(layer, module, in_shape)
        except ImportGap as gap:
            reasons.append(f"`{layer.name}`: {gap.reason}")
    raise ImportGap(f"{_qualname(type(module))} does not rebuild as {'; as '.join(reasons)}")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _original_names(layer: LayerType) -> dict[str, str]:
    """Factory argument -> the wrapped class's argument (torchvision's ``dim`` is skiptrain's ``embed_dim``)."""
    wrapped = getattr(layer.factory, "__wrapped_class__", None)
    if wrapped is None:
        return {name: name for name in layer.parameters}
    return dict(zip(inspect.signature(layer.factory).parameters, inspect.signature(wrapped).parameters))


def _attributes_for(name: str) -> list[str]:
    """Where a module may keep constructor argument ``name``: under its name, or by torch's conventions
    (MultiheadAttention's ``in_proj_bias``; ``qkv_bias`` as whether ``qkv.bias`` exists; ``norm_layer`` as the
    ``norm`` module it built)."""
    names = [name, *_READERS.get(name, ())]
    if name.endswith("_bias"):
        names.append(name.removesuffix("_bias") + ".bias")
    if name.endswith("_layer"):
        names.append(name.removesuffix("_layer"))
    return names


def _read(module: nn.Module, name: str) -> Any:
    """The value of constructor argument ``name`` as ``module`` keeps it; ImportGap where it does not."""
    for attribute in _attributes_for(name):
        *path, last = attribute.split(".")
        owner = module
        for part in path:
            owner = owner._modules.get(part)
            if owner is None:
                break
        # the module's own stores, not getattr: while torch.fx traces, getattr gives a Proxy for a parameter
        store = owner is not None and next((s for s in (owner._parameters, owner._buffers, owner._modules,
                                                        vars(owner)) if last in s), None)
        if store:
            value = store[last]
            if (name == "bias" or name.endswith("_bias")) and (isinstance(value, torch.Tensor) or value is None):
                return value is not None
            return value
    raise ImportGap(f"the module keeps no attribute `{name}`, so its argument `{name}` cannot be read back")


def written(value: Any, name: str = "value") -> Any:
    """A constructor value as YAML writes it: tuples as lists, a module or class as its layer type's name."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (tuple, list)):
        return [written(v, name) for v in value]
    if isinstance(value, nn.Module):
        kind, args = match(value)
        return {"type": kind, **args} if args else kind
    if isinstance(value, type) and issubclass(value, nn.Module) and candidates(value):
        return candidates(value)[0].name
    raise ImportGap(f"argument `{name}` is {type(value).__name__} {value!r}, which YAML cannot write")


def same(a: Any, b: Any) -> bool:
    """Equal as constructor values: ``(1, 1)`` is ``1`` for torch's pair arguments; ``True`` is not ``1``."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (tuple, list)):
        return len(a) > 0 and all(same(x, b) for x in a)
    if isinstance(b, (tuple, list)):
        return same(b, a)
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def is_default(layer: LayerType, name: str, value: Any) -> bool:
    """Whether ``value`` is what ``layer`` takes for ``name`` when the YAML leaves it out."""
    param = layer.parameters[name]
    default = layer.defaults.get(name, param.default)
    if default is param.empty:
        return False
    try:
        return same(value, written(default, name))
    except ImportGap:  # a default YAML cannot write (a function): never equal to a written value
        return False


def _collapsed(value: Any) -> Any:
    """``[3, 3]`` -> ``3``: how a user writes torch's pair and triple arguments."""
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and same(v, value[0]) for v in value):
        return value[0]
    return value


def _arguments(layer: LayerType, module: nn.Module, in_shape: Shape | None) -> dict[str, Any]:
    """The YAML arguments of ``layer`` that rebuild ``module``, checked by rebuilding it."""
    originals, args, actual = _original_names(layer), {}, {}
    for name, param in layer.parameters.items():
        if name in layer.inferred:
            _inferred(layer, module, name, originals[name], in_shape, args, actual)
            continue
        if name in EXECUTION_ONLY:
            continue
        value = written(_read(module, originals[name]), name)
        if not is_default(layer, name, value):
            args[name] = value
    # An inferred argument the module does not keep (Swin attention's `dim`) and no input shape to infer it
    # from: each size of the module's weights is tried, and only one that rebuilds it exactly is taken.
    missing = [name for name in layer.inferred if name not in actual] if in_shape is None else []
    if len(missing) > 1:
        raise ImportGap(f"it keeps none of {missing}, which follow from the input shape; give the shape")
    sizes = sorted({size for value in module.state_dict().values() for size in value.shape})
    failure = None
    for guess in [{missing[0]: size} for size in sizes] if missing else [{}]:
        for collapse in (True, False):  # `kernel_size: 3` where that rebuilds it, else `[3, 3]`
            trial = {k: _collapsed(v) for k, v in args.items()} if collapse else args
            failure = _rebuilds(layer, module, trial, {**actual, **guess}, in_shape)
            if failure is None:
                return trial
    raise ImportGap(failure or f"no size of its weights rebuilds it as its `{missing[0]}`")


def _inferred(layer: LayerType, module: nn.Module, name: str, original: str, in_shape: Shape | None,
              args: dict[str, Any], actual: dict[str, Any]) -> None:
    """An argument skiptrain infers from the input shape: left out where the shape gives the module's value."""
    if original not in vars(module):
        return
    value = written(vars(module)[original], name)
    actual[name] = value
    multi = isinstance(value, list) and len(value) > 1  # a LayerNorm over several trailing axes
    if in_shape is None:
        if multi:
            args[name] = value
        return
    try:
        inferred = INFERRED[name](tuple(in_shape))
    except IndexError:
        raise ImportGap(f"`{name}` cannot be inferred from an input of shape {list(in_shape)}") from None
    if not same(value, inferred):
        if name != "normalized_shape":
            raise ImportGap(f"its `{name}` is {value}, but an input of shape {list(in_shape)} gives {inferred}")
        args[name] = value


def _build(layer: LayerType, args: dict[str, Any], actual: dict[str, Any], in_shape: Shape | None,
           device: str) -> nn.Module:
    with torch.device(device):
        if in_shape is not None:
            return layer.build(layer.resolve_args(args, tuple(in_shape), "import", {}, None))
        return layer.build({**layer.defaults, **{k: registry._tuples(v) for k, v in {**actual, **args}.items()}})


def _rebuilds(layer: LayerType, module: nn.Module, args: dict[str, Any], actual: dict[str, Any],
              in_shape: Shape | None) -> str | None:
    """None if ``layer`` built from ``args`` is ``module`` again (on the meta device: cheap); else the difference."""
    try:
        rebuilt = _build(layer, args, actual, in_shape, "meta")
    except (ConfigError, TypeError, ValueError, RuntimeError) as error:
        return f"building it with {args} fails: {str(error).splitlines()[0]}"
    if not isinstance(rebuilt, type(module)) and not _same_source(type(rebuilt), type(module)):
        return f"it builds a {type(rebuilt).__name__}, not a {type(module).__name__}"
    difference = _difference(module, rebuilt)
    if difference or in_shape is None:
        return difference
    return _forward_difference(layer, module, args, actual, in_shape)


def _plain(value: Any) -> Any:
    return tuple(_plain(v) for v in value) if isinstance(value, (tuple, list)) else value


def _attributes(module: nn.Module) -> dict[str, Any]:
    return {k: _plain(v) for k, v in vars(module).items()
            if not k.startswith("_") and k not in EXECUTION_ONLY | {"training"}
            and isinstance(v, (*_SCALARS, tuple, list))}


def _repr(module: nn.Module) -> str:
    text = re.sub(r",? ?inplace=(True|False)", "", repr(module))
    return text.removeprefix(type(module).__name__)


def _difference(module: nn.Module, rebuilt: nn.Module) -> str | None:
    """What tells ``rebuilt`` from ``module`` without running them: state dict, attributes, repr."""
    mine = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if mine != theirs:
        return f"its state dict {mine} would be {theirs}"
    ours = _attributes(rebuilt)
    for key, value in _attributes(module).items():
        if key not in ours or ours[key] != value:
            return f"its attribute `{key}` is {value!r}, the rebuilt layer's {ours.get(key, 'missing')!r}"
    if _repr(module) != _repr(rebuilt):
        return f"it prints as {repr(module)!r}, the rebuilt layer as {repr(rebuilt)!r}"
    return None


def call(module: Callable[..., Any], x: torch.Tensor) -> torch.Tensor:
    """``module`` on one tensor as a traced graph calls it: attention on (x, x, x), the output of a tuple first."""
    forward = getattr(module, "forward", module)
    params = inspect.signature(forward).parameters.values()
    required = sum(1 for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    kwargs = {"need_weights": False} if "need_weights" in inspect.signature(forward).parameters else {}
    out = module(*[x] * max(required, 1), **kwargs)
    return out[0] if isinstance(out, tuple) else out


def sample(in_shape: Shape, module: nn.Module | None = None, batch: int = 2) -> torch.Tensor:
    """A seeded random batch of ``in_shape`` (token ids for an embedding)."""
    generator = torch.Generator().manual_seed(0)
    if module is not None and hasattr(module, "num_embeddings"):
        return torch.randint(0, module.num_embeddings, (batch, *in_shape), generator=generator)
    return torch.randn((batch, *in_shape), generator=generator)


def _forward_difference(layer: LayerType, module: nn.Module, args: dict[str, Any], actual: dict[str, Any],
                        in_shape: Shape) -> str | None:
    """None if the rebuilt layer, given ``module``'s weights, computes bitwise what it does in eval mode."""
    rebuilt = _build(layer, args, actual, in_shape, "cpu")
    rebuilt.load_state_dict(module.state_dict())
    x = sample(in_shape, module).to(next(iter(module.state_dict().values()), torch.empty(0)).device)
    was_training = module.training
    module.eval()
    rebuilt.to(x.device).eval()
    try:
        with torch.no_grad():
            expected, got = call(module, x.clone()), call(rebuilt, x.clone())
    except (RuntimeError, TypeError, ValueError) as error:
        return f"it cannot run on an input of shape {list(in_shape)}: {str(error).splitlines()[0]}"
    finally:
        module.train(was_training)
    if expected.shape != got.shape or not torch.equal(expected, got):
        return f"the rebuilt layer computes other numbers on an input of shape {list(in_shape)}"
    return None


def call_gap(node: torch.fx.Node) -> str | None:
    """Why a ``call_module`` node is not its layer applied to one tensor (None when it is): every tensor
    argument is the same node (attention as ``mha(x, x, x)``), with no masks or other tensors."""
    tensors = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
    if not tensors:
        return f"`{node.target}` is called on no tensor"
    if any(t is not tensors[0] for t in tensors):
        return (f"`{node.target}` is called on several tensors ({', '.join(t.name for t in tensors)}); its layer "
                "takes one (attention: self-attention only, no masks)")
    extra = {k: v for k, v in node.kwargs.items() if not isinstance(v, torch.fx.Node)
             and k not in ("need_weights", "average_attn_weights") and v is not None}
    return f"`{node.target}` is called with {extra}, which its layer does not take" if extra else None


MERGE = "merge"  # the first item of function_of's merge form


_CALLS = ("function_of", "why_not", "ignorable", "operands", "translate")


def __getattr__(name: str) -> Any:
    """``function_of``, ``why_not``, ``ignorable``, ``operands``, ``translate``: import_functions' (loaded on first
    use, since it imports this module)."""
    if name in _CALLS:
        from . import import_functions

        return getattr(import_functions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
