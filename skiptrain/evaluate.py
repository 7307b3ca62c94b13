"""A model measured on a split: each task's metrics (see ``skiptrain.tasks``), and a confusion-matrix plot."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from .distributed import World, gather
from .tasks import Task, get_task


def evaluate(model: nn.Module, batches: Iterable, task: str | Task, num_classes: int | None,
             autocast=None, prepare=None, world: World | None = None) -> dict[str, Any]:
    """Run ``model`` in eval mode over every batch of a split; returns the task's metric summary
    (``loss`` always; then ``acc``, ``top5``, ``per_class_acc`` or ``miou``, ``pixel_acc``,
    ``per_class_iou``, and a ``confusion`` matrix for tasks with classes).

    With a ``world`` of several processes, ``batches`` is this rank's shard (``distributed.shard``) and
    every rank returns the metrics of the whole split: the task's sums are gathered and added up."""
    metrics = get_task(task).metrics(num_classes)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for x, y in batches:
            if prepare is not None:
                x = prepare(x)
            if autocast is not None:
                with autocast():
                    out = model(x)
            else:
                out = model(x)
            metrics.update(out, y)
    model.train(was_training)
    if world is not None and world.enabled:
        metrics.merge(gather(world, metrics.state()))
    return metrics.summary()


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
