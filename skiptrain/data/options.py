"""The ``data:`` section: one pydantic declaration per key (kind, range, default, description).

``parse_options`` checks a config's ``data:`` mapping against it (``typed.check``): a
mistake is a DataError at the offending key with the closest valid name or the key's
description as the hint. ``skiptrain schema`` prints the same declarations. The
augmentations (``augment.py``) and datasets (``registry.py``) check their own names.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, StrictBool,
                      ValidationInfo, WithJsonSchema, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from ..config import where
from ..errors import DataError, Location
from ..typed import check
from .augment import AUGMENTATIONS, Step, parse_augment

TOKENIZER_KINDS = ("char", "byte", "bpe")  # the keys of tokenizers.TOKENIZERS (kept equal by a test)

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # no .nan or .inf anywhere
Count = Annotated[int, Field(ge=1, le=2**63 - 1)]  # a count torch can hold (int64)
Numbers = Union[float, Annotated[list[float], Field(min_length=1)]]
Positive = Annotated[float, Field(gt=0)]
PositiveNumbers = Union[Positive, Annotated[list[Positive], Field(min_length=1)]]


class Normalization(BaseModel):
    """``normalize: {mean: [...], std: [...]}``: one value, or one per channel, in input units."""

    model_config = STRICT
    mean: Numbers = Field(description="per-channel means, in input units (0..1 for images)")
    std: PositiveNumbers = Field(description="per-channel standard deviations, positive")

    @field_validator("mean", "std")
    @classmethod
    def _as_list(cls, value: Any) -> list[float]:
        return [float(v) for v in value] if isinstance(value, list) else [float(value)]

    @model_validator(mode="after")
    def _same_length(self) -> "Normalization":
        if len(self.mean) != len(self.std):
            raise ValueError(f"`normalize` has {len(self.mean)} means but {len(self.std)} stds")
        return self


# Statistics that published weights were trained with, by name: ``normalize: imagenet`` is
# torchvision's (and timm's default), the values every ImageNet checkpoint expects its inputs in.
NAMED: dict[str, tuple[list[float], list[float]]] = {
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


@dataclass(frozen=True)
class Statistics:
    """A given ``normalize``: its mean and std, and the name it was given by (None: written out)."""

    mean: list[float]
    std: list[float]
    name: str | None = None


def _normalized(value: Any) -> Union[str, Statistics]:
    if isinstance(value, Normalization):
        return Statistics(value.mean, value.std)
    if value in NAMED:
        return Statistics(*NAMED[value], name=value)
    return "auto" if value in ("auto", True) else "none"  # none, false, null


def _folder(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise PydanticCustomError("folder", "not a folder path")
    return Path(value).expanduser()


def _augment(value: Any, info: ValidationInfo) -> list[Step]:
    source = (info.context or {}).get("source")
    return parse_augment(value, where(source, "augment"))


def _augment_schema(schema: dict[str, Any]) -> None:
    """``augment:``'s schema, from the registered augmentations and their arguments."""
    steps = []
    for name, aug in AUGMENTATIONS.items():
        args = {}
        for key, value in aug.defaults.items():
            low, high = aug.ranges.get(key, (0, None))
            args[key] = {"type": "integer" if type(value) is int else "number", "default": value, "minimum": low,
                         **({"maximum": high} if high is not None else {})}
        steps.append({"type": "object", "required": [name], "additionalProperties": False,
                      "properties": {name: {"anyOf": [{"type": "null"}, {"type": "object", "properties": args,
                                                                       "additionalProperties": False}]}}})
    schema.pop("type", None)
    schema.pop("items", None)
    schema["anyOf"] = [{"type": "null"}, {"type": "array", "items": {"anyOf": [{"enum": list(AUGMENTATIONS)}, *steps]}}]


def _dataset_schema(schema: dict[str, Any]) -> None:
    from .registry import DATASETS

    schema.pop("type", None)
    schema["enum"] = sorted(DATASETS)


