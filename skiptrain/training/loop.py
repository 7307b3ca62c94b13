"""The training loop: one visible loop over epochs and batches, like nanoGPT's train.py.

``train`` runs the same code in one process or in each of torchrun's processes:
DistributedDataParallel averages the gradients, each rank sees its share of every
global batch, and only rank 0 writes the run directory and prints.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .. import __version__, checkpoint, distributed
from ..config import Config
from ..data import check_same_data
from ..data.decode_cache import keep_decoded_in
from ..evaluate import evaluate
from ..outputs import write_text
from ..validation_record import KEEP, write_record
from ..tasks import TASKS, reported
from . import freeze, tensorboard
from .nonfinite import NonFiniteWatch, check_weights
from .optim import base_lr, build_optimizer, grouping, lr_factor, param_groups, set_lr
from .progress import Reporter
from .rundir import RunDir
from ..settings import TrainSettings, parse_settings
from .assemble import assemble
from .setup import select_device, select_precision
from .stopping import Stopper, TrainingStopped, clear_orphans

__all__ = ["Run", "TrainingStopped", "run_training"]


@dataclass
class Run:
    """Everything one training run holds, so each step of the loop is a short function."""

    config: Config
    settings: TrainSettings
    world: distributed.World
    device: torch.device
    plan: Any
    data: Any
    task: str
    model: nn.Module  # the plain model: its state dict is what checkpoints hold
    forward: nn.Module  # what the loop calls: DDP- and/or compile-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    autocast: Callable
    prepare: Callable
    report: Reporter
    run_dir: RunDir | None  # None on ranks other than 0
    limit_batches: int | None = None
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch: int = 0  # batches done in the current epoch (mid-epoch checkpoints)
    partial: tuple[float, int] = (0.0, 0)  # this epoch's loss sum and samples so far
    best: dict | None = None
    skipped: int = 0  # batches skipped for a non-finite loss (on_nan: skip_batch)
    stopper: Stopper = field(default_factory=Stopper)  # SIGINT/SIGTERM: stop at the next safe point
    finite_at: int = 0  # the step at which the weights were last seen finite (before each save)
    data_meta: dict = field(default_factory=dict)
    tensorboard: Any = None  # a SummaryWriter on rank 0 when train.tensorboard is on
    frozen: freeze.Frozen = field(default_factory=freeze.Frozen)  # train.freeze's part, until unfreeze_at_epoch
    grouping: Any = None  # optim.Grouping: train.param_groups and layer_decay, for groups added on unfreezing
    validation: dict | None = None  # this epoch's validation result, recorded beside its checkpoints

    def batches(self, split):
        """This rank's shard of an evaluation split (all of it in one process), at most limit_batches in all."""
        return distributed.shard_batches(self.world, split, self.limit_batches)

    @property
    def steps_per_epoch(self) -> int:
        return min(len(self.data.train), self.limit_batches or len(self.data.train))


def run_training(config: Config, *, state: checkpoint.TrainingState | None = None, run_dir: str | None = None,
                 device: str | None = None, quiet: bool = False, force: bool = False,
                 limit_batches: int | None = None) -> dict[str, Any]:
    """Train ``config`` end to end (continuing ``state`` when given); returns the summary that is also
    written to summary.json. ``skiptrain.train`` (the API) reads sources and checkpoints, then calls this.

    ``limit_batches`` caps the batches of every split per epoch: a smoke test of a config.
    """
    settings = parse_settings(config.train)
    distributed.check_sync_bn(config.train, int(os.environ.get("WORLD_SIZE", "1")), device or settings.device)
    world = distributed.join(device or settings.device)
    run, clean = None, False
    try:
        run = start(config, settings, world, device, state, run_dir, quiet, force, limit_batches)
        with run.stopper.installed(not world.enabled):  # under torchrun the agent owns signals
            for epoch in range(run.epoch + 1, settings.epochs + 1):
                row = train_epoch(run, epoch)
                with run.stopper.saving():
                    save(run, row)
                if run.stopper.signum is not None:  # it came during validation or the save
                    _stopped(run)
        summary = finish(run)
        clean = True
        return summary
    except RuntimeError as error:
        raise distributed.peer_lost(world, error) from None
    finally:
        if run is not None:
            run.forward = run.model  # the DDP wrapper must go before its process group does
            tensorboard.close(run.tensorboard)
        del run
        distributed.leave(world, clean)


