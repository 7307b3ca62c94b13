"""Shape inference with PyTorch's own rules on meta tensors, and the projection pass.

Each layer is built on the ``meta`` device and run on an empty batch of its input
shape: no weights are allocated, and the shape rule is exactly torch's. Results are
memoized per (layer type, arguments, input shape), so a 1,000-layer network that
repeats one block costs a handful of meta forwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import projection, registry
from .errors import ShapeError
from .graph import INPUT, Graph, Node, Skip
from .projection import Projection

Shape = tuple[int, ...]
_CACHE: dict[tuple, tuple[Shape, str, int]] = {}
_CACHE_LIMIT = 20_000


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
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


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
    batch = torch.empty((2, *in_shape), device="meta", dtype=getattr(torch, in_dtype))
    try:
        with torch.no_grad():
            out = module(batch)
    except Exception as exc:
        raise ShapeError(f"`{node.type}` `{node.id}` cannot take an input of shape {list(in_shape)} "
                         f"({in_dtype}): {_first_line(exc)}", node.loc,
                         "change this layer's arguments or what feeds it; `skiptrain validate` "
                         "lists every node's shape") from None
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != 2:
        raise ShapeError(f"`{node.type}` `{node.id}` does not return one batched tensor", node.loc,
                         "layers must keep the batch axis first (torch.nn arguments such as "
                         "`flatten`'s `start_dim` count it)")
    result = (tuple(out.shape[1:]), str(out.dtype).removeprefix("torch."),
              sum(p.numel() for p in module.parameters()))
    if len(_CACHE) < _CACHE_LIMIT:
        _CACHE[key] = result
    return result


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def infer(graph: Graph) -> ModelPlan:
    """Walk the graph in order: fill inferred arguments, shapes, and plan each projection."""
    values: dict[str, tuple[Shape, str]] = {INPUT: (graph.input_shape, graph.input_dtype)}
    axes = {INPUT: "channels" if len(graph.input_shape) >= 2 else "last"}
    skip_index = {id(s): i for i, s in enumerate(graph.skips)}
    projections: dict[int, Projection] = {}
    taken = set(graph.nodes)
    for node in graph.order:
        layer = registry.get(node.type, node.arg_locs.get("type", node.loc))
        in_shape, in_dtype = values[node.inputs[0]]
        args = layer.resolve_args(node.args, in_shape, node.id, node.arg_locs, node.loc)
        shape, dtype, params = layer_shape(layer, args, in_shape, in_dtype, node)
        axis_kind = layer.axis if layer.axis != "inherit" else axes[node.inputs[0]]
        node.meta.update(args=args, in_shape=in_shape, layer_shape=shape, params=params, axis=axis_kind)
        for skip in graph.skips_into(node.id):
            source = values[skip.source][0]
            proj = projection.plan(skip, source, shape, axis_kind, _projection_id(node.id, taken))
            if proj is not None:
                taken.add(proj.id)
                projections[skip_index[id(skip)]] = proj
            axis = skip.axis if skip.axis is not None else projection.feature_axis(axis_kind, len(shape))
            shape = projection.merged_shape(skip, proj.out_shape if proj else source, shape, axis % len(shape))
        node.meta["shape"] = shape
        values[node.id] = (shape, dtype)
        axes[node.id] = axis_kind
    warnings = [f"`{n}`'s output is never used" for n in graph.unused()]
    out_shape, out_dtype = values[graph.output]
    return ModelPlan(graph, projections, out_shape, out_dtype, warnings)


def _projection_id(target: str, taken: set[str]) -> str:
    candidate, k = f"{target}_proj", 1
    while candidate in taken:
        k += 1
        candidate = f"{target}_proj{k}"
    return candidate
