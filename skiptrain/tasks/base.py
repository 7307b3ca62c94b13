"""Tasks as a registry: each task owns its loss, metrics, headline metric, fit check and predictions.

(Being filled in: see issue 13 item C. Until then only the names and headlines live here.)
"""
from __future__ import annotations

from dataclasses import dataclass

from .registries import Registry


@dataclass(frozen=True)
class Task:
    """What a run's task decides: the metric that picks the best checkpoint, and its direction."""

    name: str
    headline: str  # the metric key reported as the run's result: acc, miou, loss
    higher_is_better: bool


TASKS: Registry[Task] = Registry("task")
for _task in (Task("classification", "acc", True), Task("segmentation", "miou", True),
              Task("regression", "loss", False)):
    TASKS.add(_task.name, _task)
