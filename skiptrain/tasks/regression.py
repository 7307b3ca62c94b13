"""Regression: values to fit; mean squared error is both the loss and the reported metric."""
from __future__ import annotations

from typing import Any

from .base import Metrics, Task, register


class RegressionMetrics(Metrics):
    def __init__(self):
        self.loss_sum: Any = 0.0
        self.samples = 0

    def update(self, output, target) -> None:
        from torch.nn import functional as F

        output = output.float()
        self.loss_sum += F.mse_loss(output, target.float(), reduction="sum") / max(1, output[0].numel())
        self.samples += target.shape[0]

    def summary(self) -> dict[str, Any]:
        return {"loss": float(self.loss_sum) / max(1, self.samples)}


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
