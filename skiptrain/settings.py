"""The ``train:`` section: one pydantic declaration per key (kind, range, default, description).

``parse_settings`` checks a config's ``train:`` mapping against it (``typed.check``: a wrong
key or value is a located ConfigError with a did-you-mean or the key's description as the
hint), and ``skiptrain schema`` prints the same declarations as JSON Schema.

``optimizer``, ``scheduler`` and ``loss`` take a name (``optimizer: sgd``) or a mapping;
a key left out takes the optimizer's, scheduler's or loss's own default. After parsing
they are plain dicts (``settings.optimizer["name"]``), and ``settings.model_dump()`` is
plain data, as a checkpoint stores it.
"""
from __future__ import annotations

import math

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, StrictBool,
                      ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from .errors import ConfigError
from .typed import check

ADAMW_WEIGHT_DECAY = 0.01
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"  # the devices skiptrain runs on; select_device checks the same
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
# A learning rate above a million overflows float32 arithmetic in the first update (torch then raises
# "value cannot be converted to type float without overflow"), so it is refused where it is written.
LR_MAX = 1e6
LearningRate = Annotated[float, Field(ge=0, le=LR_MAX)]
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # no .nan or .inf anywhere
Beta = Annotated[float, Field(ge=0, lt=1)]
SEED_MAX = 2**64 - 1  # the largest seed torch.manual_seed takes
INT64 = Annotated[int, Field(ge=-2**63, le=2**63 - 1)]  # what a torch integer argument holds


class Optimizer(BaseModel):
    """train.optimizer: keys left out take torch's defaults, except lr and adamw's weight_decay."""

    model_config = STRICT
    name: Literal["sgd", "adamw", "adam", "rmsprop"] = Field("adamw", description="the torch optimizer")
    lr: LearningRate = Field(1e-3, description="the learning rate (before the scheduler's factor), 0 to 1e6")
    weight_decay: Optional[NonNegative] = Field(
        None, description=f"decay of weights with two or more dimensions: {ADAMW_WEIGHT_DECAY} for adamw, 0 otherwise")
    momentum: Optional[NonNegative] = Field(None, description="sgd, rmsprop: momentum (0; 0.9 with nesterov)")
    nesterov: Optional[StrictBool] = Field(None, description="sgd: Nesterov momentum")
    betas: Optional[Annotated[list[Beta], Field(min_length=2, max_length=2)]] = Field(
        None, description="adam, adamw: the two moment decay rates, each in [0, 1): [0.9, 0.999]")
    eps: Optional[Positive] = Field(None, description="adam, adamw, rmsprop: added to the denominator")
    alpha: Optional[NonNegative] = Field(None, description="rmsprop: smoothing constant (0.99)")
    decay_norm_and_bias: Optional[StrictBool] = Field(
        None, description="also decay biases and norm scales (1-D tensors); false by default")

    @model_validator(mode="after")
    def _adamw_decays(self) -> "Optimizer":
        if self.name == "adamw" and self.weight_decay is None:
            self.weight_decay = ADAMW_WEIGHT_DECAY
        return self


class Scheduler(BaseModel):
    """train.scheduler: the learning rate as a function of the optimizer step."""

    model_config = STRICT
    name: Literal["none", "step", "multistep", "cosine", "onecycle"] = Field("none", description="the schedule")
    warmup_epochs: Optional[NonNegative] = Field(None, description="a linear ramp up to lr over this many epochs (0)")
    step_size: Optional[Annotated[int, Field(ge=1)]] = Field(None, description="step: epochs between decays (30)")
    milestones: Optional[list[Annotated[int, Field(ge=0)]]] = Field(
        None, description="multistep: the epochs at which lr decays ([])")
    gamma: Optional[NonNegative] = Field(
        None, description="step, multistep: the factor of each decay (0.1); the lr it reaches stays <= 1e6")
    min_lr: Optional[LearningRate] = Field(None, description="cosine: the final learning rate (0)")
    pct_start: Optional[Annotated[float, Field(gt=0, lt=1)]] = Field(
        None, description="onecycle: the part of the run spent rising (0.3)")
    div_factor: Optional[Positive] = Field(None, description="onecycle: starts at lr / div_factor (25)")
    final_div_factor: Optional[Positive] = Field(
        None, description="onecycle: ends at lr / (div_factor * final_div_factor) (1e4)")


class Loss(BaseModel):
    """train.loss: auto is the task's own loss."""

    model_config = STRICT
    name: Literal["auto", "cross_entropy", "mse"] = Field(
        "auto", description="auto: cross-entropy for classification and segmentation, mse for regression")
    label_smoothing: Optional[Annotated[float, Field(ge=0, le=1)]] = Field(
        None, description="cross_entropy: label smoothing (0)")
    ignore_index: Optional[INT64] = Field(None, description="cross_entropy: a target value that is ignored (-100)")


def _compiles(pattern: Optional[str]) -> Optional[str]:
    import re

    try:
        re.compile(pattern or "")
    except re.error as exc:
        raise ValueError(f"the rename regex {pattern!r} is not a regular expression: {exc}") from None
    return pattern