def start(config: Config, settings: TrainSettings, world: distributed.World, device: str | None,
          state: checkpoint.TrainingState | None,
          run_dir: str | None, quiet: bool, force: bool, limit_batches: int | None) -> Run:
    tensorboard.require(settings)
    dev = select_device(device or settings.device)
    if world.enabled and dev.type == "cuda":
        dev = torch.device("cuda", world.local_rank)
    built = assemble(config, settings, dev, rank=world.rank, world_size=world.world_size, init=state is None)
    plan, data, task, model = built.plan, built.data, built.task, built.model
    if settings.sync_bn and world.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    autocast_dtype, use_scaler = select_precision(settings.precision, dev)
    channels_last = (settings.channels_last is True or (settings.channels_last == "auto" and dev.type == "cuda")) \
        and len(plan.graph.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    frozen = freeze.apply(model, plan, settings, config.train)  # patterns checked before anything is written
    groups = grouping(model, plan, settings, config.train)
    optimizer = build_optimizer(model, settings.optimizer, groups)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)
    forward = wrap(model, settings, world, dev)

    def autocast():
        return torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    run = Run(config, settings, world, dev, plan, data, task, model, forward, optimizer, scaler,
              built.loss_fn, autocast, prepare, Reporter(quiet, enabled=world.is_main), None,
              limit_batches, frozen=frozen, grouping=groups)
    run.data_meta = {"dataset": data.name, "task": task, "num_classes": data.num_classes,
                     "class_names": data.class_names, "mean": data.mean, "std": data.std,
                     "input_shape": list(data.input_shape), **data.meta}
    if state is not None:
        check_same_data(state.data, data, state.path)  # text: the same tokenizer and text, or nothing resumes
        if frozen.active and freeze.due(settings, state.epoch + (1 if state.batch else 0)):
            unfreeze(run, state.epoch + 1)  # the checkpoint's optimizer already holds the released groups
        state.restore(model, optimizer, scaler)
        run.epoch, run.step, run.best = state.epoch, state.step, state.best
        run.batch, run.partial = state.batch, tuple(state.partial)
        run.finite_at = run.step
    if world.is_main:
        run.run_dir = RunDir.open(settings.out_dir, plan.graph.name, run_dir, force,
                                  resumed_from=None if state is None else state.path)
        keep_decoded_in(data, run.run_dir.path)  # image folders over the memory budget keep their samples there
        for orphan in clear_orphans(run.run_dir.checkpoints):
            run.report.info(f"removed {orphan.name}, a checkpoint write that a kill cut short")
        if state is not None:
            run.run_dir.truncate_history(run.epoch)
        run.run_dir.write_config(config.to_dict())
        for name, text in data.run_files.items():  # the data's own files (text: tokenizer.json), atomically
            write_text(run.run_dir.path / name, text, option=str(run.run_dir.path / name))
        run.tensorboard = tensorboard.open_writer(run)
        run.report.info(f"run directory: {run.run_dir.path}")
    precision = str(autocast_dtype).removeprefix("torch.") if autocast_dtype else "fp32"
    processes = f" x {world.world_size} processes" if world.enabled else ""
    if world.enabled and dev.type == "cpu":  # distributed.share_cores: what each process may use
        processes += f" of {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}"
    run.report.info(f"model {plan.graph.name}: {plan.params:,} parameters; data {data.name}: "
                    f"{data.train.num_samples} train samples; device {dev}{processes}; precision {precision}")
    if built.transfer is not None and world.is_main:  # train.init seeded this new run
        run.run_dir.write_transfer(built.transfer.to_json())
        for line in built.transfer.lines():
            run.report.info(line)
    if frozen.active:
        run.report.info(frozen.describe(settings.unfreeze_at_epoch))
    if groups is not None:
        run.report.info(groups.describe())
    return run


def wrap(model: nn.Module, settings: TrainSettings, world: distributed.World, dev: torch.device) -> nn.Module:
    """What the loop calls: DDP (which registers the parameters that train when it is built) and/or compile."""
    forward: nn.Module = model
    if world.enabled:
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if settings.compile:
        forward = torch.compile(forward, mode=None if settings.compile is True else settings.compile)
    return forward


