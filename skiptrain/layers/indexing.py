"""Indexing, slicing and splitting along a sample axis; rolling; Swin's window partition and reverse.

Axes count the dimensions of ONE sample, as in ``own.py``: ``dim: 0`` is the channels of an
image or the steps of a sequence. A split gives several pieces; each piece is its own node
reading the same input (``{id: left, type: chunk, chunks: 2, index: 0}`` and
``{id: right, type: chunk, chunks: 2, index: 1, input: ...}``), so every piece has an id that
later layers, merges and skips name (ShuffleNet's channel split, GLU-style gates).
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import register


def _axis(dim: int, x: torch.Tensor, name: str) -> int:
    """Sample axis ``dim`` as an axis of the batched ``x`` (the batch comes first), checked."""
    rank = x.dim() - 1
    if isinstance(dim, bool) or not isinstance(dim, int) or not -rank <= dim < rank:
        raise ValueError(f"{name}: `dim: {dim}` is not an axis of a sample of shape {list(x.shape[1:])} "
                         f"(0 to {rank - 1}, or negative from the end)")
    return dim % rank + 1


def _int(value, what: str, optional: bool = False):
    """``value`` if it is an integer (or null where ``optional``), else a ValueError naming ``what``."""
    if (value is None and optional) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{what} must be an integer{' or null' if optional else ''}, not {value!r}")


def _listed(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _pieces(name: str, pieces: tuple[torch.Tensor, ...], index: int) -> torch.Tensor:
    if isinstance(index, bool) or not isinstance(index, int) or not -len(pieces) <= index < len(pieces):
        raise ValueError(f"{name}: `index: {index}` is not one of the {len(pieces)} pieces "
                         f"(0 to {len(pieces) - 1})")
    return pieces[index]


@register("select")
class Select(nn.Module):
    """One entry along sample axis ``dim``, which disappears: ``{dim: 0, index: 0}`` is ViT's class token
    read-out ``x[:, 0]`` (``[seq, dim]`` -> ``[dim]``); ``index: -1`` is the last."""

    def __init__(self, index: int, dim: int = 0):
        super().__init__()
        self.index, self.dim = _int(index, "select: `index`"), dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = _axis(self.dim, x, "select")
        if x.dim() == 2:
            raise ValueError(f"select on a sample of shape {list(x.shape[1:])} would leave no sample axis; "
                             "use `slice` with `end: start + 1` to keep one entry")
        if not -x.shape[axis] <= self.index < x.shape[axis]:
            raise ValueError(f"select: `index: {self.index}` is outside axis {self.dim} of size {x.shape[axis]}")
        return x.select(axis, self.index)


@register("slice")
class Slice(nn.Module):
    """Entries ``start`` to ``end`` (exclusive, default the end) by ``step`` along sample axis ``dim``:
    ``x[:, start:end:step]`` for ``dim: 0``. Negative ``start``/``end`` count from the end."""

    def __init__(self, start: int = 0, end: int | None = None, step: int = 1, dim: int = 0):
        super().__init__()
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"slice: `step: {step}` must be a positive integer")
        self.window = slice(_int(start, "slice: `start`"), _int(end, "slice: `end`", optional=True), step)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = [slice(None)] * x.dim()
        index[_axis(self.dim, x, "slice")] = self.window
        return x[tuple(index)]


@register("chunk")
class Chunk(nn.Module):
    """Piece ``index`` of ``chunks`` equal pieces along sample axis ``dim`` (torch.chunk): ShuffleNet's
    ``x1, x2 = x.chunk(2, dim=1)`` is two nodes, ``index: 0`` and ``index: 1``."""

    def __init__(self, chunks: int, index: int, dim: int = 0):
        super().__init__()
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"chunk: `chunks: {chunks}` must be a positive integer")
        self.chunks, self.index, self.dim = chunks, index, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pieces("chunk", x.chunk(self.chunks, _axis(self.dim, x, "chunk")), self.index)


@register("split")
class Split(nn.Module):
    """Piece ``index`` of torch.split along sample axis ``dim``: ``sizes: 16`` cuts pieces of 16 entries,
    ``sizes: [16, 48]`` pieces of those sizes (they must add up to the axis)."""

    def __init__(self, sizes: int | list[int], index: int, dim: int = 0):
        super().__init__()
        self.sizes = [_int(n, "split: each of `sizes`") for n in sizes] if isinstance(sizes, (list, tuple)) else \
            _int(sizes, "split: `sizes`")
        if any(n < 1 for n in (self.sizes if isinstance(self.sizes, list) else [self.sizes])):
            raise ValueError(f"split: `sizes: {sizes}` must be positive")
        self.index, self.dim = index, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = _axis(self.dim, x, "split")
        if isinstance(self.sizes, list) and sum(self.sizes) != x.shape[axis]:
            raise ValueError(f"split: `sizes: {self.sizes}` add up to {sum(self.sizes)}, but axis {self.dim} "
                             f"has {x.shape[axis]} entries")
        return _pieces("split", x.split(self.sizes, axis), self.index)


@register("roll")
class Roll(nn.Module):
    """Shift entries cyclically along sample axes (torch.roll): ``{shifts: [-3, -3], dims: [0, 1]}`` is
    Swin's shifted window on a ``[H, W, C]`` sample."""

    def __init__(self, shifts: int | list[int], dims: int | list[int]):
        super().__init__()
        self.shifts = tuple(_int(n, "roll: `shifts`") for n in _listed(shifts))
        self.dims = tuple(_int(d, "roll: `dims`") for d in _listed(dims))
        if len(self.shifts) != len(self.dims):
            raise ValueError(f"roll: {len(self.shifts)} shifts for {len(self.dims)} dims; give one shift per axis")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, self.shifts, tuple(_axis(d, x, "roll") for d in self.dims))


