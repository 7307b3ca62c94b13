"""What a training run and a gradient-flow measurement both start from: plan, data, model and loss.

One order for both: plan the model on meta tensors, refuse what cannot fit the device,
read ``train.init``'s weights (a bad file stops here, before the data is read), load the data,
check that model and data fit the task, seed, allocate the weights, then load the init weights
into them by name (``transfer.py``). A resumed run passes ``init=False``: its checkpoint
restores the weights, so ``train.init`` only ever seeds a new run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Config, where
from ..api import check_model
from ..module import SkipNet, build_module
from ..shapes import ModelPlan
from .. import transfer
from .setup import check_fit, check_memory, make_loss, seed_everything


@dataclass
class Assembly:
    plan: ModelPlan
    data: Any  # data.DataBundle
    task: str
    model: SkipNet
    loss_fn: nn.Module
    transfer: Any = None  # transfer.Transfer: what train.init loaded, for the report and transfer.json


def assemble(config: Config, settings: Any, device: torch.device, *, rank: int = 0, world_size: int = 1,
             deterministic: bool | None = None, init: bool = True) -> Assembly:
    """The model (weights on ``device``), its data and its loss, checked against each other."""
    from ..data import load_data

    plan = check_model(config)
    check_memory(plan.params, settings.optimizer, device, plan)
    weights = None
    if init and settings.init is not None:
        weights = transfer.read(settings.init.path, where(config.train, "init"))
    data = load_data(config.data, input_shape=plan.graph.input_shape, input_dtype=plan.graph.input_dtype,
                     task=settings.task, device=device, seed=settings.seed, rank=rank, world_size=world_size,
                     ignore_index=settings.loss.get("ignore_index"))
    task = settings.task or data.task
    check_fit(config, plan, data, task)
    seed_everything(settings.seed, settings.deterministic if deterministic is None else deterministic)
    model = build_module(plan, device=device)
    report = None if weights is None else transfer.load_into(model, weights, settings.init, where(config.train, "init"))
    return Assembly(plan, data, task, model, make_loss(task, settings.loss), report)
