"""A non-finite loss, caught without making the GPU wait at every step (train.on_nan)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..errors import SkiptrainError

if TYPE_CHECKING:
    from .loop import Run


class NonFiniteWatch:
    """Catches a non-finite loss without waiting for the GPU at every step.

    ``on_nan: skip_batch`` must decide before the optimizer step, so it reads every loss.
    ``on_nan: stop`` reads nothing per step: a non-finite loss makes the epoch's running loss
    sum non-finite for good, and that sum is read every ``every`` steps, before a checkpoint and
    at the end of the epoch. A stopped run may take a few more steps, but never saves them.
    """

    every = 50

    def __init__(self, run: "Run", epoch: int, loss_sum: torch.Tensor):
        self.run, self.epoch, self.loss_sum = run, epoch, loss_sum
        self.good = (run.step, run.batch)  # where the last check found every loss finite
        self.pending = 0

    def skip(self, loss: torch.Tensor) -> bool:
        run = self.run
        if run.settings.on_nan != "skip_batch" or torch.isfinite(loss):
            return False
        if run.skipped < 100:
            run.skipped += 1
            return True
        self._raise(loss.item(), run.step + 1, run.step + 1, run.batch + 1)

    def stepped(self) -> None:
        self.pending += 1
        if self.pending >= self.every:
            self.check()

    def check(self) -> None:
        value, (step, batch) = self.loss_sum.item(), self.good
        self.good, self.pending = (self.run.step, self.run.batch), 0
        if not math.isfinite(value):
            self._raise(value, step + 1, self.run.step, batch + 1)

    def _raise(self, value: float, first: int, last: int, batch: int) -> None:
        run = self.run
        fp16 = run.scaler.is_enabled()
        cause = ("fp16 overflow: use precision bf16 or fp32" if fp16 else
                 f"a learning rate too high (now {run.optimizer.param_groups[0]['lr']:.3g}): lower it, add "
                 "warmup_epochs or train.grad_clip")
        where = run.run_dir.checkpoints if run.run_dir else "the run directory"
        steps = f"step {first}" if first >= last else f"a step from {first} to {last}"
        raise SkiptrainError(f"the loss became {value} at {steps} (epoch {self.epoch}, from batch {batch})", None,
                             f"most likely {cause}; the last good checkpoint is in {where}"
                             + ("; `train.on_nan: skip_batch` skips such batches" if run.settings.on_nan == "stop"
                                else f"; {run.skipped} batches were skipped before this one"))
