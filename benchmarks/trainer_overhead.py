"""How much does ``skiptrain train`` cost over the training loop itself?

One training epoch of ResNet-20 (configs/cifar/resnet20.yaml's model section) on ``synthetic``
data (input [3, 32, 32], 10 classes, batch 128, SGD with momentum), three ways, all on the
same number of samples and batches, with the same model built by ``skiptrain.build_model``:

* **skiptrain**: ``skiptrain.train`` with ``augment: [{random_crop: {padding: 4}}, horizontal_flip]``;
  its ``samples_per_s`` is read from the run's metrics.jsonl.
* **bare loop** (the compute limit): forward, cross-entropy, backward and an SGD step over
  batches already in memory -- no augmentation, no data pipeline at all.
* **hand-written loop** (what a user writes): a torchvision-style ``Dataset`` over the same
  tensors with per-sample ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` and a
  ``DataLoader(batch_size=128, shuffle=True, num_workers=2)``, then the same step.

Each way runs ``epochs`` epochs per round and the first epoch of every round is dropped (warm-up:
allocator, worker start-up, first-call costs); the figure is the median samples/s over the
remaining epochs of all rounds. Rounds alternate the order of the three ways. torch runs on
``threads`` intra-op threads for all three (benchmarks/run.py uses every core, as a user's loop
does; the DataLoader's workers then share those cores with training, as they do in practice).

    python benchmarks/trainer_overhead.py            # 2048 samples, 2 rounds x 3 epochs
    python benchmarks/trainer_overhead.py --quick    # 300 samples: a smoke run, not a measurement
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from model_overhead import device_sync  # benchmarks/ is on sys.path (a script, or run.py)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cifar" / "resnet20.yaml"
INPUT, CLASSES, BATCH = (3, 32, 32), 10, 128
AUGMENT = [{"random_crop": {"padding": 4}}, "horizontal_flip"]
OPTIMIZER = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4}
TARGET_BARE, TARGET_HAND = 0.95, 1.0  # skiptrain / bare >= 0.95, skiptrain / hand-written > 1


def model_section() -> dict:
    import yaml

    return yaml.safe_load(CONFIG.read_text())["model"]


def train_split(num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensors skiptrain's ``synthetic`` dataset trains on (seed 0, 90% with no val split)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((num_samples, *INPUT), generator=gen)
    y = torch.randint(0, CLASSES, (num_samples,), generator=gen)
    n_train = num_samples - max(1, num_samples // 10)
    return x[:n_train], y[:n_train]


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    o = OPTIMIZER
    return torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])


def step(model, optimizer, x, y) -> None:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# --------------------------------------------------------------------------- the three ways


def run_skiptrain(num_samples: int, epochs: int, device: str = "cpu", **train: object) -> list[float]:
    """``train``: extra train settings (precision, channels_last, compile) for the GPU table."""
    import skiptrain
    from skiptrain.config import load_config

    config = load_config({
        "model": model_section(),
        "data": {"dataset": "synthetic", "num_samples": num_samples, "num_classes": CLASSES,
                 "batch_size": BATCH, "val_fraction": 0.0, "augment": AUGMENT},
        "train": {"epochs": epochs, "optimizer": dict(OPTIMIZER), "device": device,
                  "precision": "fp32", "channels_last": False, **train},
    })
    with tempfile.TemporaryDirectory(prefix="skiptrain-bench-") as tmp:
        skiptrain.train(config, run_dir=str(Path(tmp) / "run"), quiet=True, force=True, epochs=epochs)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines() if line]
    return [row["samples_per_s"] for row in rows if "samples_per_s" in row]


def run_bare(x: torch.Tensor, y: torch.Tensor, epochs: int, device: str = "cpu") -> list[float]:
    import skiptrain

    dev = torch.device(device)
    sync = device_sync(dev)
    torch.manual_seed(0)
    model = skiptrain.build_model({"model": model_section()}).to(dev).train()
    optimizer = sgd(model)
    x, y = x.to(dev), y.to(dev)
    rates = []
    for epoch in range(epochs):
        sync()
        started = time.perf_counter()
        perm = torch.randperm(len(x), device=dev)
        seen = 0
        for i in range(max(1, len(x) // BATCH)):  # full batches only, as skiptrain trains
            idx = perm[i * BATCH:(i + 1) * BATCH]
            step(model, optimizer, x[idx], y[idx])
            seen += len(idx)
        sync()
        rates.append(seen / (time.perf_counter() - started))
    return rates


class TensorImages(torch.utils.data.Dataset):
    """A torchvision-style dataset: one (image, label) per index, the transform applied per sample."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), int(self.y[i])


