"""Multiply-adds next to parameters: what each node and each projection costs per sample.

Counted by torch's own counter, ``torch.utils.flop_counter.FlopCounterMode``: each node's
module is built on the ``meta`` device (no weights allocated, as the shape pass does) and run
once on a batch of one sample of its input shape. The counter sees matrix products and
convolutions (``mm``, ``addmm``, ``bmm``, ``convolution``, ``scaled_dot_product_attention``, ...)
and counts 2 FLOPs per multiply-add, so MACs are its FLOPs / 2. Elementwise work (activations,
normalization, pooling, the merges of skips) is not counted: it is 0 here, as in torch's counter.

Results are memoized per (layer type, arguments, input shape, dtype), like the shape pass, so a
network that repeats one block costs a handful of counted forwards. An analysis writes into the
graph (torch.fx's ``node.meta``): ``node.meta["macs"]`` for a node, ``skip.meta["macs"]`` for the
projection on a skip.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import registry
from .graph import INPUT
from .shapes import ModelPlan, _freeze

Shape = tuple[int, ...]
_CACHE: dict[tuple, int] = {}
_CACHE_LIMIT = 20_000


@dataclass(frozen=True)
class Compute:
    """A plan's multiply-adds per sample: layers, projections, and the projections' share."""

    layer_macs: int
    projection_macs: int

    @property
    def macs(self) -> int:
        return self.layer_macs + self.projection_macs

    @property
    def projection_share(self) -> float:
        """The projections' fraction of all multiply-adds (0 when nothing is counted)."""
        return self.projection_macs / self.macs if self.macs else 0.0


def count_module(module: nn.Module, in_shape: Shape, dtype: str = "float32") -> int:
    """Multiply-adds of one forward of ``module`` (on meta) on one sample of shape ``in_shape``.

    A layer that refuses a batch of one (the shape pass ran it on 2 and 3) is counted on a batch
    of two, halved: every operation the counter sees costs in proportion to the batch."""
    from torch.utils.flop_counter import FlopCounterMode

    module.eval()
    for size in (1, 2):
        batch = torch.empty((size, *in_shape), device="meta", dtype=getattr(torch, dtype))
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                module(batch)
        except Exception:
            if size == 2:
                raise
            continue
        return counter.get_total_flops() // 2 // size
    raise AssertionError("unreachable")


def node_macs(layer: registry.LayerType, args: dict, in_shape: Shape, in_dtype: str) -> int:
    """Multiply-adds of one layer per sample (memoized; 0 for merges, which have no module)."""
    if layer.passthrough:
        return 0
    key = ("layer", layer.name, _freeze(args), in_shape, in_dtype)
    if key not in _CACHE:
        with torch.device("meta"):
            module = layer.build(args)
        _remember(key, count_module(module, in_shape, in_dtype))
    return _CACHE[key]


def projection_macs(projection) -> int:
    """Multiply-adds of a planned projection (a `projection.Projection`) per sample."""
    key = ("projection", projection.kind, repr(projection.args), projection.in_shape)
    if key not in _CACHE:
        with torch.device("meta"):
            module = projection.build()
        _remember(key, count_module(module, projection.in_shape))
    return _CACHE[key]


def _remember(key: tuple, macs: int) -> None:
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.clear()
    _CACHE[key] = macs


def count(plan: ModelPlan) -> Compute:
    """Write ``macs`` into every node's and projected skip's meta (once per plan) and sum them."""
    graph = plan.graph
    for node in graph.order:
        if "macs" not in node.meta:
            source = node.inputs[0]
            in_dtype = graph.input_dtype if source == INPUT else graph.nodes[source].meta["dtype"]
            node.meta["macs"] = node_macs(registry.get(node.type), node.meta["args"], node.meta["in_shape"], in_dtype)
    for proj in plan.projections.values():
        if "macs" not in proj.skip.meta:
            proj.skip.meta["macs"] = projection_macs(proj)
    return Compute(sum(node.meta["macs"] for node in graph.order),
                   sum(proj.skip.meta["macs"] for proj in plan.projections.values()))


def macs_text(macs: int) -> str:
    """A short form for summaries: 4.09 G, 1.82 M, 950 K, 12."""
    for unit, size in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if macs >= size:
            return f"{macs / size:.2f} {unit}"
    return str(macs)
