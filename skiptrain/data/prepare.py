"""Split, fit and measure data before batching: the validation carve, fitting images to
the model's input, and per-channel statistics for ``normalize: auto``."""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

from ..errors import DataError
from .batches import SPLIT, cpu_generator
from .options import DataOptions


def carve(num_samples: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(train, val)`` index tensors: ``round(fraction * n)`` samples go to val."""
    n_val = int(round(num_samples * fraction))
    if fraction > 0 and n_val >= num_samples:
        raise DataError(f"val_fraction {fraction} leaves no training samples out of {num_samples}", None,
                        "lower `val_fraction`")
    order = torch.randperm(num_samples, generator=cpu_generator(seed, SPLIT))
    return order[n_val:].sort().values, order[:n_val].sort().values


def take(split: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return split[0][index], split[1][index]


def fit_images(x: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Images ``[N, C, H, W]`` fitted to a ``[C', H', W']`` model input: grey <-> RGB and a
    bilinear resize, done once at load time. Other shapes pass through unchanged."""
    if x.dim() != 4 or len(input_shape) != 3:
        return x
    channels, height, width = input_shape
    if x.shape[1] != channels and {x.shape[1], channels} == {1, 3}:
        if channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = _in_dtype((x.float() * weights).sum(1, keepdim=True), x.dtype)
    if tuple(x.shape[2:]) != (height, width):
        chunks = [F.interpolate(part.float(), size=(height, width), mode="bilinear", antialias=True,
                                align_corners=False) for part in x.split(4096)]
        x = _in_dtype(torch.cat(chunks), x.dtype)
    return x


def _in_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint8:
        return x.round().clamp(0, 255).to(torch.uint8)
    return x.to(dtype)


def check_fits(name: str, sample_shape: tuple[int, ...], input_shape: tuple[int, ...], location) -> None:
    """Stored samples must reshape to the model's input (``[1, 40]`` -> ``[40]`` is fine)."""
    if math.prod(sample_shape) != math.prod(input_shape):
        raise DataError(f"`{name}` gives samples of shape {list(sample_shape)}, which do not fit the model's "
                        f"input {list(input_shape)}", location,
                        f"set `model.input: {list(sample_shape)}` (or a shape with as many values)")


def channel_stats(chunks: Iterable[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of batches ``[n, *sample]`` (channels: sample axis 0 when a
    sample has two or more axes, else one channel), accumulated in float64."""
    total = total_sq = None
    count = 0
    for chunk in chunks:
        chunk = chunk.to(torch.float64)
        if chunk.dim() >= 3:
            values = chunk.transpose(0, 1).reshape(chunk.shape[1], -1)
        else:
            values = chunk.reshape(1, -1)
        sums, squares = values.sum(1), values.square().sum(1)
        total = sums if total is None else total + sums
        total_sq = squares if total_sq is None else total_sq + squares
        count += values.shape[1]
    if not count:
        raise DataError("no training samples to compute normalisation statistics from", None)
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant channel: leave its scale
    return mean.tolist(), std.tolist()


def normalization(options: DataOptions, channels: int, chunks) -> tuple[list[float] | None, list[float] | None]:
    """The mean and std to apply: measured (auto), given, or none. ``chunks`` is a
    callable producing the training batches in input units, called only for auto."""
    if options.normalize == "none":
        return None, None
    if options.normalize == "auto":
        return channel_stats(chunks())
    return given(options, channels)


def given(options: DataOptions, channels: int) -> tuple[list[float], list[float]]:
    """A given mean and std, checked against the inputs' channels: one value for all, or one per channel.
    A named set (imagenet) belongs to its weights' input and is never averaged down to fit another."""
    stats = options.normalize
    if len(stats.mean) in (1, channels):
        return stats.mean, stats.std
    if stats.name is None:
        raise DataError(f"`normalize` gives {len(stats.mean)} values per statistic, but the inputs have "
                        f"{channels} channel(s)", options.where("normalize"),
                        f"give {channels} values (or one for all channels)")
    mean, std = sum(stats.mean) / len(stats.mean), sum(stats.std) / len(stats.std)
    raise DataError(f"`normalize: {stats.name}` is for {len(stats.mean)}-channel input, but the inputs have "
                    f"{channels} channel(s)", options.where("normalize"),
                    f"weights trained with these statistics take {len(stats.mean)} channels: keep `model.input: "
                    f"[{len(stats.mean)}, H, W]` (grey images are then repeated to RGB, as the weights expect); "
                    f"for a {channels}-channel model give its own statistics, e.g. `normalize: "
                    f"{{mean: {mean:.3f}, std: {std:.3f}}}` (the average of {stats.name}'s)")


def check_input(options: DataOptions, input_shape: tuple[int, ...], input_dtype: str = "float32") -> None:
    """``validate``'s check of a given mean and std against the model's input, before any data is read:
    an image input ``[C, H, W]`` has C channels (other shapes are known only from the data, at train)."""
    if input_dtype == "float32" and not isinstance(options.normalize, str) and len(input_shape) == 3:
        given(options, int(input_shape[0]))
    block = getattr(options, "block_size", None)  # text windows: the model's input is [block_size]
    if block is not None and list(input_shape) != [block]:
        raise DataError(f"`block_size` is {block}, but the model's input is {list(input_shape)}",
                        options.where("block_size"), f"set `model.input: [{block}]`, or remove `block_size` "
                                                     "(it follows the model's input)")