def run_hand(x: torch.Tensor, y: torch.Tensor, epochs: int, device: str = "cpu", workers: int = 2) -> list[float]:
    import skiptrain
    from torchvision import transforms

    dev = torch.device(device)
    sync = device_sync(dev)
    torch.manual_seed(0)
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])
    loader = torch.utils.data.DataLoader(TensorImages(x, y, transform), batch_size=BATCH, shuffle=True,
                                         num_workers=workers, drop_last=True, pin_memory=dev.type == "cuda")
    model = skiptrain.build_model({"model": model_section()}).to(dev).train()
    optimizer = sgd(model)
    rates = []
    for epoch in range(epochs):
        sync()
        started = time.perf_counter()
        for xb, yb in loader:
            step(model, optimizer, xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True))
        sync()
        rates.append(len(loader) * BATCH / (time.perf_counter() - started))
    return rates


# --------------------------------------------------------------------------- driver


def main(quick: bool, *, threads: int = 1, log=None, device: str = "cpu", num_samples: int | None = None,
         rounds: int | None = None, epochs: int | None = None, workers: int = 2) -> list[dict]:
    """One dict per way (``samples_per_s`` = median over steady-state epochs), then a ``ratios`` dict."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    default = (300, 1, 2) if quick else (2048, 2, 3)
    num_samples, rounds, epochs = (a if a is not None else b for a, b in zip((num_samples, rounds, epochs), default))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x, y = train_split(num_samples)
    ways = {
        "skiptrain train": lambda: run_skiptrain(num_samples, epochs, device),
        "bare loop (tensors in memory)": lambda: run_bare(x, y, epochs, device),
        f"hand-written Dataset + DataLoader(num_workers={workers})": lambda: run_hand(x, y, epochs, device, workers),
    }
    steady: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for r in range(rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for name in order:
                rates = ways[name]()
                log(f"round {r + 1}: {name}: " + ", ".join(f"{v:.0f}" for v in rates) + " samples/s per epoch")
                steady[name].extend(rates[1:])  # the first epoch of a round is warm-up
    finally:
        torch.set_num_threads(previous)
    batches = max(1, len(x) // BATCH)
    rows = [{"way": name, "samples_per_s": statistics.median(v), "epochs_measured": len(v),
             "train_samples": len(x), "batches": batches, "threads": threads, "device": device}
            for name, v in steady.items()]
    sk, bare, hand = (row["samples_per_s"] for row in rows)
    rows.append({"way": "ratios", "skiptrain_over_bare": sk / bare, "skiptrain_over_hand": sk / hand,
                 "target_bare": TARGET_BARE, "target_hand": TARGET_HAND})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| way | samples/s | epochs measured |", "|---|---:|---:|"]
    lines += [f"| {r['way']} | {r['samples_per_s']:.0f} | {r['epochs_measured']} |" for r in rows if "samples_per_s" in r]
    ratios = rows[-1]
    lines += ["", f"skiptrain / bare loop: {ratios['skiptrain_over_bare']:.3f} (target >= {TARGET_BARE}); "
                  f"skiptrain / hand-written: {ratios['skiptrain_over_hand']:.3f} (target > {TARGET_HAND})"]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(format_table(main(args.quick, threads=args.threads)))