def _window(window_size: int | list[int], name: str) -> tuple[int, int]:
    size = tuple(window_size) if isinstance(window_size, (list, tuple)) else (window_size, window_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"{name}: `window_size: {window_size}` must be a positive integer or two of them")
    return size


@register("window_partition")
class WindowPartition(nn.Module):
    """Cut an ``[H, W, C]`` sample into windows: ``[H/wh * W/ww, wh * ww, C]``, windows and their tokens in
    row-major order as torchvision's Swin; attention then runs within each window."""

    def __init__(self, window_size: int | list[int]):
        super().__init__()
        self.window_size = _window(window_size, "window_partition")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (wh, ww), shape = self.window_size, list(x.shape[1:])
        if x.dim() != 4 or x.shape[1] % wh or x.shape[2] % ww:
            raise ValueError(f"window_partition takes [H, W, C] samples whose H and W are multiples of the window "
                             f"{[wh, ww]}, not {shape}; pad or permute first")
        b, h, w, c = x.shape
        x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


@register("window_reverse")
class WindowReverse(nn.Module):
    """Put ``window_partition``'s windows back together: ``[windows, wh * ww, C]`` -> ``[H, W, C]``
    for ``size: [H, W]``."""

    def __init__(self, window_size: int | list[int], size: list[int]):
        super().__init__()
        self.window_size = _window(window_size, "window_reverse")
        self.size = _window(size, "window_reverse (size)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (wh, ww), (h, w) = self.window_size, self.size
        if h % wh or w % ww:
            raise ValueError(f"window_reverse: `size: {[h, w]}` is not a multiple of the window {[wh, ww]}")
        if x.dim() != 4 or x.shape[1] != (h // wh) * (w // ww) or x.shape[2] != wh * ww:
            raise ValueError(f"window_reverse of {[wh, ww]} windows into {[h, w]} takes [{(h // wh) * (w // ww)}, "
                             f"{wh * ww}, C] samples, not {list(x.shape[1:])}")
        b, c = x.shape[0], x.shape[-1]
        x = x.view(b, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h, w, c)