def unfreeze(run: Run, epoch: int) -> None:
    """train.unfreeze_at_epoch: the frozen part trains from here on, in optimizer groups added after the
    others in a fixed order (a resumed run adds the same ones before loading the optimizer's state)."""
    released = run.frozen.release(run.model)
    for group in param_groups(released, run.settings.optimizer, run.grouping):
        run.optimizer.add_param_group(group)
    if run.forward is not run.model:
        run.forward = run.model  # the old wrapper goes first: DDP knows only the parameters it was built with
        run.forward = wrap(run.model, run.settings, run.world, run.device)
    run.report.info(f"unfrozen: {len(released)} tensors train from epoch {epoch} on")


def train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One pass over the training split (from where a mid-epoch checkpoint left it), then validation."""
    settings, model, optimizer, scaler = run.settings, run.model, run.optimizer, run.scaler
    if run.frozen.active and freeze.due(settings, epoch):
        unfreeze(run, epoch)
    base = base_lr(settings.optimizer)
    model.train()  # frozen norms stay in eval mode: freeze.py's hooks
    run.report.start_epoch(epoch, settings.epochs, run.steps_per_epoch)
    started = time.perf_counter()
    loss_sum = torch.tensor(run.partial[0], device=run.device)
    seen, first = run.partial[1], run.batch
    resumed = seen
    lr = optimizer.param_groups[0]["lr"]
    batches = itertools.islice(run.data.train.epoch(epoch, start=first), max(0, run.steps_per_epoch - first))
    watch = NonFiniteWatch(run, epoch, loss_sum)
    shown = 0.0
    for x, y in batches:
        factor = lr_factor(run.step, run.steps_per_epoch, settings.epochs, settings.scheduler, base)
        lr = set_lr(optimizer, factor, base)
        with run.autocast():
            loss = run.loss_fn(run.forward(run.prepare(x)), y)
        if watch.skip(loss):
            continue
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if settings.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        run.step += 1
        run.batch += 1
        if distributed.FAULT:
            distributed.fault_point(run.world, run.step)
        loss_sum.add_(loss.detach(), alpha=x.shape[0])
        watch.stepped()
        seen += x.shape[0]
        if run.report.live and time.perf_counter() - shown > 0.2:  # .item() waits for the GPU: not every step
            shown = time.perf_counter()
            run.report.step(loss.item(), (seen - resumed) / (shown - started), run.batch)
        if run.stopper.signum is not None or \
                (settings.checkpoint_every_steps and run.step % settings.checkpoint_every_steps == 0):
            watch.check()  # never checkpoint weights that a non-finite loss already reached
            run.partial = (loss_sum.item(), seen)
            save_checkpoint(run, best=False)
            if run.stopper.signum is not None:
                _stopped(run)
    watch.end()
    loss_sum, count = distributed.all_sum(run.world, loss_sum, torch.tensor(float(seen), device=run.device))
    seconds = time.perf_counter() - started
    train_loss = (loss_sum / count.clamp(min=1)).item()
    run.epoch, run.batch, run.partial = epoch, 0, (0.0, 0)
    row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
    if run.data.val is not None:  # every rank measures its shard; each gets the whole split's metrics
        if run.world.enabled:  # rank 0's norm statistics (what its checkpoint saves) on every rank, as DDP's
            for buffer in model.buffers():  # next forward would: the figures are those of the checkpoint
                torch.distributed.broadcast(buffer, 0)
        val = evaluate(model, run.batches(run.data.val), run.task, run.data.num_classes, run.autocast, run.prepare,
                       run.world, keep_worst=KEEP)
        run.validation = val
        row["val_loss"] = val["loss"]
        row.update({f"val_{key}": val[key] for key in (TASKS.get(run.task).headline,) if key in val})
    trained = count.item() - resumed * run.world.world_size  # samples this process run actually trained on
    row.update(lr=lr, seconds=seconds, samples_per_s=trained / max(seconds, 1e-9))
    if run.skipped:
        row["skipped_batches"] = run.skipped
    return row


def _stopped(run: Run) -> None:
    """Called right after a checkpoint was written, when a signal asked to stop."""
    signum = run.stopper.signum
    where = run.run_dir.path if run.run_dir else "the run directory"
    at = f"epoch {run.epoch + 1}, batch {run.batch}" if run.batch else f"end of epoch {run.epoch}"
    raise TrainingStopped(signum, f"{signal.Signals(signum).name} received: stopped after step {run.step} ({at}); "
                                  "checkpoint saved", f"resume with: skiptrain train --resume {where}")


def save(run: Run, row: dict[str, Any]) -> None:
    """Metrics first, then checkpoints (atomically): a kill between them repeats the epoch, never skips it."""
    if not run.world.is_main:
        return
    check_weights(run, run.epoch)  # before the epoch's row too: a refused epoch leaves no trace
    run.run_dir.append_metrics(row)
    tensorboard.log(run.tensorboard, row)
    run.report.end_epoch(row)
    task = TASKS.get(run.task)
    key = task.best_metric(row)
    score = row.get(key) if key else None
    better = score is not None and (run.best is None or (score > run.best["value"] if task.higher_is_better
                                                         else score < run.best["value"]))
    if better:
        run.best = {"metric": key, "value": score, "epoch": run.epoch}
    periodic = run.epoch % run.settings.checkpoint_every == 0 or run.epoch == run.settings.epochs
    if periodic or run.settings.checkpoint_every_steps:
        save_checkpoint(run, best=False)
        _record(run, "last.pt")
    if better:
        save_checkpoint(run, best=True)
        _record(run, "best.pt")


def _record(run: Run, name: str) -> None:
    """This epoch's validation pass beside the checkpoint just written: the report needs no second pass."""
    if run.validation is not None:
        write_record(run.run_dir.checkpoints / name, run.validation, epoch=run.epoch, step=run.step, task=run.task,
                     split="val", total=run.data.val.num_samples)


