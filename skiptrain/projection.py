"""The one rule that resolves a skip whose source and target shapes differ.

Given both shapes, the merge, the axis the target works on and the policy, decide
which learnable projection goes on the skip path (or that none is needed, or that
the mismatch is an error), in the manner of torchvision's ``downsample``. The rule
checks what no projection fixes and classifies the mismatch; the kinds in
``projection_kinds.KINDS`` say which of them the policy picks and build it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ShapeError
from .graph import Skip
from .merges import MERGES, Merge, blocking_axes, broadcast_shape
from .projection_kinds import CHANGES, KINDS, NONE, Mismatch, ProjectionKind, Unfit, policies

Shape = tuple[int, ...]


@dataclass
class Projection:
    """A planned projection on a skip: what it is, its shapes and its size."""

    id: str  # module path, in the target's scope: `down2.bn2_proj`
    skip: Skip
    kind: str  # a name in projection_kinds.KINDS
    in_shape: Shape
    out_shape: Shape
    stride: tuple[int, ...] = ()  # spatial factor: down (conv/pool/subsample) or up (upsample)
    params: int = 0
    args: Any = None  # the kind's typed parameters (`ConvParams`, `PadParams`, ...)

    @property
    def rule(self) -> ProjectionKind:
        return KINDS.get(self.kind)

    @property
    def description(self) -> str:
        return self.rule.describe(self.args)

    def build(self) -> nn.Module:
        """The module (nn.Sequential for conv kinds, so its keys read `X_proj.0.weight`)."""
        return self.rule.build(self.args, self.in_shape)


def feature_axis(axis_kind: str, rank: int) -> int:
    """The sample axis a skip into a layer of this kind merges on."""
    return 0 if axis_kind == "channels" and rank >= 2 else rank - 1


def _error(skip: Skip, source: Shape, target: Shape, reason: str, hint: str) -> ShapeError:
    return ShapeError(f"skip `{skip.source}` {list(source)} -> `{skip.target}` {list(target)} "
                      f"({skip.merge}): {reason}", skip.loc, hint)


def _rank_hint(skip: Skip, source: Shape, target: Shape) -> str:
    """How to give two shapes one rank; for a broadcasting merge, the reshape with axes of size 1 that broadcasts."""
    if MERGES.get(skip.merge).broadcasts:  # torch would prepend axes: [C] against [C, H, W] lines C up with W
        (short, name), (long, _) = sorted([(source, skip.source), (target, skip.target)], key=lambda p: len(p[0]))
        ones = (1,) * (len(long) - len(short))
        for shape in ((*short, *ones), (*ones, *short)):  # [C] -> [C, 1, 1] (channels first), [D] -> [1, D]
            if broadcast_shape(shape, long) is not None:
                return (f"`{skip.merge}` broadcasts shapes of one rank: reshape `{name}` to {list(shape)} "
                        f"(`{{type: reshape, shape: {list(shape)}}}`) so its axes line up with {list(long)}")
    return "skip between nodes of the same layout (for example both [C, H, W]), or reshape one of them first"


def merge_axis(skip: Skip, source: Shape, target: Shape, axis_kind: str) -> int:
    """The sample axis (0 to rank - 1) that ``skip`` merges and projects on."""
    if len(source) != len(target):
        raise _error(skip, source, target, "the shapes have different ranks", _rank_hint(skip, source, target))
    rank = len(source)
    axis = skip.axis if skip.axis is not None else feature_axis(axis_kind, rank)
    if not -rank <= axis < rank:
        raise _error(skip, source, target, f"axis {axis} does not exist", f"a sample axis from 0 to {rank - 1}")
    return axis % rank


def plan(skip: Skip, merge: Merge, source: Shape, target: Shape, axis: int, axis_kind: str,
         proj_id: str) -> Projection | None:
    """The projection the policy puts on ``skip``, or None when the shapes already fit."""
    out = merge.source_shape(source, target, axis)
    if source == out:
        return None
    policy = skip.projection
    near = _near_broadcast(skip, merge, source, target)  # a broadcast meant, and sizes that differ elsewhere
    if policy == NONE:
        raise near or _error(skip, source, target, "the shapes differ and the projection policy is `none`",
                             f"set `projection: auto` on this skip (and drop --strict) to insert a learnable "
                             f"projection, or change `{skip.source}` or `{skip.target}` so their shapes agree"
                             + (" or broadcast (size 1 where they differ)" if merge.broadcasts else ""))
    try:
        mismatch = classify(skip, source, target, out, axis, axis_kind)
        chosen = [kind for _, kind in KINDS.items() if kind.applies(policy, mismatch)]
        if not chosen:
            raise _error(skip, source, target, f"the `{policy}` policy has no projection for "
                         f"{CHANGES[mismatch.change]}", _other_policies(mismatch))
        kind = chosen[0]
        try:
            args = kind.params(mismatch)
        except Unfit as unfit:
            raise _error(skip, source, target, unfit.reason, unfit.hint) from None
    except ShapeError as error:  # no projection fits: where a broadcast was meant, say how to make it broadcast
        raise near or error from None
    projection = Projection(proj_id, skip, kind.name, source, out, mismatch.factor, args=args)
    with torch.device("meta"):
        projection.params = sum(p.numel() for p in projection.build().parameters())
    return projection


def _near_broadcast(skip: Skip, merge: Merge, source: Shape, target: Shape) -> ShapeError | None:
    """The error for a broadcasting merge whose shapes broadcast on some axes (a [C, 1, 1] gate) and differ,
    with neither size 1, on others: the fix is to make those agree, not a projection; None for other mismatches."""
    if not merge.broadcasts or len(source) != len(target):
        return None
    blocking = blocking_axes(source, target)
    if not blocking or not any(s != t and 1 in (s, t) for s, t in zip(source, target)):
        return None
    sizes = ", ".join(f"axis {i}: {source[i]} vs {target[i]}" for i in blocking)
    return _error(skip, source, target, f"`{merge.name}` broadcasts a side of size 1, but the sizes differ "
                  f"where neither is 1 ({sizes})",
                  f"make `{skip.source}` match `{skip.target}` on {_axes(blocking)} (or give it size 1 there) "
                  f"so that it broadcasts; a projection would not broadcast but learn another tensor")


def _axes(axes: list[int]) -> str:
    return ("axis " if len(axes) == 1 else "axes ") + ", ".join(str(a) for a in axes)


def _other_policies(mismatch: Mismatch) -> str:
    fitting = [f"`{p}`" for p in policies() if any(kind.applies(p, mismatch) for _, kind in KINDS.items())]
    if not fitting:
        return "no projection kind handles this: make the shapes agree"
    return "use " + (f"{', '.join(fitting[:-1])} or {fitting[-1]}" if len(fitting) > 1 else fitting[0])


def classify(skip: Skip, source: Shape, target: Shape, out: Shape, axis: int, axis_kind: str) -> Mismatch:
    """How ``source`` differs from ``out``, the shape the merge needs; an error where no projection can fix it."""
    def fail(reason: str, hint: str) -> ShapeError:
        return _error(skip, source, target, reason, hint)

    rank = len(source)
    if axis == rank - 1 and (rank == 1 or axis_kind != "channels"):
        if source[:-1] != out[:-1]:
            raise fail("the leading axes (sequence length) differ, which no projection fixes",
                       "skip between nodes with the same sequence length")
        return Mismatch("features", source, out, axis)
    if axis != 0:
        raise fail(f"a projection works on the channels (axis 0) or the last axis, not on axis {axis}",
                   "skip between nodes whose other axes agree, or drop `axis:`")
    src_sp, dst_sp = list(source[1:]), list(out[1:])
    if src_sp == dst_sp:
        return Mismatch("channels", source, out, axis)
    if all(s >= d for s, d in zip(src_sp, dst_sp)):
        strides = tuple(math.ceil(s / d) for s, d in zip(src_sp, dst_sp))  # what a padded strided conv does
        if any(math.ceil(s / k) != d for s, d, k in zip(src_sp, dst_sp, strides)):
            raise fail(f"spatial sizes {src_sp} -> {dst_sp} are not related by an integer stride",
                       "change the strides, padding or pooling so that each size divides evenly")
        return Mismatch("down", source, out, axis, strides)
    if all(s <= d for s, d in zip(src_sp, dst_sp)):
        if any(d % s for s, d in zip(src_sp, dst_sp)):
            raise fail(f"spatial sizes {src_sp} -> {dst_sp} are not related by an integer factor",
                       "make the larger size a multiple of the smaller one")
        return Mismatch("up", source, out, axis, tuple(d // s for s, d in zip(src_sp, dst_sp)))
    raise fail(f"spatial sizes {src_sp} -> {dst_sp} grow on one axis and shrink on another",
               "skip between feature maps whose sizes change the same way on every axis")