class DataOptions(BaseModel):
    """The data: section, checked, with its defaults filled in."""

    model_config = ConfigDict(**STRICT, arbitrary_types_allowed=True)
    dataset: str = Field(json_schema_extra=_dataset_schema,
                         description="the dataset: a registered name such as digits, mnist1d, shapes, synthetic, "
                                     "cifar10 or imagefolder")
    root: Annotated[Path, BeforeValidator(_folder), WithJsonSchema({"type": "string", "minLength": 1})] = Field(
        "./data", validate_default=True,
        description="the folder of a file dataset, relative to the folder skiptrain runs in")
    download: StrictBool = Field(False, description="torchvision's datasets only: fetch the files into root")
    batch_size: Count = Field(128, description="the global batch: with --nproc N, each process gets batch_size / N")
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="0.1 keeps a tenth of the training split for validation (when the dataset has "
                                     "no validation split of its own); 0 keeps none")
    augment: Annotated[list, BeforeValidator(_augment)] = Field(
        [], json_schema_extra=_augment_schema,
        description="augmentations of the training batches: [{random_crop: {padding: 4}}, horizontal_flip]")
    normalize: Annotated[Union[Literal[("auto", "none", *NAMED)], StrictBool, None, Normalization],
                         AfterValidator(_normalized)] \
        = Field("auto", description="auto: per-channel mean and std of the training split; none; "
                                    "imagenet: torchvision's (mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]) "
                                    "for ImageNet weights, RGB input only; or {mean: [...], std: [...]}")
    num_workers: Annotated[int, Field(ge=0)] = Field(
        2, description="DataLoader worker processes for file datasets, per training process")
    cache: StrictBool = Field(
        True, description="imagefolder, segfolder: keep the decoded, resized samples after the first epoch and "
                          "train later epochs from them (in memory up to 2 GiB per split, else a file in the run "
                          "directory); false: decode every file every epoch")
    num_samples: Optional[Count] = Field(None, description="synthetic, shapes: how many samples; null: the dataset's")
    num_classes: Optional[Count] = Field(None,
                                         description="synthetic, segfolder: how many classes; null: the dataset's")
    tokenizer: Literal[TOKENIZER_KINDS] = Field(
        "char", description="text: char (one id per character of the text), byte (256 UTF-8 bytes) or bpe "
                            "(byte-level BPE learned from the training split)")
    vocab_size: Optional[Annotated[int, Field(ge=257, le=2**20)]] = Field(
        None, description="text, tokenizer: bpe only: how many ids BPE learns (257 to 1048576); null: 1024")
    block_size: Optional[Count] = Field(
        None, description="text: tokens per window (the context length); null: the model's input length")
    batches_per_epoch: Optional[Count] = Field(
        None, description="text: random windows batches per epoch; null: about one pass over the training tokens")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="text: the last part of the text kept for test")
    eval_batches: Optional[Count] = Field(
        200, description="text: at most this many batches of fixed windows measure val and test; null: all")
    seed: Optional[Annotated[int, Field(ge=0, le=2**64 - 1)]] = Field(
        None, description="the seed of the validation split, the shuffle and the augmentation (0 to 2**64 - 1); "
                          "null: train.seed")
    _source: Any = PrivateAttr(None)  # the mapping it came from, for error locations

    def where(self, key: str) -> Location | None:
        return where(self._source, key)


def parse_options(data: Any, seed: int = 0) -> DataOptions:
    """Check the ``data:`` mapping and fill in defaults (``seed``: the run's, unless ``data.seed`` is set)."""
    if not isinstance(data, dict):
        raise DataError("`data:` must be a mapping with at least `dataset:`", where(data),
                        "for example `data: {dataset: digits, batch_size: 64}`")
    options = check(DataOptions, data, DataError, "data", qualified=False, context={"source": data})
    options._source = data
    if options.seed is None:
        options.seed = seed
    return options
