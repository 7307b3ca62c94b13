"""Traced function and method calls as skiptrain layers and merges: ``import_layers.function_of``'s work.

A call maps to a layer in one of two ways. torch.nn.functional's functions and the tensor methods of
the same name (``F.relu``, ``x.sigmoid()``, ``F.adaptive_avg_pool2d``, ``F.gelu``) are looked up in the
layer registry by name and their arguments bound by name to the torch.nn class's constructor, derived,
not listed. Calls whose axes count the batch (``permute``, ``transpose``, ``mean``, ``reshape``,
indexing, ``torch.cat``) have a translation each below, into skiptrain's sample axes. Every result is
checked by running it: the layer built from the registry on a random batch of the input shape gives
bitwise what the traced call gives, and a batch of 3 keeps the shape (nothing read the batch size).
"""
from __future__ import annotations

import inspect
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import ConfigError
from .import_layers import EXECUTION_ONLY, MERGE, ImportGap, call, candidates, is_default, same, sample, written
from .layers.indexing import Chunk, Select, Slice, Split
from .layers.own import Mean, Permute, Reshape, Scale, Transpose
from .merges import Add, Concat, Mul
from .registry import LAYERS, Shape

# Calls that compute no tensor: shape reads, integer arithmetic on them, assertions.
_SHAPE_METHODS = {"size", "dim", "numel", "ndimension"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}
_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
               operator.pow, operator.neg, operator.eq, operator.ne, operator.lt, operator.le, operator.gt,
               operator.ge, operator.getitem, operator.and_, operator.or_, operator.not_}
_ASSERTS = {torch._assert}
# Calls that give a tuple of tensors, read piece by piece by getitem nodes.
_PIECES = {torch.chunk: Chunk, torch.split: Split, ("method", "chunk"): Chunk, ("method", "split"): Split}
_PIECE_ARGS = {"input": "x", "tensor": "x", "chunks": "count", "split_size_or_sections": "count",
               "split_size": "count"}
_SAME = {("method", "contiguous")}  # the value itself
_RESHAPES = {torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten, *(
    ("method", name) for name in ("reshape", "view", "squeeze", "unsqueeze", "unflatten"))}
# torch.nn.functional's name -> the torch.nn class's, where they differ.
_NN_NAMES = {"leaky_relu": "LeakyReLU", "interpolate": "Upsample", "rrelu": "RReLU"}
_NOT_ARGUMENTS = {"training", "_stacklevel"}  # F.dropout's `training` is fx's trace-time constant


def key(node: fx.Node) -> Any:
    return node.target if node.op == "call_function" else ("method", node.target)


def ignorable(node: fx.Node) -> bool:
    """True for nodes that compute no tensor (shape reads and arithmetic on them, asserts, a tuple of pieces)."""
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS or key(node) in _PIECES
    if node.op != "call_function":
        return False
    target = node.target
    if target is getattr:
        return node.args[1] in _SHAPE_ATTRIBUTES
    if target in _ASSERTS or target in _PIECES:
        return True
    if target in _ARITHMETIC:
        inputs = node.all_input_nodes
        return bool(inputs) and all(ignorable(n) for n in inputs) and not _reads_pieces(node)
    return False


def _reads_pieces(node: fx.Node) -> bool:
    return node.target is operator.getitem and isinstance(node.args[0], fx.Node) and _producer(node.args[0])


