"""Multi-process training on PyTorch's own engine: torchrun's environment, DDP, a launcher.

skiptrain adds no scheme of its own: ``torchrun`` (or ``skiptrain train --nproc N``,
which calls ``torch.distributed.run``) starts the processes and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; each process joins the group here.
"""
from __future__ import annotations

import enum
import itertools
import os
import sys
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
        store = _restart_store(world)
        if store is None:
            dist.init_process_group("nccl" if use_cuda else "gloo")
        else:
            dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=world.rank,
                                    world_size=world.world_size)
    if not use_cuda:
        share_cores(world)
    return world


def share_cores(world: World) -> int:
    """CPU processes that share a machine share its cores: at most cores / processes-on-this-machine
    threads each. torchrun sets OMP_NUM_THREADS=1 only for --nproc_per_node > 1, so two agents of one
    process each on one machine (``--nnodes 2``) ran 2 x all-cores threads, whose waiting threads took
    the cores from the other process: a tiny model's epoch took 22 s instead of 1 s on 2 cores. Lowers
    the count, never raises it (one process per machine keeps all its cores); returns the threads used."""
    import socket

    here = socket.gethostname()
    local = sum(name == here for name in gather(world, here))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = min(torch.get_num_threads(), max(1, cores // max(1, local)))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def _restart_store(world: World):
    """After a restart, torchrun's agent hands the workers the store it kept from the first attempt
    (``TORCHELASTIC_USE_AGENT_STORE``), which still holds the dead processes' addresses: gloo then connects
    to their ports and fails (pytorch/pytorch#135712). One agent counts restarts for all its workers, so
    a prefix of the count keeps attempts apart; several agents count each on their own, so there the
    store must not be shared (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, which ``--nproc`` sets)."""
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restart == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1:
        from .errors import SkiptrainError

        raise SkiptrainError("torchrun restarted this job of several nodes with the first attempt's store, "
                             "which still holds the failed processes' addresses", None,
                             "start torchrun on every node with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its "
                             "environment (docs/distributed.md)")
    from datetime import timedelta

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world.world_size,
                          is_master=False, timeout=timedelta(minutes=10))
    return dist.PrefixStore(f"skiptrain/attempt{restart}/", store)


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
    """What would fail every process alike, named once before launching (not once per process, among
    torchrun's lines): what ``skiptrain validate`` finds, a global batch that does not split evenly over
    the processes, or more processes than GPUs."""
    from .api import check_config
    from .config import where
    from .data.options import DataOptions
    from .errors import DataError
    from .settings import TrainSettings

    check_config(config)
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


def leave(world: World, clean: bool = True) -> None:
    """A barrier first: without it some ranks died with SIGABRT at exit (platform notes). A rank that
    failed leaves without it: the others may be waiting in another collective (a gradient all-reduce),
    and a barrier there would hang every rank; this one exits, and torchrun stops (or restarts) the rest."""
    if world.enabled and dist.is_initialized() and clean:
        dist.barrier()
        dist.destroy_process_group()


def peer_lost(world: World, error: BaseException) -> BaseException:
    """A collective that failed because another process died (killed, or it raised: its own message is
    already printed) becomes one line instead of a second traceback; anything else stays as it is."""
    text = str(error)
    if not (world.enabled and isinstance(error, RuntimeError) and ("closed by peer" in text or "reset by peer" in text)):
        return error
    from .errors import SkiptrainError

    return SkiptrainError(f"rank {world.rank} lost another process of the group (it failed or was killed)", None,
                          "that process's own message comes first; with --max-restarts torchrun starts the "
                          "group again from the last checkpoint")


def restart_resume(run_dir: str | None, resume: str | None, force: bool) -> tuple[str | None, bool]:
    """``(resume, force)`` for this process. When ``run_dir`` holds a run that this torchrun job started
    (its marker holds ``TORCHELASTIC_RUN_ID``: --standalone's own id, or --rdzv-id), the job was restarted:
    every process continues from the run's last checkpoint, or, when the restart
    (``TORCHELASTIC_RESTART_COUNT`` > 0) came before the first one, starts the run again. A run directory
    of another job is left as asked. Agents count restarts each on its own (one whose workers did not
    fail counts none), so the checkpoint, which every node sees, decides."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_dir is None or not job or job == "none":  # "none": torchrun's default --rdzv-id names no job
        return resume, force
    from pathlib import Path

    from .training.rundir import job_of, resumable

    if job_of(Path(run_dir)) != job:
        return resume, force
    if resumable(Path(run_dir)):  # also on a node whose own agent did not count the restart
        if os.environ.get("RANK", "0") == "0":
            print(f"torchrun restarted the job: every process continues from {run_dir}'s last checkpoint",
                  file=sys.stderr)
        return str(run_dir), False
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    return (None, True) if restarted else (resume, force)  # stopped before its first checkpoint: again


# A test hook: SKIPTRAIN_TEST_FAULT=RANK:STEP:kill|raise:MARKER makes process RANK SIGKILL itself (or raise)
# right after optimizer step STEP, once: only while the file MARKER does not exist (it is created first).
FAULT = os.environ.get("SKIPTRAIN_TEST_FAULT")


def fault_point(world: World, step: int) -> None:
    """Where the test hook fires (called after each optimizer step only when SKIPTRAIN_TEST_FAULT is set)."""
    rank, at, action, marker = FAULT.split(":", 3)
    if world.rank != int(rank) or step != int(at) or os.path.exists(marker):
        return
    open(marker, "w").close()
    if action == "kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    from .errors import SkiptrainError

    raise SkiptrainError(f"a fault injected on rank {world.rank} after step {step} (SKIPTRAIN_TEST_FAULT)")


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


def launch(nproc: int, train_args: list[str], max_restarts: int = 0) -> int:
    """Run ``skiptrain train ARGS`` in ``nproc`` processes on this machine through torch.distributed.run;
    after a failure torchrun restarts them all up to ``max_restarts`` times (see ``restart_resume``)."""
    from torch.distributed import run

    # A restarted group must not meet the previous attempt's addresses in a store the agent keeps: without
    # this, gloo connected to the dead processes' ports after a restart (pytorch/pytorch#135712).
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    args = run.get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={nproc}", f"--max-restarts={max_restarts}", "--module", "skiptrain",
         "train", *train_args])
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
