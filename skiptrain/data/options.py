"""The ``data:`` section, checked: every key known, every value of the right kind.

Mistakes are DataErrors that point at the offending key (``config.where``) and
suggest the closest valid name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import where
from ..errors import DataError, Location, choices_hint
from .augment import Step, parse_augment

# Every key of `data:` and its default. None means "not given": the dataset decides.
DEFAULTS: dict[str, Any] = {
    "dataset": None,  # required
    "root": "./data",
    "download": False,
    "batch_size": 128,
    "val_fraction": 0.1,
    "augment": [],
    "normalize": "auto",
    "num_workers": 2,
    "num_samples": None,  # synthetic: 1024, shapes: 2000
    "num_classes": None,  # synthetic: 10, segfolder: found in the masks
    "seed": None,  # defaults to the run's seed
}


@dataclass
class DataOptions:
    """The ``data:`` mapping, validated, with defaults filled in."""

    dataset: str
    root: Path = Path("./data")
    download: bool = False
    batch_size: int = 128
    val_fraction: float = 0.1
    augment: list[Step] = field(default_factory=list)
    normalize: str | tuple[list[float], list[float]] = "auto"  # "auto" | "none" | (mean, std)
    num_workers: int = 2
    num_samples: int | None = None
    num_classes: int | None = None
    seed: int = 0
    source: Any = None  # the mapping it came from, for error locations

    def where(self, key: str) -> Location | None:
        return where(self.source, key)


def parse_options(data: Any, seed: int = 0) -> DataOptions:
    """Check the ``data:`` mapping and fill in defaults."""
    if not isinstance(data, dict):
        raise DataError("`data:` must be a mapping with at least `dataset:`", where(data),
                        "for example `data: {dataset: digits, batch_size: 64}`")
    for key in data:
        if key not in DEFAULTS:
            loc = data.where(key, of_key=True) if hasattr(data, "key_locs") else None
            raise DataError(f"unknown key `{key}` in `data:`", loc, choices_hint(key, DEFAULTS, "data keys"))
    if data.get("dataset") is None:
        raise DataError("`data:` has no `dataset:`", where(data),
                        "add `dataset: digits` (or mnist1d, shapes, synthetic, cifar10, ...)")

    def given(key: str) -> Any:
        return data.get(key, DEFAULTS[key])

    dataset = given("dataset")
    if not isinstance(dataset, str):
        raise DataError("`dataset` must be a name", where(data, "dataset"))
    root = given("root")
    if not isinstance(root, str) or not root:
        raise DataError("`root` must be a folder path", where(data, "root"))
    download = given("download")
    if not isinstance(download, bool):
        raise DataError("`download` must be true or false", where(data, "download"))
    val_fraction = _number(data, "val_fraction", given("val_fraction"))
    if not 0 <= val_fraction < 1:
        raise DataError(f"`val_fraction` must be in [0, 1), not {val_fraction}", where(data, "val_fraction"),
                        "0.1 keeps a tenth of the training split for validation; 0 keeps none")
    run_seed = given("seed")
    return DataOptions(
        dataset=dataset,
        root=Path(root).expanduser(),
        download=download,
        batch_size=_integer(data, "batch_size", given("batch_size"), minimum=1),
        val_fraction=float(val_fraction),
        augment=parse_augment(given("augment"), where(data, "augment")),
        normalize=_normalize(data, given("normalize")),
        num_workers=_integer(data, "num_workers", given("num_workers"), minimum=0),
        num_samples=_optional_integer(data, "num_samples", minimum=1),
        num_classes=_optional_integer(data, "num_classes", minimum=1),
        seed=seed if run_seed is None else _integer(data, "seed", run_seed, minimum=0),
        source=data,
    )


def _integer(data: Any, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"`{key}` must be an integer >= {minimum}, not {value!r}", where(data, key))
    return value


def _optional_integer(data: Any, key: str, minimum: int) -> int | None:
    value = data.get(key)
    return None if value is None else _integer(data, key, value, minimum)


def _number(data: Any, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"`{key}` must be a number, not {value!r}", where(data, key))
    return float(value)


def _normalize(data: Any, value: Any) -> str | tuple[list[float], list[float]]:
    """``auto``, ``none`` (also null/false), or ``{mean: [...], std: [...]}``."""
    loc = where(data, "normalize")
    if value is None or value is False or value == "none":
        return "none"
    if value == "auto" or value is True:
        return "auto"
    if not isinstance(value, dict):
        raise DataError(f"`normalize` must be auto, none or {{mean: [...], std: [...]}}, not {value!r}", loc)
    for key in value:
        if key not in ("mean", "std"):
            raise DataError(f"unknown key `{key}` in `normalize`", where(value, key) or loc,
                            choices_hint(key, ("mean", "std"), "normalize keys"))
    stats = []
    for key in ("mean", "std"):
        numbers = value.get(key)
        numbers = [numbers] if isinstance(numbers, (int, float)) and not isinstance(numbers, bool) else numbers
        if (not isinstance(numbers, list) or not numbers
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)):
            raise DataError(f"`normalize.{key}` must be a list of numbers, one per channel",
                            where(value, key) or loc, "for example {mean: [0.49, 0.48, 0.45], std: [0.25, 0.24, 0.26]}")
        stats.append([float(v) for v in numbers])
    mean, std = stats
    if len(mean) != len(std):
        raise DataError(f"`normalize` has {len(mean)} means but {len(std)} stds", loc)
    if any(s <= 0 for s in std):
        raise DataError("`normalize.std` values must be positive", where(value, "std") or loc)
    return mean, std
