"""Augmentations: batch functions on the device, registered by name.

An augmentation is ``fn(x, mask, draw, **args) -> (x, mask)``: ``x`` is a float batch
``[B, *sample]`` in the dataset's native shape (channels first), ``mask`` the
segmentation masks ``[B, *spatial]`` (None for other tasks) which receive the same
geometric change, and ``draw`` gives the per-sample random numbers. No Python loop runs
over samples.

``draw`` draws for the whole global batch from a generator seeded by (seed, epoch,
batch index) and hands back this rank's slice, so the numbers are independent of global
RNG state, of resuming, and of how the batch is split across ranks.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import DataError, Location, choices_hint
from ..registries import Registry

AugmentFn = Callable[..., tuple[torch.Tensor, "torch.Tensor | None"]]


class Draw:
    """Per-sample random numbers for one or more global batches, each sliced to this rank's part.

    ``parts`` holds ``(seed, total, lo, hi)`` per batch: every batch draws from its own
    generator, so the numbers depend neither on how many batches are augmented at once nor on
    the device. Integers and uniforms come from CPU generators and reach the device in one
    copy per call (no GPU kernel per batch); large normal draws are made on the device.
    """

    def __init__(self, parts: list[tuple[int, int, int, int]], device: torch.device):
        self.parts, self.device = parts, torch.device(device)
        self._cpu: list[torch.Generator] | None = None
        self._on_device: list[torch.Generator] | None = None

    @staticmethod
    def _seeded(seeds, device: torch.device) -> list[torch.Generator]:
        gens = []
        for seed in seeds:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
            gens.append(gen)
        return gens

    def _draw(self, make: Callable[[torch.Generator, int], torch.Tensor], on_device: bool = False) -> torch.Tensor:
        if on_device and self.device.type != "cpu":
            if self._on_device is None:
                self._on_device = self._seeded((p[0] for p in self.parts), self.device)
            gens = self._on_device
        else:
            if self._cpu is None:  # made on first use: most batches of most runs draw nothing
                self._cpu = self._seeded((p[0] for p in self.parts), torch.device("cpu"))
            gens = self._cpu
        pieces = [make(gen, total)[lo:hi] for gen, (_, total, lo, hi) in zip(gens, self.parts)]
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return out.to(self.device, non_blocking=True)

    def integers(self, high: int) -> torch.Tensor:
        """int64 ``[n]`` uniform in ``[0, high)``."""
        return self._draw(lambda gen, n: torch.randint(high, (n,), generator=gen))

    def uniform(self) -> torch.Tensor:
        """float ``[n]`` uniform in ``[0, 1)``."""
        return self._draw(lambda gen, n: torch.rand(n, generator=gen))

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """float ``[n, *shape]`` standard normal."""
        return self._draw(lambda gen, n: torch.randn((n, *shape), generator=gen, device=gen.device), on_device=True)


@dataclass
class Augmentation:
    name: str
    fn: AugmentFn
    spatial: int  # sample axes after the channel axis that it needs (2: [C, H, W])
    ranges: dict[str, tuple[float, float]]

    @property
    def defaults(self) -> dict[str, Any]:
        params = inspect.signature(self.fn).parameters
        return {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}


@dataclass
class Step:
    """One configured augmentation: the registered entry, its arguments, where it was written."""

    aug: Augmentation
    args: dict[str, Any]
    location: Location | None = None

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None, draw: Draw):
        return self.aug.fn(x, mask, draw, **self.args)


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation", DataError)


def augmentation(name: str, *, spatial: int = 0, ranges: dict[str, tuple[float, float]] | None = None):
    """Register a batch augmentation under ``name``."""
    def register(fn: AugmentFn) -> AugmentFn:
        AUGMENTATIONS.add(name, Augmentation(name, fn, spatial, ranges or {}))
        return fn
    return register


def _per_sample(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flags.view(-1, *([1] * (like.dim() - 1)))


def _crop(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Per-sample windows of a padded ``[B, C, H', W']`` batch: one gather of flat positions
    (four times faster on a CPU than a gather of rows, then of columns)."""
    b, c, _, wide = padded.shape
    h, w = rows.shape[1], cols.shape[1]
    flat = (rows[:, :, None] * wide + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, flat).view(b, c, h, w)