def _producer(node: fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and key(node) in _PIECES


def operands(node: fx.Node) -> list[fx.Node]:
    """The tensors a layer or merge reads, in order: a piece of ``x.chunk(2)`` reads ``x``, ``mha(...)[0]`` the call."""
    if _reads_pieces(node):
        return operands(node.args[0])
    if node.target is operator.getitem and isinstance(node.args[0], fx.Node) and _gives_tuple(node.args[0]):
        return [node.args[0]]
    return [n for n in node.all_input_nodes if not ignorable(n)]


def _shape_of(node: fx.Node, shapes: Any, ops: list[fx.Node]) -> list[Shape]:
    result = []
    for i, op in enumerate(ops):
        if isinstance(shapes, dict) and (op in shapes or op.name in shapes):
            result.append(tuple(shapes[op] if op in shapes else shapes[op.name]))
        elif isinstance(shapes, (list, tuple)) and i < len(shapes):
            result.append(tuple(shapes[i]))
        elif "tensor_meta" in op.meta and hasattr(op.meta["tensor_meta"], "shape"):
            result.append(tuple(op.meta["tensor_meta"].shape[1:]))
        else:
            raise ImportGap(f"the shape of `{op.name}` (an input of `{node.name}`) is not known")
    return result


def _evaluate(arg: Any, env: dict[fx.Node, Any], shapes: Any = None) -> Any:
    """``arg`` with its nodes replaced by values: tensors from ``env``, shape arithmetic computed on them (on a
    meta tensor of its known shape where it reads another tensor's shape, such as ViT's ``x.shape[0]``)."""
    batch = next((v.shape[0] for v in env.values() if isinstance(v, torch.Tensor)), 2)

    def value(n: fx.Node) -> Any:
        if n in env:
            return env[n]
        if not ignorable(n):
            known = shapes if isinstance(shapes, dict) else None  # a list is in the call's operand order
            env[n] = torch.empty((batch, *_shape_of(n, known, [n])[0]), device="meta")
            return env[n]
        env[n] = _run(n, env, shapes)
        return env[n]
    return fx.node.map_arg(arg, value)


def _run(node: fx.Node, env: dict[fx.Node, Any], shapes: Any = None) -> Any:
    """The traced call itself on the values in ``env``."""
    args, kwargs = _evaluate(node.args, env, shapes), _evaluate(node.kwargs, env, shapes)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _gives_tuple(node: fx.Node) -> bool:
    """A module call whose output is a tuple (attention's (output, weights)): read by getitem."""
    if node.op != "call_module":
        return False
    meta = node.meta.get("tensor_meta")
    if meta is not None:
        return isinstance(meta, (tuple, list)) and not hasattr(meta, "shape")  # TensorMetadata is a NamedTuple
    owner = node.graph.owning_module
    module = owner.get_submodule(node.target) if owner is not None else None
    return isinstance(module, (nn.MultiheadAttention, nn.RNNBase))


def function_of(node: fx.Node, shapes: Any = None) -> tuple | None:
    """``translate``, with None where the call has no layer or merge."""
    try:
        return translate(node, shapes)
    except ImportGap:
        return None


def why_not(node: fx.Node, shapes: Any = None) -> str | None:
    """Why ``function_of`` gives None for ``node``; None when it gives a layer or a merge."""
    try:
        translate(node, shapes)
    except ImportGap as gap:
        return gap.reason
    return None


def translate(node: fx.Node, shapes: Any = None) -> tuple:
    """(type, args), ("merge", name, args) or ("identity", {}) for a traced call; ImportGap where none fits."""
    if node.op not in ("call_function", "call_method"):
        raise ImportGap(f"`{node.name}` is a {node.op} node, not a function or method call")
    if ignorable(node):
        raise ImportGap(f"`{node.name}` computes no tensor (a shape, an assertion): skip it")
    name = _name(node)
    ops = operands(node)
    if node.target is operator.getitem and ops[0] is node.args[0] and _gives_tuple(node.args[0]):
        if node.args[1] == 0:
            return _identity()
        raise ImportGap(f"`{node.name}` reads output {node.args[1]} of module `{node.args[0].target}`; its layer "
                        "gives only the first")
    in_shapes = _shape_of(node, shapes, ops)
    merge = _MERGES.get(key(node))
    if merge is not None and not (len(ops) == 1 and key(node) in _TRANSLATIONS):  # x * 0.5 is a layer
        return merge(node, ops, in_shapes)
    if len(ops) != 1:
        raise ImportGap(f"`{name}` reads {len(ops)} tensors; a layer reads one")
    if key(node) in _SAME:
        return _identity()
    in_shape = in_shapes[0]
    x = torch.empty((2, *in_shape), device="meta")
    env = {ops[0]: x}
    args, kwargs = _evaluate(node.args, env, shapes), _evaluate(node.kwargs, env, shapes)
    translation = _TRANSLATIONS.get(key(node))
    if key(node) in _RESHAPES:
        factory, layer_args = _reshaped(node, x, shapes)
    elif _reads_pieces(node):
        factory, layer_args = _piece(node, x, shapes)
    elif translation is not None:
        factory, layer_args = translation(*args, **kwargs)
    else:
        factory, layer_args = _by_name(node, name, args, kwargs)
    layer_name = _registered(factory, name)
    layer_args = _without_defaults(layer_name, layer_args)
    _check(node, ops[0], layer_name, layer_args, in_shape, shapes)
    return layer_name, layer_args


def _name(node: fx.Node) -> str:
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))


