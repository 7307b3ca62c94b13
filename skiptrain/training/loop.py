"""The training loop: one visible loop over epochs and batches, like nanoGPT's train.py."""
from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__, checkpoint
from ..config import Config, load_config, where
from ..errors import DataError, SkiptrainError
from ..evaluate import evaluate
from ..module import build_module
from ..shapes import infer
from ..spec import expand
from .optim import build_optimizer, lr_factor, set_lr
from .progress import Reporter
from .rundir import RunDir
from .settings import TrainSettings, parse_settings


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SkiptrainError(f"unknown device `{name}`", None, "use auto, cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SkiptrainError(f"device `{name}` asked for, but this machine has no CUDA GPU", None,
                             "use --device cpu (or device: auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SkiptrainError(f"device `{name}` does not exist: {torch.cuda.device_count()} GPU(s)", None)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SkiptrainError("device `mps` asked for, but MPS is not available", None, "use --device cpu")
    return device


def select_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a gradient scaler is needed)."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return None, False
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def make_loss(task: str, cfg: dict[str, Any]) -> nn.Module:
    name = cfg.get("name", "auto")
    if name == "mse" or (name == "auto" and task == "regression"):
        return nn.MSELoss()
    return nn.CrossEntropyLoss(label_smoothing=float(cfg.get("label_smoothing", 0.0)),
                               ignore_index=int(cfg.get("ignore_index", -100)))


def check_fit(config: Config, plan, data, task: str) -> None:
    """The model's input and output must match the dataset before any training starts."""
    model_in, model_out = tuple(plan.graph.input_shape), tuple(plan.output_shape)
    if tuple(data.input_shape) != model_in:
        raise DataError(f"the model takes samples of shape {list(model_in)}, but `{data.name}` gives "
                        f"{list(data.input_shape)}", where(config.model, "input"),
                        f"set `model.input: {list(data.input_shape)}`")
    if task == "classification" and data.num_classes and model_out != (data.num_classes,):
        raise DataError(f"the model outputs {list(model_out)}, but `{data.name}` has {data.num_classes} classes",
                        plan.graph.nodes[plan.graph.output].loc,
                        f"make the last layer output {data.num_classes} values (e.g. `out_features: {data.num_classes}`)")
    if task == "segmentation" and data.num_classes and model_out != (data.num_classes, *data.input_shape[1:]):
        raise DataError(f"the model outputs {list(model_out)}, but segmentation of `{data.name}` needs "
                        f"{[data.num_classes, *data.input_shape[1:]]}", plan.graph.nodes[plan.graph.output].loc,
                        f"end with a conv of `out_channels: {data.num_classes}` at the input resolution")