class RenameRule(BaseModel):
    """A rename rule of train.init: {strip_prefix: module.} or {regex: ^backbone\\., replace: ''}."""

    model_config = STRICT
    strip_prefix: Optional[str] = Field(None, min_length=1,
                                        description="removed from the start of every file key that has it")
    regex: Annotated[Optional[str], AfterValidator(_compiles)] = Field(
        None, min_length=1, description="a Python regular expression searched in every file key, e.g. ^backbone\\.")
    replace: Optional[str] = Field(None, description="with regex: what each match becomes (\\1 for its first "
                                                     "group); left out or empty: the match is removed")

    @model_validator(mode="after")
    def _one_rule(self) -> "RenameRule":
        if (self.strip_prefix is None) == (self.regex is None) or (self.replace is not None and self.regex is None):
            raise ValueError("a rename rule is {strip_prefix: PREFIX} or {regex: PATTERN, replace: TEXT}, "
                             "one rule per list item")
        return self


class Init(BaseModel):
    """train.init as a mapping: where the weights are, how their keys map onto the model's, how strict."""

    model_config = STRICT
    path: str = Field(min_length=1, description="a .pth/.pt state dict, a .safetensors file, or a skiptrain checkpoint "
                                                "or run directory (relative to the folder skiptrain runs in)")
    strict: StrictBool = Field(False, description="true: every tensor of the model must load, and every tensor of "
                                                  "the file must be used, or training does not start")
    rename: list[RenameRule] = Field(
        [], description="rules applied in order to every key of the file before matching by name: "
                        "[{strip_prefix: module.}, {regex: ^backbone\\., replace: ''}]")