def _identity() -> tuple[str, dict]:
    return candidates(nn.Identity)[0].name, {}


def _registered(factory: type, name: str) -> str:
    layers = candidates(factory)
    if not layers:
        raise ImportGap(f"`{name}` would be a {factory.__name__}, which no registered layer type builds")
    return layers[0].name


def _without_defaults(layer_name: str, args: dict[str, Any]) -> dict[str, Any]:
    layer = LAYERS.get(layer_name)
    written_args = {name: written(value, name) for name, value in args.items()}
    return {name: value for name, value in written_args.items() if not is_default(layer, name, value)}


def _check(node: fx.Node, operand: fx.Node, layer_name: str, args: dict[str, Any], in_shape: Shape,
           shapes: Any) -> None:
    """The layer computes bitwise what the call computes, and keeps the batch size (batches of 2 and 3)."""
    layer = LAYERS.get(layer_name)
    try:
        module = layer.build(layer.resolve_args(args, tuple(in_shape), node.name, {}, None)).eval()
        if any(True for _ in module.parameters()):
            raise ImportGap(f"`{layer_name}` would learn parameters that `{node.name}` does not have")
        x = sample(in_shape)
        with torch.no_grad():
            expected, got = _run(node, {operand: x.clone()}, shapes), call(module, x.clone())
            x3 = torch.empty((3, *in_shape), device="meta")
            expected3, got3 = _run(node, {operand: x3}, shapes), call(module.to("meta"), x3)
    except (ConfigError, RuntimeError, TypeError, ValueError, IndexError) as error:
        raise ImportGap(f"`{layer_name}` with {args} does not run as `{node.name}` on an input of shape "
                        f"{list(in_shape)}: {str(error).splitlines()[0]}") from None
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape or not torch.equal(expected, got):
        raise ImportGap(f"`{layer_name}` with {args} computes other numbers than `{node.name}`")
    if expected3.shape != got3.shape:
        raise ImportGap(f"`{node.name}` depends on the batch size (gives {list(expected3.shape)} for a batch of 3)")


def _by_name(node: fx.Node, name: str, args: tuple, kwargs: dict) -> tuple[type, dict]:
    """``F.gelu(x, approximate=...)`` -> ``nn.GELU(approximate=...)``: the registry's torch.nn class of that name,
    its arguments bound by name through torch.nn.functional's signature."""
    base = name.rstrip("_")  # relu_ is relu in place
    layer_name = _NN_NAMES.get(base, base)
    if layer_name not in LAYERS:
        raise ImportGap(f"`{name}` has no layer type of that name")
    factory = LAYERS.get(layer_name).factory
    if not (isinstance(factory, type) and factory.__module__.startswith("torch.nn")):
        raise ImportGap(f"`{name}` is not torch.nn.functional's `{base}`")
    function = getattr(F, base, None)
    accepted = inspect.signature(factory).parameters
    variadic = inspect.isfunction(function) and any(  # F.max_pool2d dispatches through fn(*args, **kwargs)
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in inspect.signature(function).parameters.values())
    if not inspect.isfunction(function) or variadic:  # a builtin (torch.sigmoid, F.gelu): the class's order
        named = [p for p in accepted if p not in EXECUTION_ONLY]
        if len(args) - 1 > len(named) or any(k not in accepted and k not in EXECUTION_ONLY for k in kwargs):
            raise ImportGap(f"`{name}`'s arguments {list(args[1:])} {kwargs} do not fit torch.nn's {factory.__name__}")
        result = {**dict(zip(named, args[1:])), **{k: v for k, v in kwargs.items() if k not in EXECUTION_ONLY}}
        return factory, result  # checked by running it
    try:
        bound = inspect.signature(function).bind(*args, **kwargs)
    except TypeError as error:
        raise ImportGap(f"`{name}`: {error}") from None
    params = inspect.signature(function).parameters
    result = {}
    for i, (param, value) in enumerate(bound.arguments.items()):
        if i == 0 or param in EXECUTION_ONLY or param in _NOT_ARGUMENTS or same(value, params[param].default):
            continue  # left at the default: the class's own (the check below runs both)
        if param in accepted:
            result[param] = value
        elif not same(value, params[param].default):
            raise ImportGap(f"`{name}`'s `{param}: {value!r}` has no counterpart in torch.nn's {factory.__name__}")
    return factory, result


