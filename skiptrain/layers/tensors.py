"""Learnable tensors: a class token, a position embedding, a layer scale.

Each is ONE learnable tensor with torchvision's shape, and it lives at the node's id
itself, as a ``torch.fx`` ``get_attr`` node's target does: a node ``encoder.pos_embedding``
is the state-dict key ``encoder.pos_embedding`` (torchvision's ViT), ``features.1.0.layer_scale``
is ConvNeXt's, ``class_token`` ViT's, not ``<id>.weight``. The module below still holds the
tensor as ``weight`` (shape inference runs it, and it initializes the tensor); the generated
forward applies ``expression`` to the tensor registered on the node's scope.

``init:`` is ``zeros``, ``ones``, a number (a constant such as ``1.0e-6``), ``normal`` or
``trunc_normal`` (with ``std:``; truncated to [-2, 2], torch's ``trunc_normal_`` as timm and torchvision
call it).
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import Shape, register

INITS = ("zeros", "ones", "normal", "trunc_normal")


def _axis(dim: int, rank: int, name: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or not -rank <= dim < rank:
        raise ValueError(f"{name}: `dim: {dim}` is not an axis of a sample with {rank} axes "
                         f"(0 to {rank - 1}, or -1 for the last)")
    return dim % rank


def _init(tensor: nn.Parameter, init: str | float | int, std: float, name: str) -> nn.Parameter:
    """Fill ``tensor`` as ``init:`` says, drawing from torch's generator (seeded by the run)."""
    value = init
    if isinstance(init, str) and init not in INITS:
        try:
            value = float(init)  # `init: 1e-6` is a string to YAML 1.1
        except ValueError:
            raise ValueError(f"{name}: unknown `init: {init}`; use one of {', '.join(INITS)} or a number "
                             "such as 1.0e-6") from None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{name}: `init` takes one of {', '.join(INITS)} or a number, not {init!r}")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or std <= 0:
        raise ValueError(f"{name}: `std: {std}` must be a positive number")
    with torch.no_grad():
        if value == "zeros":
            tensor.zero_()
        elif value == "ones":
            tensor.fill_(1.0)
        elif value == "normal":
            tensor.normal_(0.0, std)
        elif value == "trunc_normal":
            nn.init.trunc_normal_(tensor, std=std)  # torch's bounds -2, 2: torchvision's Swin, timm's ViT
        else:
            tensor.fill_(float(value))
    return tensor


class LearnableTensor(nn.Module):
    """One learnable tensor ``weight`` and what the node does with it (``expression``, ``forward``)."""

    def __init__(self, shape: Shape, init: str | float, std: float) -> None:
        super().__init__()
        name = type(self).__name__
        self.weight = _init(nn.Parameter(torch.empty(shape)), init, std, name)

    @staticmethod
    def expression(value: str, tensor: str) -> str:
        """The generated forward's code for this node, on the tensor at the node's id; ``forward`` is the same."""
        raise NotImplementedError


@register("class_token", axis="last", fresh_output=True, tensor=True)
class ClassToken(LearnableTensor):
    """Prepend a learnable token to a ``[seq, dim]`` sample: ``[seq + 1, dim]`` (ViT's ``class_token``,
    shape ``[1, 1, dim]``; ``init`` zeros as torchvision's)."""

    def __init__(self, embed_dim: int, init: str | float = "zeros", std: float = 0.02):
        super().__init__((1, 1, embed_dim), init, std)

    @staticmethod
    def expression(value: str, tensor: str) -> str:  # torchvision's `class_token.expand(n, -1, -1)`, then cat
        return f"torch.cat([{tensor}.expand({value}.shape[0], -1, -1), {value}], dim=1)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"class_token takes [seq, dim] samples, not {list(x.shape[1:])}; "
                             "flatten and transpose a feature map into tokens first")
        return torch.cat([self.weight.expand(x.shape[0], -1, -1), x], dim=1)


@register("position_embedding", aliases=("pos_embedding",), fresh_output=True, tensor=True)
class PositionEmbedding(LearnableTensor):
    """Add a learnable tensor of the sample's shape: ViT's ``pos_embedding`` (``[1, seq, dim]``; ``init``
    normal with std 0.02 as torchvision's)."""

    def __init__(self, input_shape: Shape, init: str | float = "normal", std: float = 0.02):
        super().__init__((1, *input_shape), init, std)

    @staticmethod
    def expression(value: str, tensor: str) -> str:  # torchvision's `input + self.pos_embedding`
        return f"{value} + {tensor}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


@register("layer_scale", fresh_output=True, tensor=True)
class LayerScale(LearnableTensor):
    """Scale each channel (axis ``dim`` of the sample) by a learnable factor: ConvNeXt's ``layer_scale``
    (``[C, 1, 1]`` on ``[C, H, W]``), CaiT's ``gamma`` (``[dim]`` with ``dim: -1`` on ``[seq, dim]``);
    ``init`` 1.0e-6 as torchvision's ConvNeXt."""

    def __init__(self, input_shape: Shape, dim: int = 0, init: str | float = 1e-6, std: float = 0.02):
        axis = _axis(dim, len(input_shape), "layer_scale")
        super().__init__((input_shape[axis], *(1,) * (len(input_shape) - axis - 1)), init, std)

    @staticmethod
    def expression(value: str, tensor: str) -> str:  # torchvision's `self.layer_scale * self.block(input)`
        return f"{tensor} * {value}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x
