"""The one rule that resolves a skip whose source and target shapes differ.

Given both shapes, the merge, the axis the target works on and the policy, decide
which learnable projection goes on the skip path (or that none is needed, or that
the mismatch is an error), in the manner of torchvision's ``downsample``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ShapeError
from .graph import Skip

Shape = tuple[int, ...]

KINDS = {
    "conv_bn": "1x1 conv + BN", "conv": "1x1 conv", "pad": "zero-pad (no params)",
    "pool_conv_bn": "avg-pool + 1x1 conv + BN", "upsample_conv_bn": "upsample + 1x1 conv + BN",
    "upsample_conv": "upsample + 1x1 conv", "linear": "linear",
}


@dataclass
class Projection:
    """A planned projection on a skip: what it is, its shapes and its size."""

    id: str  # module path, in the target's scope: `down2.bn2_proj`
    skip: Skip
    kind: str
    in_shape: Shape
    out_shape: Shape
    stride: tuple[int, ...] = ()  # spatial factor: down (conv/pool/subsample) or up (upsample)
    params: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        factor = max(self.stride, default=1)
        suffix = f", {'/' if 'upsample' not in self.kind else 'x'}{factor}" if factor > 1 else ""
        return KINDS[self.kind] + suffix


def feature_axis(axis_kind: str, rank: int) -> int:
    """The sample axis a skip into a layer of this kind merges on."""
    return 0 if axis_kind == "channels" and rank >= 2 else rank - 1


def merged_shape(skip: Skip, source: Shape, target: Shape, axis: int) -> Shape:
    if skip.merge != "concat":
        return target
    out = list(target)
    out[axis] += source[axis]
    return tuple(out)


def plan(skip: Skip, source: Shape, target: Shape, axis_kind: str, proj_id: str) -> Projection | None:
    """The projection the policy puts on ``skip``, or None when the shapes already fit."""
    def fail(reason: str, hint: str) -> ShapeError:
        return ShapeError(f"skip `{skip.source}` {list(source)} -> `{skip.target}` {list(target)} "
                          f"({skip.merge}): {reason}", skip.loc, hint)

    if len(source) != len(target):
        raise fail("the shapes have different ranks", "skip between nodes of the same layout "
                   "(for example both [C, H, W]), or reshape one of them first")
    rank = len(source)
    axis = skip.axis if skip.axis is not None else feature_axis(axis_kind, rank)
    if not -rank <= axis < rank:
        raise fail(f"axis {axis} does not exist", f"a sample axis from 0 to {rank - 1}")
    axis %= rank
    concat = skip.merge == "concat"
    if concat and all(s == t for i, (s, t) in enumerate(zip(source, target)) if i != axis):
        return None
    if not concat and source == target:
        return None
    policy = skip.projection
    fix_hint = (f"set `projection: auto` on this skip (and drop --strict) to insert a learnable projection, "
                f"or change `{skip.source}` or `{skip.target}` so their shapes agree")
    if policy == "none":
        raise fail("the shapes differ and the projection policy is `none`", fix_hint)
    out_channels = source[axis] if concat else target[axis]
    if axis == rank - 1 and (rank == 1 or axis_kind != "channels"):
        if source[:-1] != target[:-1]:
            raise fail("the leading axes (sequence length) differ, which no projection fixes",
                       "skip between nodes with the same sequence length")
        if policy == "pad":
            if source[-1] > target[-1]:
                raise fail("`pad` cannot shrink features", "use `projection: auto` (a linear layer)")
            return _sized(Projection(proj_id, skip, "pad", source, target, extra={"pad": target[-1] - source[-1], "dim": -1}))
        return _sized(Projection(proj_id, skip, "linear", source, target, extra={"out_features": target[-1]}))
    if axis != 0:
        raise fail(f"a projection works on the channels (axis 0) or the last axis, not on axis {axis}",
                   "skip between nodes whose other axes agree, or drop `axis:`")
    spatial_axes = [i for i in range(rank) if i != axis]
    if len(spatial_axes) > 3 and policy != "pad":
        raise fail(f"a projection on channels handles 1 to 3 spatial axes, not {len(spatial_axes)}",
                   "use `projection: pad`, or skip between nodes whose shapes agree")
    src_sp = [source[i] for i in spatial_axes]
    dst_sp = [target[i] for i in spatial_axes]
    out_shape = list(target)
    out_shape[axis] = out_channels
    out_shape = tuple(out_shape)
    if policy == "linear":
        raise fail("`linear` projects features, but this skip merges on channels",
                   "use `auto`, `conv`, `pad` or `pool_conv`")
    if src_sp == dst_sp:
        if policy == "pad":
            if source[axis] > target[axis]:
                raise fail("`pad` cannot reduce channels", "use `projection: auto` (1x1 conv + BN)")
            return _sized(Projection(proj_id, skip, "pad", source, out_shape, extra={"pad": target[axis] - source[axis], "dim": 1}))
        kind = "conv" if policy == "conv" else "conv_bn"
        return _sized(Projection(proj_id, skip, kind, source, out_shape, extra={"out_channels": out_channels}))
    if all(s >= d for s, d in zip(src_sp, dst_sp)):
        strides = tuple(math.ceil(s / d) for s, d in zip(src_sp, dst_sp))
        if any(math.ceil(s / k) != d for s, d, k in zip(src_sp, dst_sp, strides)):
            raise fail(f"spatial sizes {src_sp} -> {dst_sp} are not related by an integer stride",
                       "change the strides, padding or pooling so that each size divides evenly")
        if policy == "pad":
            if out_channels < source[axis]:
                raise fail("`pad` cannot reduce channels", "use `projection: auto` (strided 1x1 conv + BN)")
            return _sized(Projection(proj_id, skip, "pad", source, out_shape, strides,
                                     extra={"pad": out_channels - source[axis], "dim": 1}))
        kind = {"conv": "conv", "pool_conv": "pool_conv_bn"}.get(policy, "conv_bn")
        return _sized(Projection(proj_id, skip, kind, source, out_shape, strides, extra={"out_channels": out_channels}))
    if all(s <= d for s, d in zip(src_sp, dst_sp)):
        if any(d % s for s, d in zip(src_sp, dst_sp)):
            raise fail(f"spatial sizes {src_sp} -> {dst_sp} are not related by an integer factor",
                       "make the larger size a multiple of the smaller one")
        if policy == "pad":
            raise fail("`pad` cannot enlarge a feature map", "use `projection: auto` (upsample + 1x1 conv + BN)")
        factors = tuple(d // s for s, d in zip(src_sp, dst_sp))
        kind = "upsample_conv" if policy == "conv" else "upsample_conv_bn"
        return _sized(Projection(proj_id, skip, kind, source, out_shape, factors, extra={"out_channels": out_channels}))
    raise fail(f"spatial sizes {src_sp} -> {dst_sp} grow on one axis and shrink on another",
               "skip between feature maps whose sizes change the same way on every axis")


def _sized(projection: Projection) -> Projection:
    with torch.device("meta"):
        projection.params = sum(p.numel() for p in build(projection).parameters())
    return projection


def build(p: Projection) -> nn.Module:
    """The module for a planned projection (nn.Sequential, so its keys read `X_proj.0.weight`)."""
    channels_in = p.in_shape[0]
    spatial = len(p.in_shape) - 1
    if p.kind == "linear":
        return nn.Linear(p.in_shape[-1], p.extra["out_features"], bias=False)
    if p.kind == "pad":
        return ZeroPadShortcut(p.extra["pad"], p.stride, p.extra["dim"])
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial]
    norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial]
    out = p.extra["out_channels"]
    stride = p.stride or 1
    if p.kind in ("conv", "conv_bn"):
        parts = [conv(channels_in, out, 1, stride=stride, bias=p.kind == "conv")]
    elif p.kind == "pool_conv_bn":
        pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[spatial]
        parts = [pool(stride, stride, ceil_mode=True, count_include_pad=False), conv(channels_in, out, 1, bias=False)]
    else:  # upsample_conv(_bn)
        parts = [nn.Upsample(scale_factor=tuple(float(f) for f in stride), mode="nearest"),
                 conv(channels_in, out, 1, bias=p.kind == "upsample_conv")]
    if p.kind.endswith("_bn"):
        parts.append(norm(out))
    return nn.Sequential(*parts)


class ZeroPadShortcut(nn.Module):
    """ResNet option A: subsample by the stride, then append zero channels (or features)."""

    def __init__(self, pad: int, stride: tuple[int, ...] = (), dim: int = 1):
        super().__init__()
        self.pad, self.stride, self.dim = pad, tuple(stride), dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s > 1 for s in self.stride):
            x = x[(slice(None), slice(None), *(slice(None, None, s) for s in self.stride))]
        if self.pad == 0:
            return x
        zeros_shape = list(x.shape)
        zeros_shape[self.dim] = self.pad
        return torch.cat([x, x.new_zeros(zeros_shape)], dim=self.dim)