def _axis(dim: int, rank: int, name: str) -> int:
    """A tensor axis (batch first) as a sample axis (one counted from the end stays so: ``-1`` is the last);
    the batch axis itself is an ImportGap."""
    if not -rank <= dim < rank:
        raise ImportGap(f"`{name}`: axis {dim} of a tensor with {rank} axes")
    if dim % rank == 0:
        raise ImportGap(f"`{name}` works on the batch axis, which no layer touches")
    return dim if dim < 0 else dim - 1


def _dims(dims: tuple) -> list[int]:
    return list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple, torch.Size)) else list(dims)


def _permute(x: torch.Tensor, *dims: Any) -> tuple[type, dict]:
    order = [d % x.dim() for d in _dims(dims)]
    if not order or order[0] != 0:
        raise ImportGap(f"permute({order}) moves the batch axis")
    return Permute, {"dims": [d - 1 for d in order[1:]]}


def _transpose(x: torch.Tensor, dim0: int, dim1: int) -> tuple[type, dict]:
    return Transpose, {"dims": [_axis(dim0, x.dim(), "transpose"), _axis(dim1, x.dim(), "transpose")]}


def _reshaped(node: fx.Node, x: torch.Tensor, shapes: Any) -> tuple[type, dict]:
    """view/reshape/squeeze/unsqueeze/unflatten as ``reshape`` to the shape the call gives one sample."""
    out = _run(node, {operands(node)[0]: x}, shapes)
    if out.dim() == 0 or out.shape[0] != x.shape[0]:
        raise ImportGap(f"`{node.name}` gives {list(out.shape)} for a batch of {x.shape[0]}: it changes the batch axis")
    return Reshape, {"shape": list(out.shape[1:])}


