"""Projection kinds as a registry: the modules a mismatched skip can get.

Each kind owns when it applies (the policies that pick it for each kind of mismatch), its
typed parameters, its module and the description ``skiptrain validate`` shows. The rule in
``projection.py`` classifies the mismatch and asks the kinds; it never names one. Modules
are ``nn.Sequential`` (keys ``down2.bn2_proj.0.weight``), a bare ``nn.Linear`` or the
parameter-free ``ZeroPadShortcut``: state-dict keys are API, keep them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .registries import Registry

Shape = tuple[int, ...]

# What can differ between a skip's source and the shape its merge needs, in words for errors.
CHANGES = {"features": "features on the last axis", "channels": "channels of the same spatial size",
           "down": "a smaller feature map", "up": "a larger feature map"}
AUTO, NONE = "auto", "none"  # the default policy, and the one that refuses every mismatch


@dataclass(frozen=True)
class Mismatch:
    """A skip's source shape, the shape its merge needs (``out``), and how they differ."""

    change: str  # a key of CHANGES
    source: Shape
    out: Shape
    axis: int  # the sample axis projected on: 0 (channels) or the last
    factor: tuple[int, ...] = ()  # per spatial axis: the stride (down) or the scale (up)


class Unfit(Exception):
    """A kind picked by the policy cannot do this mismatch (`pad` cannot shrink)."""

    def __init__(self, reason: str, hint: str):
        super().__init__(reason)
        self.reason, self.hint = reason, hint


class ProjectionKind:
    """One kind of projection module; subclasses set the class attributes."""

    name: str
    title: str  # what `validate` shows: "1x1 conv + BN"
    picks: dict[str, tuple[str, ...]]  # a change -> the policies that choose this kind there

    def applies(self, policy: str, mismatch: Mismatch) -> bool:
        return policy in self.picks.get(mismatch.change, ())

    def params(self, mismatch: Mismatch) -> Any:
        """The kind's typed parameters for this mismatch; ``Unfit`` where it cannot do it."""
        raise NotImplementedError

    def build(self, params: Any, in_shape: Shape) -> nn.Module:
        raise NotImplementedError

    def describe(self, params: Any) -> str:
        return self.title


def _factor(values: tuple[int, ...], sign: str) -> str:
    factor = max(values, default=1)
    return f", {sign}{factor}" if factor > 1 else ""


# -- 1x1 convs on the channels -------------------------------------------------------------------
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


@dataclass(frozen=True)
class ConvParams:
    out_channels: int
    stride: tuple[int, ...] = ()  # per spatial axis; () for 1


@dataclass(frozen=True)
class UpsampleParams:
    out_channels: int
    scale: tuple[int, ...]  # per spatial axis


class ConvBN(ProjectionKind):
    """A 1x1 conv (strided where the map shrinks), then BatchNorm: torchvision's `downsample`."""

    name, title, norm = "conv_bn", "1x1 conv + BN", True
    picks = {"channels": (AUTO, "pool_conv"), "down": (AUTO,)}

    def params(self, mismatch: Mismatch) -> ConvParams:
        spatial = len(mismatch.source) - 1
        if spatial > 3:  # there is no Conv4d
            raise Unfit(f"a projection on channels handles 1 to 3 spatial axes, not {spatial}",
                        "use `projection: pad`, or skip between nodes whose shapes agree")
        return ConvParams(mismatch.out[0], mismatch.factor)

    def layers(self, p: ConvParams, in_shape: Shape) -> list[nn.Module]:
        return [_CONV[len(in_shape) - 1](in_shape[0], p.out_channels, 1, stride=p.stride or 1, bias=not self.norm)]

    def build(self, params: ConvParams, in_shape: Shape) -> nn.Module:
        norm = [_NORM[len(in_shape) - 1](params.out_channels)] if self.norm else []
        return nn.Sequential(*self.layers(params, in_shape), *norm)

    def describe(self, params: ConvParams) -> str:
        return self.title + _factor(params.stride, "/")


class Conv(ConvBN):
    """A 1x1 conv with a bias and no BatchNorm."""

    name, title, norm = "conv", "1x1 conv", False
    picks = {"channels": ("conv",), "down": ("conv",)}


