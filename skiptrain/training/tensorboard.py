"""`train.tensorboard: true`: rank 0 mirrors each epoch's metrics row into RUN_DIR/tensorboard/.

metrics.jsonl stays the source of truth; this is a view of it for TensorBoard, plus the
model graph once. The loop calls `require` and `open_writer` in start, `log` in save and
`close` in finish.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import SkiptrainError, warn


def require(settings) -> None:
    """Before any work: the setting asks for a package that is not installed."""
    if not settings.tensorboard:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as error:
        raise SkiptrainError(f"train.tensorboard needs the tensorboard package ({error})", None,
                             "pip install tensorboard (or skiptrain[tensorboard]), or set train.tensorboard: false")


def open_writer(run) -> Any:
    """A SummaryWriter in RUN_DIR/tensorboard/ on rank 0 (None elsewhere), with the model graph written once."""
    if not run.settings.tensorboard or run.run_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: a resumed run drops the events of epochs it is about to repeat
    writer = SummaryWriter(str(run.run_dir.path / "tensorboard"), purge_step=run.epoch + 1 if run.epoch else None)
    if run.epoch == 0:
        _add_graph(writer, run)
    return writer


def _add_graph(writer, run) -> None:
    """The traced model on a zero batch; a model that cannot be traced only warns."""
    graph = run.plan.graph
    x = torch.zeros(2, *graph.input_shape, dtype=getattr(torch, graph.input_dtype), device=run.device)
    was_training = run.model.training
    run.model.eval()  # batch statistics of a zero batch must not reach the BatchNorm buffers
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings say nothing about the run
            writer.add_graph(run.model, run.prepare(x))
    except Exception as error:  # noqa: BLE001  (tracing is best effort: scalars matter, the graph is a bonus)
        warn(f"train.tensorboard: the model graph could not be traced and is left out "
             f"({type(error).__name__}: {error})")
    finally:
        run.model.train(was_training)


def log(writer, row: dict[str, Any]) -> None:
    """Every numeric value of an epoch's row as a scalar at step = epoch."""
    if writer is None:
        return
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()


def close(writer) -> None:
    if writer is not None:
        writer.close()