def _mean(x: torch.Tensor, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> tuple[type, dict]:
    if dim is None or dtype is not None:
        raise ImportGap("mean over every axis (the batch too) or into another dtype has no layer")
    dims = [_axis(d, x.dim(), "mean") for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
    return Mean, {"dim": dims[0] if not isinstance(dim, (list, tuple)) else dims, "keepdim": keepdim}


def _scale(a: Any, b: Any) -> tuple[type, dict]:
    """``x * 0.5`` or ``0.5 * x``: a ``scale`` layer (a constant factor, not learned)."""
    factor = b if isinstance(a, torch.Tensor) else a
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise ImportGap(f"multiplying by {factor!r}: only a number is a `scale` layer")
    return Scale, {"factor": factor}


def _flatten(x: torch.Tensor, start_dim: int = 0, end_dim: int = -1) -> tuple[type, dict]:
    return nn.Flatten, {"start_dim": start_dim, "end_dim": end_dim}


def _getitem(x: torch.Tensor, index: Any) -> tuple[type, dict]:
    """``x[:, 0]`` -> select, ``x[:, 1:3]`` -> slice: one sample axis indexed, the batch axis whole."""
    entries = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        entries = entries[:at] + [slice(None)] * (x.dim() - len(entries) + 1) + entries[at + 1:]
    whole = slice(None)
    picked = [(i, e) for i, e in enumerate(entries) if e != whole]
    if len(picked) != 1 or picked[0][0] == 0 or not isinstance(picked[0][1], (int, slice)):
        raise ImportGap(f"indexing with {index!r} is not one integer or slice on one sample axis")
    position, entry = picked[0]
    if isinstance(entry, int):
        return Select, {"index": entry, "dim": position - 1}
    return Slice, {"start": entry.start or 0, "end": entry.stop, "step": entry.step or 1, "dim": position - 1}


def _piece(node: fx.Node, x: torch.Tensor, shapes: Any) -> tuple[type, dict]:
    """Piece ``i`` of ``x.chunk(n, dim)`` / ``x.split(sizes, dim)``: a chunk/split layer with ``index: i``."""
    producer, index = node.args[0], node.args[1]
    factory = _PIECES[key(producer)]
    args = _evaluate(producer.args, {producer.args[0]: x}, shapes)
    kwargs = {_PIECE_ARGS.get(k, k): v for k, v in _evaluate(producer.kwargs, {producer.args[0]: x}, shapes).items()}
    signature = inspect.signature(lambda x, count, dim=0: None).bind(*args, **kwargs).arguments
    first = "chunks" if factory is Chunk else "sizes"
    count = signature["count"]
    return factory, {first: list(count) if isinstance(count, (list, tuple)) else count, "index": index,
                     "dim": _axis(signature.get("dim", 0), x.dim(), _name(producer))}


def _merge(merge: Any) -> Callable[..., tuple]:
    def translate_merge(node: fx.Node, ops: list[fx.Node], in_shapes: list[Shape]) -> tuple:
        values = [a for a in (*node.args, *node.kwargs.values()) if not isinstance(a, str)]
        if len(ops) != 2 or len([v for v in values if isinstance(v, fx.Node)]) != 2 or node.kwargs.get("alpha", 1) != 1:
            raise ImportGap(f"`{_name(node)}` of {values!r}: a merge joins two tensors (no constants, no alpha)")
        # a parameter (get_attr) has no batch axis: its rank is not a sample's
        ranks = {len(shape) for op, shape in zip(ops, in_shapes) if op.op != "get_attr"}
        if len(ranks) > 1:
            raise ImportGap(f"`{node.name}` joins tensors of different ranks {in_shapes}; a merge joins one rank")
        return MERGE, merge.name, {}
    return translate_merge


def _cat(node: fx.Node, ops: list[fx.Node], in_shapes: list[Shape]) -> tuple:
    bound = inspect.signature(lambda tensors, dim=0: None).bind(*node.args, **node.kwargs).arguments
    tensors, dim = bound["tensors"], bound.get("dim", 0)
    if not isinstance(dim, int) or len(ops) != len(tensors) or len(set(map(len, in_shapes))) != 1:
        raise ImportGap(f"`{node.name}` concatenates {tensors!r} on {dim!r}: tensors of one rank on a fixed axis")
    if len(ops) == 1:
        return _identity()
    return MERGE, Concat.name, {"axis": _axis(dim, len(in_shapes[0]) + 1, "cat")}


_TRANSLATIONS: dict[Any, Callable[..., tuple[type, dict]]] = {
    torch.permute: _permute, ("method", "permute"): _permute,
    torch.transpose: _transpose, ("method", "transpose"): _transpose,
    torch.mean: _mean, ("method", "mean"): _mean,
    torch.flatten: _flatten, ("method", "flatten"): _flatten,
    operator.getitem: _getitem,
    **dict.fromkeys([operator.mul, torch.mul, ("method", "mul")], _scale),
}
_MERGES: dict[Any, Callable[..., tuple]] = {
    **dict.fromkeys([operator.add, operator.iadd, torch.add, ("method", "add"), ("method", "add_")], _merge(Add)),
    **dict.fromkeys([operator.mul, operator.imul, torch.mul, ("method", "mul"), ("method", "mul_")], _merge(Mul)),
    **dict.fromkeys([torch.cat, torch.concat, torch.concatenate], _cat),
}
