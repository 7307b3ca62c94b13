"""What every task is: the ``Task`` class, the ``TASKS`` registry and what tasks share.

A task owns its loss, its metric accumulation, its headline metric and direction, the
check that data and model fit, the synthetic dataset's targets and how ``predict`` turns
outputs into answers. Nothing outside its entry branches on a task's name.

torch and numpy are imported inside the methods: reading a config (``train.task``) or
``skiptrain --help`` must not load them.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..config import where
from ..errors import ConfigError, DataError, Location, choices_hint
from ..registries import Registry

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

Shape = Sequence[int]
# The answers of `predict` as text: column headings, then groups of rows with a line between
# groups (classification: one group per input, its top classes).
Table = tuple[list[str], list[list[list[str]]]]


class Metrics:
    """Running sums over the batches of a split, kept on the model's device so that no batch
    waits for the GPU; ``summary()`` reads them back once and turns them into the reported numbers.

    Under several processes each rank measures its own batches, then ``merge`` adds up every rank's
    ``state()``: ``counts`` (integers, or integer tensors such as a confusion matrix) are plain sums,
    and ``parts`` are float sums kept per batch and added by ``exact_sum`` (``math.fsum``: correctly
    rounded, so in any order, over any number of ranks, the figure is the one process's, bit for bit)."""

    counts: tuple[str, ...] = ()  # attributes holding integer sums
    parts: tuple[str, ...] = ()  # attributes holding lists of per-batch float sums (0-d tensors)

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """This rank's sums as plain values (ints, CPU tensors, lists of floats), for ``merge``."""
        import torch

        state: dict[str, Any] = {}
        for name in self.counts:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                value = value.item() if value.dim() == 0 else value.cpu()
            state[name] = value
        for name in self.parts:
            state[name] = _floats(getattr(self, name))
        return state

    def merge(self, states: list[dict[str, Any]]) -> None:
        """Take the sums of every rank (``state()`` of each, this one included) as this one's."""
        for name in self.counts:
            values = [s[name] for s in states if s[name] is not None]
            setattr(self, name, sum(values[1:], values[0]) if values else None)
        for name in self.parts:
            setattr(self, name, [value for s in states for value in s[name]])


def exact_sum(parts: list) -> float:
    """The correctly rounded sum of per-batch float sums: independent of their order and grouping."""
    import math

    return math.fsum(_floats(parts))


def _floats(parts: list) -> list[float]:
    import torch

    tensors = [p for p in parts if isinstance(p, torch.Tensor)]
    if not tensors:
        return [float(p) for p in parts]
    return [float(p) for p in parts if not isinstance(p, torch.Tensor)] + torch.stack(tensors).tolist()


class Task:
    """One kind of problem. Subclass it, set the class attributes, override what differs, and
    decorate the class with ``@register``; the test suite then runs over it with the others."""

    name: str = ""
    headline: str = "loss"  # the metric key that sums up a run: test_<headline>, val_<headline>
    label: str = "loss"  # the headline in words, as in "test accuracy: 0.9812"
    higher_is_better: bool = False
    shown: tuple[str, ...] = ("loss",)  # the result keys `skiptrain eval` prints, in order
    per_class: tuple[str, str] | None = None  # (result key, column heading) of eval's per-class table
    has_classes: bool = True  # targets are class indices out of num_classes; False: values to fit
    spatial_targets: bool = False  # a target per input position: flips and crops move it with the input
    any_output: bool = False  # looks_like accepts any output: asked only when no other task's does
    default_loss: str = "cross_entropy"  # what `loss: {name: auto}` picks
    answer_key: str = "output"  # the key only this task's answers from `predict` carry

    def loss(self, settings: dict[str, Any]) -> nn.Module:
        """The training loss for ``train.loss`` (``{name: auto|cross_entropy|mse, ...}``)."""
        name = settings.get("name", "auto")
        name = self.default_loss if name == "auto" else name
        if name not in LOSSES:
            raise ConfigError(f"unknown loss `{name}`", where(settings, "name"), choices_hint(name, LOSSES, "losses"))
        return LOSSES[name](settings)

    def metrics(self, num_classes: int | None) -> Metrics:
        """A fresh accumulator for one pass over a split."""
        raise NotImplementedError

    def check_fit(self, config, plan, data) -> None:
        """The model's input and output must match the dataset before any training starts."""
        model_in = tuple(plan.graph.input_shape)
        if tuple(data.input_shape) != model_in:
            raise DataError(f"the model takes samples of shape {list(model_in)}, but `{data.name}` gives "
                            f"{list(data.input_shape)}", where(config.model, "input"),
                            f"set `model.input: {list(data.input_shape)}`")
        self.check_output(tuple(plan.output_shape), data, plan.graph.nodes[plan.graph.output].loc)

    def output_shape(self, input_shape: Shape, width: int) -> tuple[int, ...]:
        """What one sample's output must be for inputs of ``input_shape`` and ``width`` classes
        (or values, for a task without classes)."""
        return (width,)

    def check_output(self, model_out: tuple[int, ...], data, location: Location | None) -> None:
        """The model's output shape (one sample) against the dataset; nothing to check by default."""

    def synthetic_targets(self, count: int, input_shape: Shape, width: int, generator: torch.Generator,
                          location: Location | None = None) -> torch.Tensor:
        """Random targets for ``count`` samples of the ``synthetic`` dataset; ``width`` is its
        ``num_classes`` (classes, or output values for a task without classes)."""
        raise NotImplementedError

    def predict(self, outputs: np.ndarray, labels: list[str], *, class_names: list[str] | None = None,
                top: int = 5, output_dir: str | Path | None = None) -> list[dict[str, Any]]:
        """One answer per sample: the raw outputs, unless the task knows better."""
        return [{"input": label, "output": out.tolist()} for label, out in zip(labels, outputs)]

    def table(self, answers: list[dict[str, Any]]) -> Table:
        """``predict``'s answers as text, for the CLI to print."""
        return ["input", "output"], [[[row["input"], ", ".join(f"{v:.4g}" for v in _flat(_as_list(row["output"])))]
                                      for row in answers]]

    def looks_like(self, input_shape: Shape, output_shape: Shape) -> bool:
        """Whether a model with these shapes is probably one of ours (an .onnx file without metadata)."""
        return False

    def sample_losses(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """One loss per sample, so that the HTML report shows the worst validation samples first
        (cross-entropy averaged over a sample's positions, or squared error); None: no samples shown."""
        from torch.nn import functional as F

        if not self.has_classes:
            return (output.float() - target.float()).pow(2).flatten(1).mean(1)
        kept = (target >= 0) & (target < output.shape[1])  # the rest is train.loss.ignore_index
        loss = F.cross_entropy(output.float(), target.masked_fill(~kept, -100), reduction="none")
        return loss.flatten(1).mean(1) if loss.dim() > 1 else loss

    def show_sample(self, output: np.ndarray, target: np.ndarray, class_names: list[str] | None) -> tuple[Any, Any]:
        """One sample's (prediction, truth) for the report: each a short text or a PIL image."""
        return _values_text(output), _values_text(target)

    def best_metric(self, row: dict[str, Any]) -> str | None:
        """The key of an epoch's metrics row that picks the best checkpoint (None: no best)."""
        key = f"val_{self.headline}"
        if key in row:
            return key
        return "train_loss" if self.headline == "loss" else None

    def __repr__(self) -> str:
        return f"<task {self.name}>"


TASKS: Registry[Task] = Registry("task")


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: register one instance of a ``Task`` subclass under its ``name``."""
    TASKS.add(cls.name, cls(), origin=cls.__module__)
    return cls


def get_task(task: str | Task, location: Location | None = None) -> Task:
    """The registered task (a name, or a Task passed through); unknown names get a did-you-mean."""
    return task if isinstance(task, Task) else TASKS.get(task, location)


def guess(input_shape: Shape, output_shape: Shape) -> Task:
    """For a model saved without its task: the first task whose outputs look like these, the
    catch-all ones (regression: any output) only when no other task's do."""
    tasks = sorted((TASKS.get(name) for name in TASKS), key=lambda task: task.any_output)
    for task in tasks:
        if task.looks_like(list(input_shape), list(output_shape)):
            return task
    raise DataError(f"no task takes a model with outputs of shape {list(output_shape)}")


def headlines() -> list[Task]:
    """Every task, those with a headline of their own before those whose headline is the loss
    (which every task reports): the order in which to look for a headline among reported keys."""
    return sorted((TASKS.get(name) for name in TASKS), key=lambda task: task.headline == "loss")


def reported(keys, prefix: str = "test_") -> Task | None:
    """The task whose headline ``keys`` report (as ``prefix`` + headline: ``test_acc``)."""
    return next((task for task in headlines() if f"{prefix}{task.headline}" in keys), None)


def answers_table(answers: list[dict[str, Any]]) -> Table:
    """``predict``'s answers as text, laid out by the task whose ``answer_key`` they carry."""
    owner = next((task for task in (TASKS.get(name) for name in TASKS) if answers and task.answer_key in answers[0]),
                 Task())
    return owner.table(answers)


def class_name(class_names: list[str] | None, index: int) -> str:
    return str(class_names[index]) if class_names and index < len(class_names) else str(index)


def _values_text(values: np.ndarray, shown: int = 6) -> str:
    flat = [float(v) for v in values.reshape(-1)[:shown + 1]]
    return ", ".join(f"{v:.4g}" for v in flat[:shown]) + (", ..." if len(flat) > shown else "")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _flat(values):
    for value in values:
        yield from (_flat(value) if isinstance(value, list) else (value,))


def _cross_entropy(settings: dict[str, Any]) -> nn.Module:
    from torch import nn

    return nn.CrossEntropyLoss(label_smoothing=float(settings.get("label_smoothing", 0.0)),
                               ignore_index=int(settings.get("ignore_index", -100)))


def _mse(settings: dict[str, Any]) -> nn.Module:
    from torch import nn

    return nn.MSELoss()


# The losses `train.loss.name` may name (besides auto, which asks the task).
LOSSES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {"cross_entropy": _cross_entropy, "mse": _mse}


class ConfusionMetrics(Metrics):
    """Cross-entropy and a confusion matrix of class indices (one per sample, or one per pixel)."""

    counts = ("samples", "confusion")
    parts = ("losses",)

    def __init__(self, num_classes: int | None):
        self.num_classes = num_classes
        self.losses: list = []  # each batch's loss sum
        self.samples = 0
        self.confusion: torch.Tensor | None = None

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        import torch
        from torch.nn import functional as F

        output = output.float()
        k = self.num_classes or output.shape[1]
        kept = (target >= 0) & (target < k)  # the rest is train.loss.ignore_index: the data refuses other values
        self.losses.append(F.cross_entropy(output, target.masked_fill(~kept, -100), reduction="sum") / max(
            1, target[0].numel()))
        self.samples += target.shape[0]
        pairs = (target * k + output.argmax(dim=1))[kept]
        counts = torch.bincount(pairs, minlength=k * k).reshape(k, k)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = {"loss": exact_sum(self.losses) / max(1, self.samples)}
        if self.confusion is None:
            return result
        self.confusion = self.confusion.cpu()
        result.update(self.scores(self.confusion.double()))
        result["confusion"] = self.confusion.tolist()
        return result

    def scores(self, confusion: torch.Tensor) -> dict[str, Any]:
        """The task's numbers from the confusion matrix (rows: true class, columns: predicted)."""
        raise NotImplementedError
