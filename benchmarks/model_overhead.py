"""How much does building a network from YAML cost at run time?

Times the model that ``skiptrain.build_model`` makes (a ``SkipNet`` whose forward is generated
straight-line code) against the same network written by hand in plain PyTorch:

* ResNet-20 for CIFAR-10 (``../shared/examples/resnet20_cifar10.yaml``, relative to the repository
  root) against a hand-written ResNet-20 (benchmarks/handwritten.py) in the style of torchvision's
  ``BasicBlock``, with a 1x1-conv + BN ``downsample`` in the two stride-2 blocks;
* ResNet-18 for ImageNet (configs/imagenet/resnet18.yaml, skipped if missing) against
  ``torchvision.models.resnet18(weights=None)``;
* from the zoo (configs/zoo/), MobileNetV3-Small, ConvNeXt-Tiny and ViT-B/16 against torchvision's
  own modules, whose state dicts they load as they are.

Both models of a pair get the same weights (the hand-written model's state dict is mapped onto
skiptrain's names) and are checked to compute the same outputs before anything is timed.

Measurements: forward at batch 1 in eval mode under ``torch.inference_mode()``, and
forward + backward (cross-entropy loss) in train mode at batch 128 (ResNet-20, 32x32),
batch 16 (ResNet-18, MobileNetV3-Small, 224x224) or batch 4 (ConvNeXt-Tiny, ViT-B/16). The two implementations are interleaved: each round times
both, in an order that alternates from round to round, for the same number of iterations; the
reported time is the median over rounds of the mean time per iteration, and the ratio is the
median over rounds of skiptrain / hand-written within a round (above 1 means skiptrain is slower).

    python benchmarks/model_overhead.py            # full run (about a few minutes on 2 CPU cores)
    python benchmarks/model_overhead.py --quick    # smoke run for CI: a few seconds
    python benchmarks/model_overhead.py --threads 1  # on a shared machine: see below

Run it on an otherwise idle machine. When other processes compete for the cores, torch's
intra-op threads (one per core by default) get descheduled at their synchronisation points
and times swing by whole multiples; ``--threads 1`` is far less sensitive to that. The load
average is printed with the results so a noisy run can be recognised.

Other scripts can ``from model_overhead import main`` and call ``main(quick)``, which returns
one dict per measurement (it sets torch's thread count for the run and restores it after).
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from handwritten import resnet18_key, resnet20, resnet20_key  # benchmarks/ is on sys.path (a script, or run.py)

ROOT = Path(__file__).resolve().parents[1]
SHARED_EXAMPLES = ROOT.parent / "shared" / "examples"  # beside the checkout, as tests/conftest.py has it
RESNET20_CONFIG = SHARED_EXAMPLES / "resnet20_cifar10.yaml"
RESNET18_CONFIG = ROOT / "configs" / "imagenet" / "resnet18.yaml"
ZOO = ROOT / "configs" / "zoo"
ZOO_MODELS = ("mobilenet_v3_small", "convnext_tiny", "vit_b_16")  # against torchvision.models.<name>
RESNET20_PARAMS = 272_474

SEED = 0


# --------------------------------------------------------------------------- model pairs


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_batchnorms(model: nn.Module, gen: torch.Generator) -> None:
    """Fresh BNs are identities in eval mode; give them statistics so the equivalence check bites."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(1.0 + 0.1 * torch.randn(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))


def tie_weights(hand: nn.Module, built: nn.Module, rename: Callable[[str], str], input_shape: tuple) -> None:
    """Load ``hand``'s weights into ``built`` under mapped names (a strict bijection) and check
    both compute the same outputs."""
    randomize_batchnorms(hand, torch.Generator().manual_seed(SEED + 1))
    mapped = {rename(k): v for k, v in hand.state_dict().items()}
    assert len(mapped) == len(hand.state_dict()), "two hand-written keys map to one skiptrain key"
    built.load_state_dict(mapped, strict=True)
    hand.eval()
    built.eval()
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(SEED + 2))
    with torch.inference_mode():
        torch.testing.assert_close(built(x), hand(x), atol=1e-4, rtol=1e-4)


def find_resnet20_config() -> Path:
    if not RESNET20_CONFIG.is_file():
        raise FileNotFoundError(f"{RESNET20_CONFIG} not found: the shared examples belong in ../shared/examples, "
                                "beside this repository")
    return RESNET20_CONFIG


def make_resnet20() -> tuple[nn.Module, nn.Module]:
    import skiptrain

    hand = resnet20()
    built = skiptrain.build_model(find_resnet20_config())
    assert n_params(hand) == n_params(built) == RESNET20_PARAMS, (n_params(hand), n_params(built))
    tie_weights(hand, built, resnet20_key, (3, 32, 32))
    return hand, built


