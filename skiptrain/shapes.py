"""Shape inference with PyTorch's own rules on meta tensors, and the projection pass.

Each layer is built on the ``meta`` device and run on an empty batch of its input
shape: no weights are allocated, and the shape rule is exactly torch's. Results are
memoized per (layer type, arguments, input shape), so a 1,000-layer network that
repeats one block costs a handful of meta forwards.

Meta kernels do not check everything that CPU and CUDA kernels check (dtypes, the
``dim`` of a softmax, a transposed conv's ``output_padding``), so two rules are added: a
layer's weights must be non-empty and, unless it is an embedding (which takes ids),
of the dtype of its input; and a layer whose CPU run is cheap also runs once on a
batch of zeros on CPU, on one thread (with uninitialized weights), where its kernel checks the rest.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import expr, projection, registry, tying
from .conditions import decide
from .errors import ConfigError, ShapeError
from .graph import INPUT, Graph, Node, Skip
from .merges import MERGES, blocking_axes, broadcast_side
from .projection import Projection

Shape = tuple[int, ...]
_CACHE: dict[tuple, tuple[Shape, str, int]] = {}
_CACHE_LIMIT = 20_000
_CPU_CHECK_LIMIT = 1 << 22  # elements of the input and output batches (and weights) of a layer also run on CPU
_CPU_CHECK_WORK = 1 << 28  # and input elements x weights, a bound on its multiply-adds


@dataclass
class ModelPlan:
    """A graph with every shape known and every skip resolved: what `validate` reports."""

    graph: Graph
    projections: dict[int, Projection]  # index into graph.skips -> its projection
    output_shape: Shape
    output_dtype: str
    warnings: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.layer_params + self.projection_params

    @property
    def layer_params(self) -> int:
        return sum(node.meta["params"] for node in self.graph.order)

    @property
    def projection_params(self) -> int:
        return sum(p.params for p in self.projections.values())

    def __post_init__(self) -> None:
        self._by_skip = {id(p.skip): p for p in self.projections.values()}

    def projection_for(self, skip: Skip) -> Projection | None:
        return self._by_skip.get(id(skip))


def _freeze(value: Any) -> Any:
    """A cache key for an argument: `1`, `1.0` and `true` stay apart (torch takes them differently)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return ("dict", tuple((_freeze(k), _freeze(v)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:  # a YAML `!!set`
        return ("unhashable", type(value).__name__, repr(value))
    return type(value).__name__, value


def layer_shape(layer: registry.LayerType, args: dict, in_shape: Shape, in_dtype: str,
                node: Node) -> tuple[Shape, str, int]:
    """(output shape, output dtype, parameter count) of one layer, by a meta forward."""
    if layer.passthrough:
        return in_shape, in_dtype, 0
    key = (layer.name, _freeze(args), in_shape, in_dtype)
    if key in _CACHE:
        return _CACHE[key]
    try:
        with torch.device("meta"):
            module = layer.build(args)
    except Exception as exc:  # torch's own argument checks: report them at the layer
        raise ShapeError(f"cannot build `{node.type}` `{node.id}`: {_first_line(exc)}", node.loc,
                         "check this layer's arguments against torch.nn's documentation") from None
    module.eval()
    _check_weights(module, in_dtype, node)
    try:
        batch = torch.empty((2, *in_shape), device="meta", dtype=getattr(torch, in_dtype))
        with torch.no_grad():
            out = module(batch)
    except Exception as exc:
        raise ShapeError(f"`{node.type}` `{node.id}` cannot take an input of shape {list(in_shape)} "
                         f"({in_dtype}): {_first_line(exc)}", node.loc,
                         "change this layer's arguments or what feeds it; `skiptrain validate` "
                         "lists every node's shape") from None
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != 2 or not _keeps_batch(module, out, batch):
        raise ShapeError(f"`{node.type}` `{node.id}` does not return one batched tensor", node.loc,
                         "layers must keep the batch axis first (torch.nn arguments such as "
                         "`flatten`'s `start_dim` count it)")
    if 0 in out.shape:
        raise ShapeError(f"`{node.type}` `{node.id}` gives an empty output of shape {list(out.shape[1:])}", node.loc,
                         "every axis needs at least one element: check sizes such as `out_features`, "
                         "`out_channels`, `kernel_size` and `stride`")
    params = sum(p.numel() for p in module.parameters())
    if (max(batch.numel(), out.numel(), params) <= _CPU_CHECK_LIMIT
            and batch.numel() * params <= _CPU_CHECK_WORK and params <= _CPU_CHECK_LIMIT):
        _check_on_cpu(module, batch, node)
    result = (tuple(out.shape[1:]), str(out.dtype).removeprefix("torch."), params)
    if len(_CACHE) < _CACHE_LIMIT:
        _CACHE[key] = result
    return result


def _keeps_batch(module: nn.Module, out: torch.Tensor, batch: torch.Tensor) -> bool:
    """The same sample shape for a batch of 3: `unflatten` of the batch axis into [2, 1] fits only 2."""
    try:
        with torch.no_grad():
            other = module(torch.empty((3, *batch.shape[1:]), device="meta", dtype=batch.dtype))
    except Exception:
        return False
    return isinstance(other, torch.Tensor) and other.shape == (3, *out.shape[1:])


def _check_weights(module: nn.Module, in_dtype: str, node: Node) -> None:
    """Weights that the meta device accepts and CPU kernels do not: empty ones, or float32 ones on other values."""
    for name, weight in module.named_parameters():
        if weight.numel() == 0:  # `kernel_size: 0`, `num_embeddings: 0`
            raise ShapeError(f"`{node.type}` `{node.id}` has an empty `{name}` of shape {list(weight.shape)}",
                             node.loc, "every size of a layer must be at least 1: check `kernel_size`, "
                             "`num_embeddings` and the like")
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return  # takes integer ids; the meta forward checks that
    weights = {str(t.dtype).removeprefix("torch.") for t in (*module.parameters(), *module.buffers())
               if t.is_floating_point()}
    if weights and weights != {in_dtype}:
        raise ShapeError(f"`{node.type}` `{node.id}` has {'/'.join(sorted(weights))} weights but receives "
                         f"{in_dtype} values", node.loc,
                         "skiptrain builds float32 layers: token ids (int64) go through an `embedding` first, "
                         "other inputs use `input_dtype: float32`")


def _check_on_cpu(module: nn.Module, batch: torch.Tensor, node: Node) -> None:
    """Run a small layer once on CPU, whose kernel checks what meta's may not (`gelu` on int64).

    On one thread: a second thread buys nothing for a one-off kernel on small tensors, and on a
    busy machine waiting for it made the checks of DenseNet-121 cost 0.3-1.2 s instead of 0.02 s
    (benchmarks/validate_scaling.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            module.to_empty(device="cpu")
            for buffer in module.buffers():  # an index table (Swin's relative positions) holds garbage: 0 is valid
                if not buffer.is_floating_point():
                    buffer.zero_()
            module(torch.zeros(batch.shape, dtype=batch.dtype))
    except Exception as exc:
        dtype = str(batch.dtype).removeprefix("torch.")
        raise ShapeError(f"`{node.type}` `{node.id}` cannot take an input of shape {list(batch.shape[1:])} "
                         f"({dtype}): {_first_line(exc)}", node.loc,
                         "change this layer's arguments or what feeds it" if batch.is_floating_point() else
                         "token ids (int64) go through an `embedding` first; other inputs use "
                         "`input_dtype: float32`") from None
    finally:
        torch.set_num_threads(threads)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


@functools.cache
def _module_attributes() -> frozenset[str]:
    return frozenset(dir(nn.Module())) | {"code", "meta"}  # a SkipNet's own attributes too


def _check_module_name(node_id: str, loc) -> None:
    """Each part of an id names a submodule: it must not shadow an attribute (`training`, `forward`)."""
    for part in node_id.split("."):
        if part in _module_attributes():
            raise ConfigError(f"id `{node_id}`: `{part}` is the name of a torch.nn.Module attribute", loc,
                              f"ids become module names and `{part}` would hide the attribute: rename it "
                              f"(for example `{part}_layer`)")


def infer(graph: Graph) -> ModelPlan:
    """Walk the graph in order: fill inferred arguments, shapes, and plan each projection."""
    values: dict[str, tuple[Shape, str]] = {INPUT: (graph.input_shape, graph.input_dtype)}
    axes = {INPUT: "channels" if len(graph.input_shape) >= 2 else "last"}
    skip_index = {id(s): i for i, s in enumerate(graph.skips)}
    projections: dict[int, Projection] = {}
    taken = set(graph.nodes) | _named_projections(graph)
    warnings: list[str] = []
    dropped: set[int] = set()
    for node in graph.order:
        _check_module_name(node.id, node.loc)
        layer = registry.get(node.type, node.arg_locs.get("type", node.loc))
        in_shape, in_dtype = values[node.inputs[0]]
        # arguments that read shapes (`${in_channels // 2}`) were left as expressions by spec: resolve them now
        given = expr.resolve(node.args, lambda ref: values[ref][0]) if expr.deferred_in(node.args) else node.args
        args = layer.resolve_args(given, in_shape, node.id, node.arg_locs, node.loc)
        shape, dtype, params = layer_shape(layer, args, in_shape, in_dtype, node)
        axis_kind = layer.axis if layer.axis != "inherit" else axes[node.inputs[0]]
        node.meta.update(args=args, in_shape=in_shape, layer_shape=shape, params=params, axis=axis_kind)
        node.meta["layer_dtype"] = dtype
        for skip in graph.skips_into(node.id):
            if "when" in skip.meta and not decide(skip.meta["when"], lambda ref: shape if ref == node.id else
                                                  values[ref][0]):
                dropped.add(id(skip))  # its `when:` on shapes is false
                continue
            source, source_dtype = values[skip.source]
            merge = MERGES.get(skip.merge, skip.loc)
            axis = skip.meta["axis"] = projection.merge_axis(skip, source, shape, axis_kind)
            proj = projection.plan(skip, merge, source, shape, axis, axis_kind,
                                   skip.name or _projection_id(node.id, taken))
            if proj is not None:
                _check_module_name(proj.id, skip.loc)
                if proj.params and source_dtype != "float32":
                    raise ShapeError(f"skip `{skip.source}` -> `{skip.target}` needs a projection "
                                     f"({proj.description}) whose float32 weights cannot take the {source_dtype} "
                                     f"values of `{skip.source}`", skip.loc,
                                     "skip from a float32 node, or make the shapes agree")
                taken.add(proj.id)
                projections[skip_index[id(skip)]] = proj
                if merge.broadcasts and _meant_broadcast(source, shape):
                    warnings.append(f"skip `{skip.source}` {list(source)} -> `{skip.target}` {list(shape)} "
                                    f"({skip.merge}) gets a projection ({proj.description}): it broadcasts on "
                                    f"some axes but not on {_blocking(source, shape)}")
            needed = proj.out_shape if proj else source
            merged = merge.merged_shape(needed, shape, axis)
            # what `validate` shows and the generated forward needs: which side a broadcast stretches
            skip.meta.update(to_shape=shape, shape=merged, broadcast=broadcast_side(needed, shape, merged)
                             if merge.broadcasts else None)
            shape = merged
            dtype = str(torch.promote_types(getattr(torch, dtype), getattr(torch, source_dtype))).removeprefix("torch.")
        node.meta["shape"] = shape
        node.meta["dtype"] = dtype
        values[node.id] = (shape, dtype)
        axes[node.id] = axis_kind
    if dropped:
        projections = _drop_skips(graph, dropped, projections)
    tying.check(graph)  # `tie:` names a parameter of the same shape; the shared one is counted once
    warnings += [f"`{n}`'s output is never used" for n in graph.unused()]
    out_shape, out_dtype = values[graph.output]
    return ModelPlan(graph, projections, out_shape, out_dtype, warnings)


def _drop_skips(graph: Graph, dropped: set[int], projections: dict[int, Projection]) -> dict[int, Projection]:
    """Remove the skips whose `when:` was false; the projections keep their skips under new indices."""
    by_skip = {id(graph.skips[i]): p for i, p in projections.items()}
    graph.skips[:] = [s for s in graph.skips if id(s) not in dropped]
    graph._skips_by_target = None  # type: ignore[attr-defined]  # skips_into indexes again
    return {i: by_skip[id(s)] for i, s in enumerate(graph.skips) if id(s) in by_skip}


def _meant_broadcast(source: Shape, target: Shape) -> bool:
    """A projected skip of a broadcasting merge that has size 1 against a larger size on some axis."""
    return len(source) == len(target) and any(s != t and 1 in (s, t) for s, t in zip(source, target))


def _blocking(source: Shape, target: Shape) -> str:
    return ", ".join(f"axis {i} ({source[i]} vs {target[i]})" for i in blocking_axes(source, target))


def _named_projections(graph: Graph) -> set[str]:
    """The module paths that skips' `id:` give their projections; a clash with a node or another skip is an error."""
    names: dict[str, Skip] = {}
    scopes = {node_id.rsplit(".", k)[0] for node_id in graph.nodes for k in range(1, node_id.count(".") + 1)}
    for skip in graph.skips:
        if skip.name is None:
            continue
        clash = ("a layer's id" if skip.name in graph.nodes else "a block scope" if skip.name in scopes else
                 "another skip's id" if skip.name in names else None)
        parents = [skip.name.rsplit(".", k)[0] for k in range(1, skip.name.count(".") + 1)]
        if clash is None and any(p in graph.nodes or p in names for p in parents):
            clash = "a path inside a layer"
        if clash:
            raise ConfigError(f"skip id `{skip.name}` (its projection's name) is already {clash}", skip.loc,
                             "give the skip an id that no layer or other skip in this scope uses, "
                             "for example `downsample`")
        names[skip.name] = skip
    return set(names)


def _projection_id(target: str, taken: set[str]) -> str:
    candidate, k = f"{target}_proj", 1
    while candidate in taken:
        k += 1
        candidate = f"{target}_proj{k}"
    return candidate