class PoolConvBN(ConvBN):
    """Average-pool by the stride, then 1x1 conv and BatchNorm ("ResNet-D")."""

    name, title = "pool_conv_bn", "avg-pool + 1x1 conv + BN"
    picks = {"down": ("pool_conv",)}

    def layers(self, p: ConvParams, in_shape: Shape) -> list[nn.Module]:
        spatial = len(in_shape) - 1
        return [_POOL[spatial](p.stride, p.stride, ceil_mode=True, count_include_pad=False),
                _CONV[spatial](in_shape[0], p.out_channels, 1, bias=False)]


class UpsampleConvBN(ConvBN):
    """Nearest upsampling by the integer factor, then 1x1 conv and BatchNorm (a decoder's skip)."""

    name, title = "upsample_conv_bn", "upsample + 1x1 conv + BN"
    picks = {"up": (AUTO, "pool_conv")}

    def params(self, mismatch: Mismatch) -> UpsampleParams:  # type: ignore[override]
        return UpsampleParams(super().params(mismatch).out_channels, mismatch.factor)

    def layers(self, p: UpsampleParams, in_shape: Shape) -> list[nn.Module]:  # type: ignore[override]
        return [nn.Upsample(scale_factor=tuple(float(f) for f in p.scale), mode="nearest"),
                _CONV[len(in_shape) - 1](in_shape[0], p.out_channels, 1, bias=not self.norm)]

    def describe(self, params: UpsampleParams) -> str:  # type: ignore[override]
        return self.title + _factor(params.scale, "x")


class UpsampleConv(UpsampleConvBN):
    name, title, norm = "upsample_conv", "upsample + 1x1 conv", False
    picks = {"up": ("conv",)}


# -- zero padding and linear -----------------------------------------------------------------------
@dataclass(frozen=True)
class PadParams:
    pad: int  # zero channels (or features) appended
    dim: int  # the batched axis they are appended on
    stride: tuple[int, ...] = ()  # subsampling per spatial axis first


class ZeroPad(ProjectionKind):
    """ResNet option A: subsample, then append zeros; no parameters, any rank, never shrinks."""

    name, title = "pad", "zero-pad (no params)"
    picks = {"features": ("pad",), "channels": ("pad",), "down": ("pad",)}
    _SHRINK = {"features": ("`pad` cannot shrink features", "use `projection: auto` (a linear layer)"),
               "channels": ("`pad` cannot reduce channels", "use `projection: auto` (1x1 conv + BN)"),
               "down": ("`pad` cannot reduce channels", "use `projection: auto` (strided 1x1 conv + BN)")}

    def params(self, mismatch: Mismatch) -> PadParams:
        pad = mismatch.out[mismatch.axis] - mismatch.source[mismatch.axis]
        if pad < 0:
            raise Unfit(*self._SHRINK[mismatch.change])
        return PadParams(pad, -1 if mismatch.change == "features" else 1, mismatch.factor)

    def build(self, params: PadParams, in_shape: Shape) -> nn.Module:
        return ZeroPadShortcut(params.pad, params.stride, params.dim)

    def describe(self, params: PadParams) -> str:
        return self.title + _factor(params.stride, "/")


@dataclass(frozen=True)
class LinearParams:
    out_features: int


class Linear(ProjectionKind):
    """A bias-free linear layer on the last axis (keys `fc_proj.weight`)."""

    name, title = "linear", "linear"
    picks = {"features": (AUTO, "conv", "pool_conv", "linear")}

    def params(self, mismatch: Mismatch) -> LinearParams:
        return LinearParams(mismatch.out[-1])

    def build(self, params: LinearParams, in_shape: Shape) -> nn.Module:
        return nn.Linear(in_shape[-1], params.out_features, bias=False)


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


KINDS: Registry[ProjectionKind] = Registry("projection kind")
for _kind in (ConvBN(), Conv(), ZeroPad(), PoolConvBN(), UpsampleConvBN(), UpsampleConv(), Linear()):
    KINDS.add(_kind.name, _kind)


def policies() -> tuple[str, ...]:
    """The policies users write: `auto`, each one a kind answers to, and `none`."""
    named = {policy for _, kind in KINDS.items() for chosen in kind.picks.values() for policy in chosen}
    return (AUTO, *sorted(named - {AUTO, NONE}), NONE)