@augmentation("random_crop", spatial=2)
def random_crop(x, mask, draw, *, padding: int = 4):
    """Pad by ``padding`` (zeros; masks with background 0) and crop back at a random offset."""
    if padding == 0:
        return x, mask
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    flat = x.reshape(x.shape[0], -1, h, w)
    rows = draw.integers(2 * padding + 1)[:, None] + torch.arange(h, device=x.device)
    cols = draw.integers(2 * padding + 1)[:, None] + torch.arange(w, device=x.device)
    x = _crop(F.pad(flat, (padding,) * 4), rows, cols).reshape(*lead, h, w)
    if mask is not None:
        mask = _crop(F.pad(mask.unsqueeze(1), (padding,) * 4), rows, cols).squeeze(1)
    return x, mask


@augmentation("horizontal_flip", spatial=1, ranges={"p": (0, 1)})
def horizontal_flip(x, mask, draw, *, p: float = 0.5):
    """Mirror the last axis of a sample (and its mask) with probability ``p``."""
    flip = draw.uniform() < p
    x = torch.where(_per_sample(flip, x), x.flip(-1), x)
    if mask is not None:
        mask = torch.where(_per_sample(flip, mask), mask.flip(-1), mask)
    return x, mask


@augmentation("vertical_flip", spatial=2, ranges={"p": (0, 1)})
def vertical_flip(x, mask, draw, *, p: float = 0.5):
    """Mirror the second-to-last axis of a sample (and its mask) with probability ``p``."""
    flip = draw.uniform() < p
    x = torch.where(_per_sample(flip, x), x.flip(-2), x)
    if mask is not None:
        mask = torch.where(_per_sample(flip, mask), mask.flip(-2), mask)
    return x, mask


@augmentation("gaussian_noise")
def gaussian_noise(x, mask, draw, *, std: float = 0.1):
    """Add ``N(0, std^2)`` noise to every input value (before normalisation)."""
    return x + std * draw.normal(tuple(x.shape[1:])), mask


def parse_augment(value: Any, location: Location | None) -> list[Step]:
    """``[name, {name: {arg: value}}, ...]`` -> checked steps."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError("`augment` must be a list", location,
                        "for example augment: [{random_crop: {padding: 4}}, horizontal_flip]")
    steps = []
    for index, item in enumerate(value):
        loc = value.where(index) if hasattr(value, "item_locs") else location
        if isinstance(item, dict) and len(item) == 1:
            (name, args), = item.items()
        elif isinstance(item, str):
            name, args = item, None
        else:
            raise DataError(f"augmentation #{index + 1} must be a name or `{{name: {{args}}}}`, not {item!r}", loc)
        kind = AUGMENTATIONS.get(name, loc)
        steps.append(Step(kind, _check_args(kind, args, loc), loc))
    return steps


def _check_args(aug: Augmentation, args: Any, loc: Location | None) -> dict[str, Any]:
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise DataError(f"the arguments of `{aug.name}` must be a mapping, not {args!r}", loc,
                        f"for example {{{aug.name}: {aug.defaults}}}")
    defaults = aug.defaults
    out = {}
    for key, value in args.items():
        if key not in defaults:
            raise DataError(f"`{aug.name}` has no argument `{key}`", loc,
                            choices_hint(key, defaults, f"arguments of {aug.name}") if defaults
                            else f"`{aug.name}` takes no arguments")
        kind = type(defaults[key])
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
        low, high = aug.ranges.get(key, (0, float("inf")))
        if not ok or not low <= value <= high:
            wanted = "an integer" if kind is int else "a number"
            raise DataError(f"`{aug.name}.{key}` must be {wanted} in [{low}, {high}], not {value!r}", loc)
        out[key] = kind(value)
    return out


def check_applicable(steps: list[Step], sample_shape: tuple[int, ...], float_input: bool) -> None:
    """Each augmentation needs float inputs with enough spatial axes."""
    for step in steps:
        if not float_input:
            raise DataError(f"`{step.aug.name}` cannot augment integer inputs (token ids)", step.location,
                            "remove `augment:` for this model")
        if len(sample_shape) - 1 < step.aug.spatial:
            raise DataError(f"`{step.aug.name}` needs samples with {step.aug.spatial} spatial axes after the "
                            f"channels, but this dataset's samples are {list(sample_shape)}", step.location)
