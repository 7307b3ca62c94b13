"""Tasks as a registry: each task owns its loss, metrics, headline metric, fit check and predictions.

    from skiptrain.tasks import TASKS
    task = TASKS.get("segmentation")
    task.loss({"name": "auto"}), task.metrics(num_classes=3), task.headline  # "miou"

One file per task (``classification.py``, ``segmentation.py``, ``regression.py``); a new
task is a ``Task`` subclass decorated with ``@register`` in a file of its own.
"""
from __future__ import annotations

from .base import (LOSSES, TASKS, ConfusionMetrics, Metrics, Task, answers_table, class_name, get_task, guess,
                   headlines, register, reported)
from . import classification, language_model, regression, segmentation  # noqa: F401,E402  (register on import)

DEFAULT = "classification"  # the task of a run whose config and dataset name none

__all__ = ["TASKS", "Task", "Metrics", "ConfusionMetrics", "LOSSES", "DEFAULT", "register", "get_task", "guess",
           "headlines", "reported", "answers_table", "class_name"]
