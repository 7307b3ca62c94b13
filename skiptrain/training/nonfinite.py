"""Bad numbers: a non-finite loss, caught without making the GPU wait at every step (train.on_nan), and
non-finite weights, which are never checkpointed."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..config import where
from ..errors import Location, SkiptrainError

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
        self.steps = self.skips = 0  # in this epoch (of this process's run)

    def skip(self, loss: torch.Tensor) -> bool:
        """skip_batch: a non-finite loss from finite weights is the batch's fault, so skip it; from
        non-finite weights it is the last update's, and every later batch would be skipped too: stop."""
        run = self.run
        if run.settings.on_nan != "skip_batch" or not any_rank_non_finite(loss):
            return False
        check_weights(run, self.epoch)
        if run.skipped < 100:
            run.skipped += 1
            self.skips += 1
            return True
        self._raise(loss.item(), run.step + 1, run.step + 1, run.batch + 1)

    def stepped(self) -> None:
        self.steps += 1
        self.pending += 1
        if self.pending >= self.every:
            self.check()

    def end(self) -> None:
        """The epoch's last check: its losses, and that it trained at all (skipping every batch is no run)."""
        self.check()
        if self.skips and not self.steps:
            raise SkiptrainError(f"every batch of epoch {self.epoch} was skipped ({self.skips} batches with a "
                                 "non-finite loss): nothing was trained", _lr_location(self.run),
                                 "the weights are finite, so the data or the model make the loss non-finite: "
                                 "check the data's values and normalize settings, and the model's layers "
                                 "(`skiptrain gradflow CONFIG` shows where values blow up)")

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
        raise SkiptrainError(f"the loss became {value} at {steps} (epoch {self.epoch}, from batch {batch})",
                             _lr_location(run),
                             f"most likely {cause}; the last good checkpoint is in {where}"
                             + ("; `train.on_nan: skip_batch` skips such batches" if run.settings.on_nan == "stop"
                                else f"; {run.skipped} batches were skipped before this one"))


def any_rank_non_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is non-finite in any process: every rank skips the batch together, or one rank's
    skipped backward would leave the others waiting in DDP's gradient all-reduce for ever."""
    bad = (~torch.isfinite(loss.detach())).reshape(1).to(torch.float32)
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bool(bad.item())


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The state-dict name of the first parameter or buffer holding a NaN or an infinity, else None.
    One wait for the GPU when every value is finite (the common case: this runs before each save)."""
    tensors = [(name, t) for name, t in model.state_dict().items() if t.is_floating_point()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors])
    if bool(finite.all()):
        return None
    return tensors[int((~finite).nonzero()[0, 0])][0]


def check_weights(run: "Run", epoch: int) -> None:
    """Only finite weights are ever checkpointed: every save calls this first. On finding a NaN or an
    infinity it stops the run, naming the step and the first bad tensor; the last checkpoint stays good."""
    name = first_non_finite(run.model)
    if name is None:
        run.finite_at = run.step
        return
    good, step = run.finite_at, run.step
    steps = f"at step {step}" if good >= step - 1 else f"between step {good + 1} and step {step}"
    where_ = run.run_dir.checkpoints if run.run_dir else "the run directory"
    fp16 = "; under fp16 use precision bf16 or fp32" if run.scaler.is_enabled() else ""
    raise SkiptrainError(f"an optimizer update made the weights non-finite {steps} (epoch {epoch}): "
                         f"`{name}` is the first tensor holding NaN or inf", _lr_location(run),
                         f"lower the learning rate (now {run.optimizer.param_groups[0]['lr']:.3g}), add "
                         f"scheduler warmup_epochs or set train.grad_clip{fp16}; nothing after step {good} was "
                         f"saved: the last good checkpoint is in {where_}")


def _lr_location(run: "Run") -> Location | None:
    """Where the learning rate was written, the first suspect of bad numbers."""
    optimizer = run.config.train.get("optimizer") if isinstance(run.config.train, dict) else None
    return where(optimizer, "lr") if isinstance(optimizer, dict) and "lr" in optimizer \
        else where(run.config.train, "optimizer")