def save_checkpoint(run: Run, best: bool) -> None:
    """last.pt (keeping the one before as previous.pt) or best.pt: everything to continue exactly."""
    if not run.world.is_main:
        return
    check_weights(run, run.epoch + 1 if run.batch else run.epoch)  # only finite weights are ever saved
    snapshot = checkpoint.TrainingState(
        skiptrain_version=__version__, config=run.config.to_dict(), model=run.model.state_dict(),
        optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
        epoch=run.epoch, step=run.step, batch=run.batch, partial=tuple(run.partial), best=run.best,
        rng=checkpoint.rng_state(), data=run.data_meta, settings=run.settings.model_dump(),
        world_size=run.world.world_size).to_dict()
    with run.stopper.saving():  # a second signal waits for the write; the caller stops right after it
        if best:
            checkpoint.atomic_save(snapshot, run.run_dir.checkpoints / "best.pt")
        else:
            checkpoint.atomic_save(snapshot, run.run_dir.checkpoints / "last.pt", keep_previous=True)


def finish(run: Run) -> dict[str, Any]:
    """Test metrics, summary.json and curves.png (rank 0); the summary on every rank."""
    summary: dict[str, Any] = {"name": run.plan.graph.name, "epochs": run.settings.epochs, "params": run.plan.params,
                               "device": str(run.device), "world_size": run.world.world_size, "best": run.best}
    if run.data.test is not None:  # every rank measures its shard
        test = evaluate(run.model, run.batches(run.data.test), run.task, run.data.num_classes,
                        run.autocast, run.prepare, run.world)
        summary.update({f"test_{k}": v for k, v in test.items() if not isinstance(v, list)})
    if not run.world.is_main:
        return summary
    run.report.finish()
    tensorboard.close(run.tensorboard)
    summary["run_dir"] = str(run.run_dir.path)
    history = run.run_dir.history()
    summary["final_train_loss"] = history[-1]["train_loss"] if history else None
    summary["train_seconds"] = sum(r["seconds"] for r in history)
    run.run_dir.write_summary(summary)
    run.run_dir.plot_curves()
    from ..html_report import after_training  # report.html: the page `skiptrain report` writes

    after_training(run.run_dir.path, run.device)
    line = result_line(summary)
    run.report.info(line or "no test split, so no test result: `skiptrain eval RUN --split val` measures the "
                            "validation split")
    run.report.info(f"run directory: {run.run_dir.path}")
    return summary


def result_line(summary: dict[str, Any]) -> str | None:
    """The run's headline test metric, worded the same with and without --quiet."""
    task = reported(summary, "test_")
    return f"test {task.label}: {summary[f'test_{task.headline}']:.4f}" if task else None
