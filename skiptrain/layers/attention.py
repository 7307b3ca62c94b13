"""Attention within windows, written in the graph: Swin's block as roll -> window_partition ->
window_attention -> window_reverse -> roll.

``window_attention`` is torchvision's ``ShiftedWindowAttention`` (its ``qkv``, ``proj``,
``relative_position_bias_table`` and ``relative_position_index``, so the keys are torchvision's)
with the roll, the partition and the reverse taken out into their own nodes: it takes the
``[windows, tokens, dim]`` samples that ``window_partition`` gives, adds the relative position
bias and, for shifted windows, the mask that keeps tokens from attending across the seams of
the roll — computed as torchvision computes them, so the numbers are its numbers.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torchvision.models.swin_transformer import ShiftedWindowAttention

from ..registry import LAYERS, LayerType, add
from .indexing import _window


def shifted_window_mask(size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int],
                        like: torch.Tensor) -> torch.Tensor:
    """torchvision's attention mask for shifted windows: ``[windows, tokens, tokens]``, 0 or -100."""
    (h, w), (wh, ww), (sh, sw) = size, window, shift
    mask = like.new_zeros((h, w))
    count = 0
    for top, bottom in ((0, -wh), (-wh, -sh), (-sh, None)):
        for left, right in ((0, -ww), (-ww, -sw), (-sw, None)):
            mask[top:bottom, left:right] = count
            count += 1
    mask = mask.view(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).reshape((h // wh) * (w // ww), wh * ww)
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, float(-100.0)).masked_fill(mask == 0, float(0.0))


class WindowAttention(ShiftedWindowAttention):
    """Multi-head attention within each window of ``[windows, wh * ww, dim]`` (``window_partition``'s
    output), with Swin's relative position bias; ``shift_size`` > 0 with ``size: [H, W]`` (the map that
    was rolled and partitioned) adds torchvision's shifted-window mask. Keys are torchvision's ``attn``."""

    def __init__(self, embed_dim: int, window_size: int | list[int], num_heads: int, shift_size: int | list[int] = 0,
                 size: list[int] | None = None, qkv_bias: bool = True, proj_bias: bool = True,
                 attention_dropout: float = 0.0, dropout: float = 0.0):
        window = _window(window_size, "window_attention")
        shift = tuple(shift_size) if isinstance(shift_size, (list, tuple)) else (shift_size, shift_size)
        if len(shift) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shift):
            raise ValueError(f"window_attention: `shift_size: {shift_size}` must be 0 or more, one or two of them")
        if embed_dim % num_heads:
            raise ValueError(f"window_attention: {embed_dim} channels do not split into `num_heads: {num_heads}`")
        grid = None
        if size is not None:
            grid = _window(size, "window_attention (size)")
            if grid[0] % window[0] or grid[1] % window[1]:
                raise ValueError(f"window_attention: `size: {list(grid)}` is not a multiple of the window "
                                 f"{list(window)}")
            if any(shift[i] and window[i] >= grid[i] for i in range(2)):  # torchvision skips the shift there
                raise ValueError(f"window_attention: a {list(window)} window covers the {list(grid)} map, which "
                                 "torchvision does not shift; write `shift_size: 0` here, and roll by 0 around it")
        elif any(shift):
            raise ValueError("window_attention: shifted windows need `size: [H, W]`, the map that was rolled "
                             "and partitioned, to mask the seams")
        super().__init__(embed_dim, list(window), list(shift), num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias,
                         attention_dropout=attention_dropout, dropout=dropout)
        self.size = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (wh, ww), heads = self.window_size, self.num_heads
        if x.dim() != 4 or x.shape[2] != wh * ww:
            raise ValueError(f"window_attention of {[wh, ww]} windows takes [windows, {wh * ww}, dim] samples "
                             f"(window_partition's output), not {list(x.shape[1:])}")
        b, windows, tokens, c = x.shape
        if self.size is not None and windows != (self.size[0] // wh) * (self.size[1] // ww):
            count = (self.size[0] // wh) * (self.size[1] // ww)
            raise ValueError(f"window_attention: a {list(self.size)} map has {count} windows of {[wh, ww]}, "
                             f"the sample has {windows}")
        x = x.reshape(b * windows, tokens, c)
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)
        qkv = qkv.reshape(x.size(0), tokens, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * (c // heads) ** -0.5
        attn = q.matmul(k.transpose(-2, -1))
        attn = attn + self.get_relative_position_bias()
        if sum(self.shift_size) > 0:
            mask = shifted_window_mask(self.size, (wh, ww), tuple(self.shift_size), x)
            attn = attn.view(b, windows, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, tokens, tokens)
        attn = F.softmax(attn, dim=-1)
        attn = F.dropout(attn, p=self.attention_dropout, training=self.training)
        x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), tokens, c)
        x = F.linear(x, self.proj.weight, self.proj.bias)
        x = F.dropout(x, p=self.dropout, training=self.training)
        return x.reshape(b, windows, tokens, c)


def register_all() -> None:
    """``window_attention`` (on demand, as torchvision's other blocks: see ``layers.on_demand``)."""
    if "window_attention" not in LAYERS:
        add(LayerType("window_attention", WindowAttention, axis="last", fresh_output=True,
                      doc=inspect.getdoc(WindowAttention) or ""))
