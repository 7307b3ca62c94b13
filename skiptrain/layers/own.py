"""skiptrain's own layer types. Their axes count the dimensions of ONE sample.

``dim: 0`` is the first sample axis (the channels of an image, the steps of a
sequence); the batch axis is never named in a config.
"""
from __future__ import annotations

import torch
from torch import nn

from ..merges import MERGES
from ..registry import LayerType, add, register


def _batch_axis(dim: int) -> int:
    """A sample axis as a tensor axis: non-negative ones shift past the batch."""
    return dim + 1 if dim >= 0 else dim


@register("self_attention", axis="last", fresh_output=True)
class SelfAttention(nn.MultiheadAttention):
    """Multi-head self-attention on a ``[seq, dim]`` sample, or on each of ``[windows, seq, dim]``.

    ``embed_dim`` is inferred. Leading sample axes (windows, heads of a grid) are independent
    sequences: attention runs within each, as Swin's attention over a batch of windows does.
    It IS torch's ``MultiheadAttention`` (batch first), so its keys are torch's and torchvision's
    ViT's (``self_attention.in_proj_weight``); a state dict of the older wrapper
    (``<id>.attention.in_proj_weight``) still loads.
    """

    def __init__(self, embed_dim: int, num_heads: int = 1, dropout: float = 0.0, bias: bool = True):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, batch_first=True)
        self.register_load_state_dict_pre_hook(_unwrap_attention_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.dim() < 3:
            raise ValueError(f"self_attention takes [seq, dim] or [..., seq, dim] samples; a sample of shape "
                             f"{list(x.shape[1:])} has no sequence axis")
        if x.dim() == 3:
            return super().forward(x, x, x, need_weights=False)[0]
        flat = x.reshape(-1, *x.shape[-2:])  # [batch * windows, seq, dim]
        return super().forward(flat, flat, flat, need_weights=False)[0].reshape(x.shape)


def _unwrap_attention_keys(module, state_dict, prefix, *args) -> None:
    """``<id>.attention.in_proj_weight`` (skiptrain before issue 14) -> ``<id>.in_proj_weight``."""
    old = prefix + "attention."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + key[len(old):]] = state_dict.pop(key)


@register("global_avgpool", axis="channels", fresh_output=True)
class GlobalAvgPool(nn.Module):
    """Average over every spatial axis: ``[C, *spatial]`` -> ``[C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"global_avgpool averages spatial axes; a sample of shape {list(x.shape[1:])} has none")
        return x.mean(dim=tuple(range(2, x.dim())))


@register("mean", fresh_output=True)
class Mean(nn.Module):
    """Mean over sample axis ``dim`` (an int or a list), e.g. over the steps of a sequence."""

    def __init__(self, dim: int | list[int], keepdim: bool = False):
        super().__init__()
        dims = dim if isinstance(dim, (list, tuple)) else [dim]
        self.dims = tuple(_batch_axis(int(d)) for d in dims)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.dims, keepdim=self.keepdim)


@register("permute")
class Permute(nn.Module):
    """Reorder the sample axes: ``dims: [1, 2, 0]`` turns ``[C, H, W]`` into ``[H, W, C]``."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.dims = (0, *(_batch_axis(int(d)) for d in dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)


@register("transpose")
class Transpose(nn.Module):
    """Swap two sample axes: ``dims: [0, 1]`` turns ``[1, 40]`` into ``[40, 1]``."""

    def __init__(self, dims: list[int]):
        super().__init__()
        if len(dims) != 2:
            raise ValueError(f"transpose swaps exactly two axes, got dims={list(dims)}")
        self.dim0, self.dim1 = (_batch_axis(int(d)) for d in dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)


@register("scale")
class Scale(nn.Module):
    """Multiply by a constant ``factor``, not learned: ``x * 0.5``, a residual branch's fixed scaling."""

    def __init__(self, factor: float):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise ValueError(f"scale: `factor: {factor!r}` must be a number")
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@register("reshape")
class Reshape(nn.Module):
    """Give each sample a new shape (one entry may be -1): ``shape: [16, 8, 8]``."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


for _merge in MERGES:  # `type: add` with `input: [a, b]`: each merge is also a layer type
    add(LayerType(_merge, nn.Identity, passthrough=True,
                  doc=f"Merge the nodes in `input: [a, b, ...]` with {_merge}: {MERGES[_merge].doc}. A mismatch "
                      f"{'that does not broadcast ' if MERGES[_merge].broadcasts else ''}is projected."))