def _init_path(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


def _init_schema(schema: dict[str, Any]) -> None:
    inner = [branch for branch in schema.pop("anyOf") if branch.get("type") != "null"]
    schema["anyOf"] = [{"type": "string", "minLength": 1}, *inner, {"type": "null"}]


def _section(model: type[BaseModel], description: str) -> Any:
    """A sub-section's type: a name or a mapping in, a plain dict of the given keys and defaults out."""
    names = list(model.model_fields["name"].annotation.__args__)

    def by_name(value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def as_dict(parsed: BaseModel) -> dict[str, Any]:
        return parsed.model_dump(exclude_none=True)

    def either(schema: dict[str, Any]) -> None:
        inner = {key: schema.pop(key) for key in list(schema) if key not in ("default", "description")}
        schema["anyOf"] = [{"enum": names}, inner]
    return Annotated[model, BeforeValidator(by_name), AfterValidator(as_dict), PlainSerializer(dict),
                     Field(default=as_dict(model()), json_schema_extra=either, description=description)]


def _registered_task(name: Optional[str]) -> Optional[str]:
    from .tasks import TASKS

    if name is not None and name not in TASKS:
        raise PydanticCustomError("registered", "not a registered task")
    return name


def _task_schema(schema: dict[str, Any]) -> None:
    from .tasks import TASKS

    schema.pop("anyOf", None)
    schema["enum"] = [*TASKS.names(), None]


class ParamGroup(BaseModel):
    """An item of train.param_groups: the parameters of the layers ``match`` selects, with their own settings."""

    model_config = STRICT
    match: str = Field(min_length=1, description="a layer id, block instance or glob pattern over ids: head, "
                                                 "\"layer4.*\"; the first group that matches a parameter takes it")
    lr: Optional[LearningRate] = Field(None, description="this group's learning rate, scaled by the schedule "
                                                        "like the base lr (left out: train.optimizer.lr)")
    weight_decay: Optional[NonNegative] = Field(
        None, description="this group's weight decay (left out: the optimizer's); biases and norm scales keep "
                          "none unless decay_norm_and_bias")


Epochs = Annotated[int, Field(ge=1)]
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TrainSettings(BaseModel):
    """The train: section, checked, with its defaults filled in."""

    model_config = STRICT
    epochs: Epochs = Field(10, description="passes over the training split; --epochs N overrides it")
    optimizer: _section(Optimizer, "sgd, adamw, adam or rmsprop, or a mapping: {name: sgd, lr: 0.1, momentum: 0.9}")
    scheduler: _section(Scheduler, "none, step, multistep, cosine or onecycle, or a mapping: "
                                   "{name: cosine, warmup_epochs: 1}")
    loss: _section(Loss, "auto, cross_entropy or mse, or a mapping: {name: cross_entropy, label_smoothing: 0.1}")
    task: Annotated[Optional[str], AfterValidator(_registered_task)] = Field(
        None, json_schema_extra=_task_schema, description="the task; null: the dataset's own")
    device: str = Field("auto", pattern=DEVICE_PATTERN,
                        examples=["auto", "cpu", "cuda", "cuda:1", "mps"],
                        description="auto takes CUDA, then MPS, then the CPU; or cpu, cuda, cuda:1, mps. "
                                    "--device overrides it")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto is bf16 autocast on a CUDA GPU that supports it, fp32 elsewhere; "
                            "fp16 uses a gradient scaler")
    compile: Union[StrictBool, Literal[COMPILE_MODES]] = Field(
        False, description="true runs the model through torch.compile, or give a mode; modes: "
                           + ", ".join(COMPILE_MODES).replace("reduce-overhead", "reduce-overhead (CUDA graphs: "
                                                                                 "fastest for small models on a GPU)"))
    channels_last: Union[Literal["auto"], StrictBool] = Field(
        "auto", description="the channels-last memory format: true, false, or auto (on CUDA for 2-D images)")
    grad_clip: Optional[Positive] = Field(None, description="clip the gradient norm to this value; null: no clipping")
    freeze: list[Annotated[str, Field(min_length=1)]] = Field(
        [], description="layer ids, block instances or glob patterns (stem, layer1, \"layer2.*\") whose parameters "
                        "do not train: left out of the optimizer, their BatchNorm statistics frozen too")
    unfreeze_at_epoch: Optional[Annotated[int, Field(ge=2)]] = Field(
        None, description="train.freeze's layers train again from the start of this epoch (1-based); null: never")
    param_groups: list[ParamGroup] = Field(
        [], description="learning rate and weight decay by layer: [{match: \"head\", lr: 0.01, weight_decay: 0}]; "
                        "other parameters take train.optimizer's")
    layer_decay: Optional[Annotated[float, Field(gt=0, le=1)]] = Field(
        None, description="layer-wise lr decay: the last layer keeps its lr, each earlier one gets this factor once "
                          "more (a layer: a top-level node, or the nodes of one block instance); null: none")
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = Field(
        0, description="seeds the weights, and the data unless data.seed is set (0 to 2**64 - 1)")
    deterministic: StrictBool = Field(
        False, description="PyTorch's deterministic algorithms: a resumed run ends bit for bit as an uninterrupted one")
    out_dir: str = Field("runs", min_length=1,
                         description="the folder of runs/<model name>-<date>-<time>/ when there is no --run-dir")
    checkpoint_every: Epochs = Field(1, description="save checkpoints/last.pt every N epochs (and after the last)")
    checkpoint_every_steps: Optional[Epochs] = Field(
        None, description="also save every N optimizer steps, inside long epochs; null: only at epoch ends")
    sync_bn: StrictBool = Field(
        False, description="with several processes on CUDA GPUs, batch-norm statistics over the global batch "
                           "(refused on the CPU, where gloo has none; one process has nothing to synchronise)")
    on_nan: Literal["stop", "skip_batch"] = Field(
        "stop", description="a non-finite loss stops the run (stop) or its batch is skipped (skip_batch)")
    tensorboard: StrictBool = Field(
        False, description="also write RUN_DIR/tensorboard/ (needs the tensorboard package)")
    init: Annotated[Optional[Init], BeforeValidator(_init_path)] = Field(
        None, json_schema_extra=_init_schema,
        description="weights a new run starts from, matched by name (a path, or {path, strict, rename}); "
                    "--resume restores its run instead; see the transfer report, transfer.json")

    @field_validator("scheduler")
    @classmethod
    def _peak_lr_fits(cls, value: Any, info: ValidationInfo) -> Any:
        """A decay factor above 1 grows the lr each step or milestone: the largest it reaches (at the
        last epoch) must stay a learning rate, or torch's update overflows float32 mid-run."""
        optimizer, epochs = info.data.get("optimizer") or {}, info.data.get("epochs") or 1
        if not isinstance(value, dict) or value.get("name") not in ("step", "multistep"):
            return value
        gamma = value.get("gamma", 0.1)
        if gamma is None or gamma <= 1:
            return value
        last = epochs - 1
        decays = (last // int(value.get("step_size") or 30) if value["name"] == "step"
                  else sum(last >= m for m in value.get("milestones") or []))
        try:
            peak = optimizer.get("lr", 1e-3) * gamma ** decays
        except OverflowError:
            peak = math.inf
        if peak > LR_MAX:
            raise ValueError(f"`train.scheduler.gamma` {gamma:g} raises the lr {decays} times, to {peak:.3g} by "
                             f"epoch {epochs}: above {LR_MAX:g}, every update overflows\nhint: a decay factor is "
                             "below 1 (0.1 divides the lr by 10 at each step or milestone)")
        return value

    @field_validator("unfreeze_at_epoch")
    @classmethod
    def _unfreeze_needs_freeze(cls, value: Optional[int], info: ValidationInfo) -> Optional[int]:
        if value is not None and not info.data.get("freeze"):
            raise ValueError("`train.unfreeze_at_epoch` releases `train.freeze`'s layers, and nothing is frozen: "
                             "add `freeze: [...]` or remove `unfreeze_at_epoch`")
        return value


def parse_settings(train: dict) -> TrainSettings:
    """Check a config's ``train:`` mapping and fill in the defaults."""
    if not isinstance(train, dict):
        raise ConfigError("`train:` must be a mapping", getattr(train, "loc", None))
    return check(TrainSettings, train, ConfigError, "train", qualified=True)
