"""An example skiptrain plugin: importing this module registers two layer types.

skiptrain imports it through the ``skiptrain.layers`` entry point declared in this
package's pyproject.toml; a config then writes ``type: squeeze_excite`` like any
built-in type. Each class's docstring is its entry in ``skiptrain layers``.
"""
from __future__ import annotations

import torch
from torch import nn

from skiptrain.registry import register


# axis="channels": a skip into this layer that changes width is projected with a 1x1 conv.
# fresh_output stays False: the output is x * gate, and the gate's backward reads it.
@register("squeeze_excite", axis="channels")
class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: rescale each channel of ``[C, *spatial]`` by a gate learned from its mean."""

    # `in_channels` is inferred from the input shape (see skiptrain.registry.INFERRED), so a config
    # writes only `reduction`.
    def __init__(self, in_channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, in_channels // reduction)
        self.squeeze = nn.Linear(in_channels, hidden)
        self.excite = nn.Linear(hidden, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled))))
        return x * gate.view(*gate.shape, *([1] * (x.dim() - 2)))


@register("scaled_tanh")
class ScaledTanh(nn.Module):
    """``gain * tanh(x)``: a bounded activation; the shape is unchanged."""

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * torch.tanh(x)