def train(config: Config, *, run_dir: str | None = None, epochs: int | None = None, device: str | None = None,
          resume: str | None = None, quiet: bool = False, force: bool = False,
          limit_batches: int | None = None) -> dict[str, Any]:
    """Train a config end to end; returns the summary that is also written to summary.json.

    ``limit_batches`` caps the batches of every split per epoch: a smoke test of a config.
    """
    from ..data import load_data

    state = checkpoint.read(resume) if resume else None
    if config is None:
        config = load_config(state["config"])
    if epochs is not None:
        config.train["epochs"] = epochs
    settings = parse_settings(config.train)
    dev = select_device(device or settings.device)
    plan = infer(expand(config.model))
    data = load_data(config.data, input_shape=plan.graph.input_shape, input_dtype=plan.graph.input_dtype,
                     task=settings.task, device=dev, seed=settings.seed)
    task = settings.task or data.task
    check_fit(config, plan, data, task)
    seed_everything(settings.seed, settings.deterministic)
    model = build_module(plan, device=dev)
    autocast_dtype, use_scaler = select_precision(settings.precision, dev)
    channels_last = (settings.channels_last is True or (settings.channels_last == "auto" and dev.type == "cuda")) \
        and len(plan.graph.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, settings.optimizer)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)
    loss_fn = make_loss(task, settings.loss)
    if state is not None:
        run = RunDir(run_dir or _run_dir_of(state))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        start_epoch, step, best = state["epoch"], state["step"], state.get("best")
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        run.truncate_history(start_epoch)
    else:
        run = RunDir.create(settings.out_dir, plan.graph.name, run_dir, force)
        start_epoch, step, best = 0, 0, None
    run.write_config(config.to_dict())
    report = Reporter(quiet)
    report.info(f"run directory: {run.path}")
    report.info(f"model {plan.graph.name}: {plan.params:,} parameters; data {data.name}: "
                f"{data.train.num_samples} train samples; device {dev}; "
                f"precision {str(autocast_dtype).removeprefix('torch.') if autocast_dtype else 'fp32'}")
    forward = torch.compile(model) if settings.compile else model

    def autocast():
        return torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    steps_per_epoch = min(len(data.train), limit_batches or len(data.train))

    def batches(split, epoch: int):
        return itertools.islice(split.epoch(epoch), limit_batches)

    base_lr = optimizer.param_groups[0]["base_lr"]
    metric_key = {"classification": "val_acc", "segmentation": "val_miou"}.get(task, "val_loss")
    data_meta = {"dataset": data.name, "task": task, "num_classes": data.num_classes,
                 "class_names": data.class_names, "mean": data.mean, "std": data.std,
                 "input_shape": list(data.input_shape)}
    for epoch in range(start_epoch + 1, settings.epochs + 1):
        model.train()
        report.start_epoch(epoch, settings.epochs, steps_per_epoch)
        started, loss_sum, seen = time.perf_counter(), torch.zeros((), device=dev), 0
        for x, y in batches(data.train, epoch):
            lr = set_lr(optimizer, lr_factor(step, steps_per_epoch, settings.epochs, settings.scheduler, base_lr))
            with autocast():
                loss = loss_fn(forward(prepare(x)), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if settings.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += loss.detach() * x.shape[0]
            seen += x.shape[0]
            if report.live:
                report.step(loss.item(), seen / (time.perf_counter() - started))
        train_loss = (loss_sum / max(1, seen)).item()
        seconds = time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise SkiptrainError(f"the training loss became {train_loss} in epoch {epoch} (step {step})", None,
                                 "lower the learning rate, add train.grad_clip, or use fp32/bf16 instead of fp16; "
                                 f"the last good checkpoint is in {run.checkpoints}")
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
        if data.val is not None:
            val = evaluate(model, batches(data.val, 0), task, data.num_classes, autocast, prepare)
            row["val_loss"] = val["loss"]
            for key in ("acc", "miou"):
                if key in val:
                    row[f"val_{key}"] = val[key]
        row.update(lr=lr, seconds=seconds, samples_per_s=seen / max(seconds, 1e-9))
        run.append_metrics(row)
        report.end_epoch(row)
        score = row.get(metric_key, row["train_loss"] if metric_key == "val_loss" and "val_loss" not in row else None)
        better = score is not None and (best is None or (score < best["value"] if metric_key == "val_loss"
                                                          else score > best["value"]))
        if better:
            best = {"metric": metric_key, "value": score, "epoch": epoch}
        if better or epoch % settings.checkpoint_every == 0 or epoch == settings.epochs:
            snapshot = {"format": checkpoint.FORMAT, "skiptrain_version": __version__, "config": config.to_dict(),
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict() if use_scaler else None, "epoch": epoch, "step": step,
                        "best": best, "rng": checkpoint.rng_state(), "data": data_meta,
                        "settings": _plain_settings(settings)}
            if epoch % settings.checkpoint_every == 0 or epoch == settings.epochs:
                checkpoint.atomic_save(snapshot, run.checkpoints / "last.pt")
            if better:
                checkpoint.atomic_save(snapshot, run.checkpoints / "best.pt")
    report.finish()
    summary: dict[str, Any] = {"name": plan.graph.name, "run_dir": str(run.path), "epochs": settings.epochs,
                               "params": plan.params, "device": str(dev), "best": best}
    if data.test is not None:
        test = evaluate(model, batches(data.test, 0), task, data.num_classes, autocast, prepare)
        summary.update({f"test_{k}": v for k, v in test.items() if not isinstance(v, list)})
    history = run.history()
    summary["final_train_loss"] = history[-1]["train_loss"] if history else None
    summary["train_seconds"] = sum(r["seconds"] for r in history)
    run.write_summary(summary)
    run.plot_curves()
    for key, label in (("test_acc", "test accuracy"), ("test_miou", "test mean IoU"), ("test_loss", "test loss")):
        if key in summary:
            report.info(f"{label}: {summary[key]:.4f}")
            break
    report.info(f"run directory: {run.path}")
    return summary


def _run_dir_of(state: dict) -> str:
    from pathlib import Path

    return str(Path(state["path"]).parent.parent)


def _plain_settings(settings: TrainSettings) -> dict:
    return {k: v for k, v in asdict(settings).items()}
