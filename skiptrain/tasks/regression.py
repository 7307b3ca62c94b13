"""Regression: values to fit; mean squared error is both the loss and the reported metric."""
from __future__ import annotations

from typing import Any

from .base import Metrics, Task, exact_sum, register


class RegressionMetrics(Metrics):
    counts, parts = ("samples",), ("losses",)

    def __init__(self):
        self.losses: list = []  # each batch's squared-error sum
        self.samples = 0

    def update(self, output, target) -> None:
        from torch.nn import functional as F

        output = output.float()
        self.losses.append(F.mse_loss(output, target.float(), reduction="sum") / max(1, output[0].numel()))
        self.samples += target.shape[0]

    def summary(self) -> dict[str, Any]:
        return {"loss": exact_sum(self.losses) / max(1, self.samples)}


@register
class Regression(Task):
    name = "regression"
    has_classes = False
    any_output = True
    default_loss = "mse"

    def metrics(self, num_classes):
        return RegressionMetrics()

    def synthetic_targets(self, count, input_shape, width, generator, location=None):
        import torch

        return torch.randn((count, width), generator=generator)

    def looks_like(self, input_shape, output_shape) -> bool:
        return True
