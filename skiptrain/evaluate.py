"""A model measured on a split: each task's metrics (see ``skiptrain.tasks``), and a confusion-matrix plot."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from .distributed import World, gather
from .tasks import Task, get_task


def evaluate(model: nn.Module, batches: Iterable, task: str | Task, num_classes: int | None,
             autocast=None, prepare=None, world: World | None = None, keep_worst: int = 0) -> dict[str, Any]:
    """Run ``model`` in eval mode over every batch of a split; returns the task's metric summary
    (``loss`` always; then ``acc``, ``top5``, ``per_class_acc`` or ``miou``, ``pixel_acc``,
    ``per_class_iou``, and a ``confusion`` matrix for tasks with classes).

    With a ``world`` of several processes, ``batches`` is this rank's shard (``distributed.shard``) and
    every rank returns the metrics of the whole split: the task's sums are gathered and added up.

    ``keep_worst``: also keep the samples of the ``keep_worst`` highest losses (``Task.sample_losses``), so the
    HTML report needs no second pass: they come back under ``"worst"`` (a ``Worst``), the same on every rank."""
    metrics = get_task(task).metrics(num_classes)
    worst = Worst(task, keep_worst) if keep_worst else None
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for raw, y in batches:
            x = prepare(raw) if prepare is not None else raw
            if autocast is not None:
                with autocast():
                    out = model(x)
            else:
                out = model(x)
            metrics.update(out, y)
            if worst is not None:
                worst.update(raw, out, y)
    model.train(was_training)
    if world is not None and world.enabled:
        metrics.merge(gather(world, metrics.state()))
        if worst is not None:
            worst.merge(gather(world, worst.state()))
    result = metrics.summary()
    if worst is not None:
        result["worst"] = worst
    return result


class Worst:
    """The ``k`` samples of highest loss over one pass, worst first (a tie: the earlier sample first).

    Memory stays bounded: each batch's own top ``k`` joins the ``k`` kept so far on the model's device (no
    batch waits for the GPU); ``samples()`` reads them back once. Under several processes each rank keeps
    its shard's candidates and ``merge`` takes the top ``k`` of all, so every rank holds what one process
    would (shards are contiguous runs of batches in rank order: a sample's index is its place in the split)."""

    def __init__(self, task: str | Task, k: int):
        self.task, self.k = get_task(task), k
        self.seen = 0  # samples passed through this rank
        self.kept: tuple[torch.Tensor, ...] | None = None  # (loss, index, input, output, target) on the device
        self.rows: list[dict[str, Any]] = []  # on the CPU: the best of batches whose samples had another shape

    def update(self, x: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        losses = self.task.sample_losses(out, y)
        n = len(x)
        if losses is not None and self.k:
            top = losses.topk(min(self.k, n)).indices
            index = torch.arange(self.seen, self.seen + n, device=top.device)[top]
            parts = (losses.float()[top], index, x[top.to(x.device)], out[top].float(), y[top.to(y.device)])
            if self.kept is not None and any(a.shape[1:] != b.shape[1:] for a, b in zip(self.kept, parts)):
                self.rows, self.kept = self._top(self.rows + _rows(self.kept)), None  # samples of another size
            if self.kept is not None:
                parts = tuple(torch.cat([a, b.to(a.device)]) for a, b in zip(self.kept, parts))
            best = parts[0].topk(min(self.k, len(parts[0]))).indices
            self.kept = tuple(p[best.to(p.device)] for p in parts)
        self.seen += n

    def samples(self) -> list[dict[str, Any]]:
        """``{loss, index, input, output, target}`` of each kept sample (CPU tensors), worst first."""
        return self._top(self.rows + (_rows(self.kept) if self.kept is not None else []))

    def _top(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda row: (-row["loss"], row["index"]))[:self.k]

    def state(self) -> tuple[int, list[dict[str, Any]]]:
        return self.seen, self.samples()

    def merge(self, states: list[tuple[int, list[dict[str, Any]]]]) -> None:
        """Take every rank's ``state()`` (in rank order, this one included) as this one's."""
        offset, rows = 0, []
        for seen, part in states:
            rows += [dict(row, index=row["index"] + offset) for row in part]
            offset += seen
        self.rows, self.kept, self.seen = self._top(rows), None, offset


def _rows(kept: tuple[torch.Tensor, ...]) -> list[dict[str, Any]]:
    loss, index, x, out, y = (t.detach().cpu() for t in kept)
    return [{"loss": float(loss[i]), "index": int(index[i]), "input": x[i].contiguous(),
             "output": out[i].contiguous(), "target": y[i].contiguous()} for i in range(len(loss))]


def plot_confusion(confusion: list[list[int]], class_names: list[str] | None, path) -> bool:
    """Write the PNG atomically; a folder that cannot take it (a read-only run) is a warning, not a
    failure of the evaluation: returns whether the file was written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(confusion)
    names = class_names or [str(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.5 * k), min(12, 2 + 0.5 * k)))
    ax.imshow(confusion, cmap="Blues")
    if k <= 30:
        ax.set_xticks(range(k), names, rotation=90)
        ax.set_yticks(range(k), names)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    fig.tight_layout()
    from .errors import SkiptrainError, warn
    from .outputs import atomic_output

    try:
        with atomic_output(path, option=str(path)) as temp:
            fig.savefig(temp, dpi=100)
        return True
    except (OSError, SkiptrainError) as exc:
        warn(f"the confusion matrix was not written: {getattr(exc, 'message', None) or exc}")
        return False
    finally:
        plt.close(fig)
