"""Multi-process training on PyTorch's own engine: torchrun's environment, DDP, a launcher.

skiptrain adds no scheme of its own: ``torchrun`` (or ``skiptrain train --nproc N``,
which calls ``torch.distributed.run``) starts the processes and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; each process joins the group here.
"""
from __future__ import annotations

import enum
import itertools
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join(device: str) -> World:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); a lone process is world 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and device != "cpu" and not device.startswith("mps")
    if use_cuda:
        check_gpus(world.local_rank + 1, device)
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world


def check_gpus(processes: int, device: str) -> None:
    """One process per GPU: more processes than GPUs on CUDA is a mistake to name before launching."""
    if device == "cpu" or device.startswith("mps") or not torch.cuda.is_available():
        return
    gpus = torch.cuda.device_count()
    if processes > gpus:
        from .errors import SkiptrainError

        raise SkiptrainError(f"{processes} processes need {processes} GPUs, but this machine has {gpus} "
                             "(one process per GPU)", None,
                             f"use --nproc {gpus}, or --device cpu to train in processes on the CPU (gloo)")


def check_launch(config, processes: int, device: str | None) -> None:
    """What would fail every process alike, named once before launching: a global batch that does
    not split evenly over the processes, or more processes than GPUs."""
    from .config import where
    from .data.options import DataOptions
    from .errors import DataError
    from .settings import TrainSettings

    batch = config.data.get("batch_size", DataOptions.model_fields["batch_size"].default)
    if isinstance(batch, int) and batch % processes:
        raise DataError(f"batch_size {batch} does not split evenly over {processes} processes",
                        where(config.data, "batch_size"),
                        f"use a multiple of {processes}: batch_size is the global batch")
    device = device or str(config.train.get("device", TrainSettings.model_fields["device"].default))
    check_gpus(processes, device)
    check_sync_bn(config.train, processes, device)


def check_sync_bn(train, processes: int, device: str) -> None:
    """``train.sync_bn`` needs CUDA: gloo has no SyncBatchNorm, and every CPU process would fail alike
    in its first forward. Refused before launching (``--nproc``) or joining (torchrun); one process
    has nothing to synchronise, so there it changes nothing."""
    if processes <= 1 or not (isinstance(train, dict) and train.get("sync_bn") is True):
        return
    from .config import where
    from .errors import ConfigError
    from .training.setup import select_device

    if select_device(device).type != "cuda":
        raise ConfigError(f"train.sync_bn needs CUDA GPUs, but these {processes} processes train on the "
                          f"{select_device(device).type} (gloo has no SyncBatchNorm)", where(train, "sync_bn"),
                          "set sync_bn: false (on the CPU, batch-norm statistics are per process, over "
                          "batch_size / processes samples), or train on CUDA GPUs")


def leave(world: World) -> None:
    """A barrier first: without it some ranks died with SIGABRT at exit (platform notes)."""
    if world.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(world: World, batches: int) -> range:
    """This rank's part of an evaluation split of ``batches`` batches: a contiguous run of whole batches,
    disjoint from the other ranks' and together all of them, none padded or repeated. Whole batches of
    the one-process split keep every batch's numbers (and so the merged metrics) exactly the same."""
    return range(world.rank * batches // world.world_size, (world.rank + 1) * batches // world.world_size)


def shard_batches(world: World, split, limit: int | None = None) -> Iterator:
    """This rank's shard of an evaluation split's batches (``split``: a data Batches object), of its
    first ``limit`` batches when given: what ``evaluate(..., world=world)`` takes."""
    mine = shard(world, min(len(split), limit or len(split)))
    return itertools.islice(split.epoch(0, start=mine.start), len(mine))


def gather(world: World, value: Any) -> list[Any]:
    """Every rank's ``value`` (small picklable sums), in rank order, on every rank."""
    if not world.enabled:
        return [value]
    values: list[Any] = [None] * world.world_size
    dist.all_gather_object(values, value)
    return values


def all_sum(world: World, *values: torch.Tensor) -> list[torch.Tensor]:
    if world.enabled:
        for value in values:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return list(values)


def launch(nproc: int, train_args: list[str]) -> int:
    """Run ``skiptrain train ARGS`` in ``nproc`` processes on this machine through torch.distributed.run."""
    from torch.distributed import run

    args = run.get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={nproc}", "--module", "skiptrain", "train", *train_args])
    try:
        run.run(args)
    except Exception as exc:  # ChildFailedError: the failing rank has printed its own message
        failures = getattr(exc, "failures", {})
        codes = {f.exitcode for f in failures.values()} if failures else {1}
        return max(codes) if all(c > 0 for c in codes) else 1
    return 0


def relaunch_args(ctx, leave_out: tuple[str, ...] = ()) -> list[str]:
    """The arguments of the command in ``ctx`` again, from what Click parsed (each option that differs from
    its default): what every process launched by ``--nproc`` runs, so no option can be forgotten."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in leave_out or value is None or (param.multiple and not value) or value == param.default:
            continue
        if param.param_type_name == "argument":
            args[:0] = [str(v) for v in value] if param.multiple else [str(value)]
        elif getattr(param, "is_flag", False):
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            for item in value if param.multiple else [value]:
                args += [param.opts[0], str(item.value if isinstance(item, enum.Enum) else item)]
    return args
