"""A decoder's pieces: causal self-attention and learned positions that fit a shorter sequence.

``causal_self_attention`` is nanoGPT's ``CausalSelfAttention``: one fused ``c_attn`` linear gives
queries, keys and values, ``scaled_dot_product_attention(is_causal=True)`` attends (torch picks a
flash or memory-efficient kernel where one fits), and ``c_proj`` projects back. Its keys are
nanoGPT's (``<id>.c_attn.weight``, ``<id>.c_proj.weight``), so a nanoGPT state dict maps by renaming
``transformer.h.N.attn`` to the node's id.

``token_positions`` is nanoGPT's ``wpe``: a ``[num_positions, dim]`` table (``<id>.weight``) whose first
T rows are added to a ``[T, dim]`` sample, so a prompt shorter than the context works (slicing by the
input's length exports to ONNX with a dynamic sequence axis).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Shape, register


def _dropout(p: float, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"{name}: a dropout probability is at least 0 and below 1, not {p!r}")
    return float(p)


@register("causal_self_attention", axis="last", fresh_output=True)
class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention on a ``[T, dim]`` sample: position t attends to positions 0..t only.

    nanoGPT's ``CausalSelfAttention``: ``c_attn`` (dim -> 3 dim, queries, keys, values), torch's
    ``scaled_dot_product_attention`` with ``is_causal=True`` (flash and memory-efficient kernels where
    available), ``c_proj`` (dim -> dim). ``embed_dim`` is inferred; ``dropout`` drops attention weights
    in training, ``proj_dropout`` the output (nanoGPT's ``resid_dropout``); ``bias: false`` drops both
    linears' biases. Any T works, so generation can feed a prompt shorter than the context.
    """

    def __init__(self, embed_dim: int, num_heads: int = 1, dropout: float = 0.0, bias: bool = True,
                 proj_dropout: float = 0.0):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"causal_self_attention: `num_heads: {num_heads}` must be a positive integer")
        if embed_dim % num_heads:
            raise ValueError(f"causal_self_attention: {embed_dim} channels do not split into "
                             f"`num_heads: {num_heads}`")
        self.num_heads = num_heads
        self.dropout = _dropout(dropout, "causal_self_attention `dropout`")
        self.c_attn = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.c_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.resid_dropout = nn.Dropout(_dropout(proj_dropout, "causal_self_attention `proj_dropout`"))

    kv_cache = None  # while sampling: a generation.KVCache that keeps k and v between calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"causal_self_attention takes [seq, dim] samples, not {list(x.shape[1:])}")
        if self.kv_cache is not None:
            return self.kv_cache.attend(self, x)
        q, k, v = self.split_heads(x)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.merge_heads(y)

    # The two halves around the attention itself, so a key/value cache can keep k and v between calls.
    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[b, t, dim]`` -> queries, keys, values, each ``[b, heads, t, dim / heads]``."""
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        return tuple(z.view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2) for z in (q, k, v))

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """``[b, heads, t, dim / heads]`` -> ``[b, t, dim]`` through ``c_proj`` (and its dropout)."""
        b, heads, t, d = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, heads * d)))


@register("token_positions", axis="last", fresh_output=True)
class TokenPositions(nn.Module):
    """Add a learned position vector to each token of a ``[T, dim]`` sample: nanoGPT's ``wpe``.

    ``weight`` is ``[num_positions, dim]`` (default: the T of the input at validate, the context), and a
    sample of T' <= num_positions tokens gets its first T' rows, so a shorter prompt works. ``init``
    normal with ``std`` 0.02, as nanoGPT's and GPT-2's.
    """

    def __init__(self, input_shape: Shape, num_positions: int | None = None, std: float = 0.02):
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"token_positions takes [seq, dim] samples, not {list(input_shape)}")
        length, dim = input_shape
        size = length if num_positions is None else num_positions
        if isinstance(size, bool) or not isinstance(size, int) or size < length:
            raise ValueError(f"token_positions: `num_positions: {num_positions}` must be an integer of at least "
                             f"the {length} tokens of the input")
        if isinstance(std, bool) or not isinstance(std, (int, float)) or std <= 0:
            raise ValueError(f"token_positions: `std: {std}` must be a positive number")
        self.weight = nn.Parameter(torch.empty(size, dim))
        with torch.no_grad():
            self.weight.normal_(0.0, float(std))

    kv_cache = None  # while sampling: a generation.KVCache; new tokens take the positions after its length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"token_positions takes [seq, dim] samples, not {list(x.shape[1:])}")
        start = 0 if self.kv_cache is None else self.kv_cache.length
        if start + x.shape[1] > self.weight.shape[0]:
            raise ValueError(f"token_positions: a sequence of {start + x.shape[1]} tokens is longer than its "
                             f"{self.weight.shape[0]} positions (the context)")
        if start:
            return x + self.weight[start: start + x.shape[1]]
        return x + self.weight[: x.shape[1]]