def make_resnet18() -> tuple[nn.Module, nn.Module]:
    import skiptrain
    import torchvision

    hand = torchvision.models.resnet18(weights=None)
    built = skiptrain.build_model(RESNET18_CONFIG)
    assert n_params(hand) == n_params(built), (n_params(hand), n_params(built))
    tie_weights(hand, built, resnet18_key, (3, 224, 224))
    return hand, built


def make_zoo(name: str) -> tuple[nn.Module, nn.Module]:
    """torchvision's model and the zoo config's, with torchvision's (randomized) weights in both."""
    import skiptrain
    import torchvision

    hand = getattr(torchvision.models, name)(weights=None)
    built = skiptrain.build_model(ZOO / f"{name}.yaml")
    assert n_params(hand) == n_params(built), (n_params(hand), n_params(built))
    tie_weights(hand, built, lambda key: key, (3, 224, 224))
    return hand, built


# --------------------------------------------------------------------------- timing


def forward_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode():
            model(x)
    return step


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(x), y).backward()
    return step


def no_sync() -> None:
    pass


def device_sync(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work, so that a timing covers it (a CPU queues nothing)."""
    return torch.cuda.synchronize if device.type == "cuda" else no_sync


def time_chunk(step: Callable[[], None], iters: int, sync: Callable[[], None] = no_sync) -> float:
    """Mean seconds per call of ``step`` over ``iters`` calls, with the garbage collector off.

    (``main`` freezes the objects that exist before timing starts, so the ``gc.collect`` here
    is cheap; without that, torch's imports make each full collection take ~0.3 s.)
    """
    gc.collect()
    gc.disable()
    try:
        sync()  # on a GPU: time the work, not how fast it is queued
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        return (time.perf_counter() - start) / iters
    finally:
        gc.enable()


def interleaved(steps: dict[str, Callable[[], None]], rounds: int, warmup: int,
                target_s: float, max_iters: int, sync: Callable[[], None] = no_sync) -> tuple[dict[str, list[float]], int]:
    """Per-round mean seconds per iteration for each step, the steps alternating in order.

    After ``warmup`` calls of each, the iteration count is chosen so that one chunk takes about
    ``target_s`` for the slower step, and the same count is used for both.
    """
    names = list(steps)
    probe = {}
    for name in names:
        for _ in range(warmup):
            steps[name]()
        probe[name] = time_chunk(steps[name], 1, sync)
    iters = max(1, min(max_iters, round(target_s / max(probe.values()))))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(time_chunk(steps[name], iters, sync))
    return times, iters


def measure(model_name: str, hand: nn.Module, built: nn.Module, input_shape: tuple, num_classes: int,
            kind: str, batch: int, rounds: int, warmup: int, target_s: float, max_iters: int,
            device: torch.device = torch.device("cpu")) -> dict:
    gen = torch.Generator().manual_seed(SEED + 3)
    x = torch.randn(batch, *input_shape, generator=gen).to(device)
    sync = device_sync(device)
    if kind == "forward":
        hand.eval()
        built.eval()
        steps = {"hand": forward_step(hand, x), "skiptrain": forward_step(built, x)}
        label = f"forward, eval, inference_mode, batch {batch}"
    else:
        y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
        hand.train()
        built.train()
        steps = {"hand": train_step(hand, x, y), "skiptrain": train_step(built, x, y)}
        label = f"forward+backward, train, batch {batch}"
    times, iters = interleaved(steps, rounds, warmup, target_s, max_iters, sync)
    hand_ms = statistics.median(times["hand"]) * 1e3
    sk_ms = statistics.median(times["skiptrain"]) * 1e3
    for model in (hand, built):
        for p in model.parameters():
            p.grad = None
    return {
        "model": model_name,
        "measurement": label,
        "kind": kind,
        "batch": batch,
        "input_shape": list(input_shape),
        "rounds": rounds,
        "iters_per_round": iters,
        "hand_ms": hand_ms,
        "skiptrain_ms": sk_ms,
        "ratio": statistics.median(s / h for s, h in zip(times["skiptrain"], times["hand"])),
        "hand_round_ms": [t * 1e3 for t in times["hand"]],
        "skiptrain_round_ms": [t * 1e3 for t in times["skiptrain"]],
    }


# --------------------------------------------------------------------------- report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict:
    """The CPU, core count, torch version and intra-op threads (``threads`` or torch's current setting)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


TARGET_RATIO = 1.02  # skiptrain / hand-written, at most


def paired_ratio(row: dict) -> float:
    """The median over rounds of skiptrain / hand-written within the round: both sides of a round
    ran back to back, so a machine that speeds up or slows down between rounds cancels out."""
    pairs = list(zip(row.get("skiptrain_round_ms") or [], row.get("hand_round_ms") or []))
    return statistics.median(s / h for s, h in pairs) if pairs else row["ratio"]


def format_table(rows: list[dict]) -> str:
    """Medians and ratio, then each side's fastest and slowest round: how much to trust the ratio."""
    lines = ["| model | measurement | hand-written ms | skiptrain ms | ratio | rounds, hand-written | rounds, skiptrain |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        spread = [f"{min(r[k]):.3f}-{max(r[k]):.3f}" if r.get(k) else "-"
                  for k in ("hand_round_ms", "skiptrain_round_ms")]
        lines.append(f"| {r['model']} | {r['measurement']} | {r['hand_ms']:.3f} | {r['skiptrain_ms']:.3f} "
                     f"| {paired_ratio(r):.3f} | {spread[0]} | {spread[1]} |")
    return "\n".join(lines)


def format_machine(info: dict) -> str:
    return (f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
            f"torch {info['torch']}, {info['threads']} threads, Python {info['python']}"
            + (f", load average {info['load_average']:.2f}" if info.get("load_average") is not None else ""))


# --------------------------------------------------------------------------- entry points

MODELS = ("resnet20", "resnet18", *ZOO_MODELS)


def main(quick: bool, *, models: tuple[str, ...] | list[str] = MODELS, threads: int | None = None,
         log: Callable[[str], None] | None = None, device: str = "cpu") -> list[dict]:
    """Run the benchmark and return one dict per measurement (``hand_ms``, ``skiptrain_ms``, ``ratio``, ...).

    ``quick``: 2 rounds, few iterations and small batches (a smoke run, not a measurement); it
    runs on one thread unless ``threads`` says otherwise, since a smoke run on a busy CI machine
    with oversubscribed OpenMP threads can take a minute instead of seconds.
    ResNet-18 is left out, with a note to ``log``, if configs/imagenet/resnet18.yaml is missing.
    On ``device="cuda"`` the batches are larger (128 and 64 for the training step) and every
    timed chunk ends with ``torch.cuda.synchronize()``.
    """
    dev = torch.device(device)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if threads is None and quick:
        threads = 1
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    torch.manual_seed(SEED)

    if quick:
        cfg = dict(rounds=2, warmup=0, target_s=0.01, max_iters=3)
        batches = {"resnet20": (1, 8), "resnet18": (1, 1), **{name: (1, 1) for name in ZOO_MODELS}}
    else:
        cfg = dict(rounds=11, warmup=3, target_s=2.0, max_iters=500)
        cuda = dev.type == "cuda"
        batches = {"resnet20": (1, 128), "resnet18": (1, 64 if cuda else 16),
                   "mobilenet_v3_small": (1, 64 if cuda else 16),
                   "convnext_tiny": (1, 32 if cuda else 4), "vit_b_16": (1, 32 if cuda else 4)}

    specs = {
        "resnet20": (make_resnet20, (3, 32, 32), 10),
        "resnet18": (make_resnet18, (3, 224, 224), 1000),
        **{name: (lambda name=name: make_zoo(name), (3, 224, 224), 1000) for name in ZOO_MODELS},
    }
    rows = []
    try:
        for name in models:
            if name not in specs:
                raise ValueError(f"unknown model {name!r}; choose from {', '.join(specs)}")
            if name == "resnet18" and not RESNET18_CONFIG.is_file():
                log(f"skipping resnet18: {RESNET18_CONFIG} not found")
                continue
            if name in ZOO_MODELS and not (ZOO / f"{name}.yaml").is_file():
                log(f"skipping {name}: {ZOO / name}.yaml not found")
                continue
            make, input_shape, num_classes = specs[name]
            torch.manual_seed(SEED)
            hand, built = (m.to(dev) for m in make())
            # Move everything alive now (torch's import-time objects, the models) out of the
            # collector's reach, so the gc.collect before each timed chunk costs next to nothing.
            gc.collect()
            gc.freeze()
            fwd_batch, train_batch = batches[name]
            for kind, batch in (("forward", fwd_batch), ("train", train_batch)):
                log(f"timing {name} {kind} batch {batch} ...")
                row = measure(name, hand, built, input_shape, num_classes, kind, batch, **cfg, device=dev)
                row.update(threads=threads, device=str(dev))
                log(f"  hand {row['hand_ms']:.3f} ms, skiptrain {row['skiptrain_ms']:.3f} ms, ratio "
                    f"{row['ratio']:.3f} ({row['rounds']} rounds x {row['iters_per_round']} iters)")
                rows.append(row)
            del hand, built
            gc.unfreeze()
    finally:
        gc.unfreeze()
        torch.set_num_threads(previous_threads)
    return rows


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, few iterations, small batches (CI smoke)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: torch's; 1 with --quick)")
    args = parser.parse_args(argv)
    rows = main(args.quick, models=args.models, threads=args.threads)
    print(format_machine(machine_info(rows[0]["threads"] if rows else None)))
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
