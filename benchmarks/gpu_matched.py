"""The trainer against a bare loop that does the same arithmetic, setting by setting (issue 20).

``trainer_overhead.py`` compares ``skiptrain train`` (with augmentation) to a bare loop in fp32.
Here both sides use the same precision, memory format and compile mode, and neither augments,
so the ratio is what the trainer itself costs on the GPU:

* for each of fp32, bf16, bf16 + channels_last, + ``compile`` and + ``compile: reduce-overhead``
  (CUDA graphs): ``skiptrain train`` on synthetic ResNet-20 data, batch 128, with a validation
  split and a checkpoint every epoch (so CUDA graphs run through validation and checkpointing
  too), against a bare loop with the same settings (no validation, no checkpoint);
* one **best against best** row: skiptrain's fastest setting against the fastest hand-written
  loop (bf16 autocast, channels_last, the whole step compiled with ``mode="max-autotune-no-cudagraphs"``
  or ``"reduce-overhead"``, whichever is faster).

Figures are median samples/s over the epochs after the first (which holds the compilation).
``benchmarks/gpu.py`` calls :func:`main` and records the result in ``results/gpu.json``.

    python benchmarks/gpu_matched.py            # needs CUDA
    python benchmarks/gpu_matched.py --quick    # smoke sizes; runs on CPU without the compile rows
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainer_overhead
from model_overhead import device_sync

TARGET_MATCHED, TARGET_BEST = 0.97, 0.95
VARIANTS = {  # name -> skiptrain train settings; the bare loop reads the same three
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False},
    "bf16": {"precision": "bf16", "channels_last": False, "compile": False},
    "bf16 + channels_last": {"precision": "bf16", "channels_last": True, "compile": False},
    "bf16 + channels_last + compile": {"precision": "bf16", "channels_last": True, "compile": True},
    "bf16 + channels_last + compile: reduce-overhead": {"precision": "bf16", "channels_last": True,
                                                        "compile": "reduce-overhead"},
}
HAND_MODES = ("max-autotune-no-cudagraphs", "reduce-overhead")


def run_skiptrain(num_samples: int, epochs: int, device: str, settings: dict) -> list[float]:
    """skiptrain without augmentation, with a 10% validation split and a checkpoint per epoch."""
    import skiptrain
    from skiptrain.config import load_config

    config = load_config({
        "model": trainer_overhead.model_section(),
        "data": {"dataset": "synthetic", "num_samples": num_samples, "num_classes": trainer_overhead.CLASSES,
                 "batch_size": trainer_overhead.BATCH, "val_fraction": 0.1},
        "train": {"epochs": epochs, "optimizer": dict(trainer_overhead.OPTIMIZER), "device": device, **settings},
    })
    with tempfile.TemporaryDirectory(prefix="skiptrain-bench-") as tmp:
        skiptrain.train(config, run_dir=str(Path(tmp) / "run"), quiet=True, force=True, epochs=epochs)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines() if line]
    return [row["samples_per_s"] for row in rows if "samples_per_s" in row]


def run_bare(x: torch.Tensor, y: torch.Tensor, epochs: int, device: str, precision: str, channels_last: bool,
             compile: bool | str) -> list[float]:
    """The loop a careful engineer writes: tensors on the device, autocast, channels_last, compiled step."""
    import skiptrain

    dev = torch.device(device)
    sync = device_sync(dev)
    torch.manual_seed(0)
    model = skiptrain.build_model({"model": trainer_overhead.model_section()}).to(dev).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = trainer_overhead.sgd(model)
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    forward = torch.compile(model, mode=None if compile is True else compile) if compile else model
    x, y = x.to(dev).contiguous(memory_format=memory_format), y.to(dev)
    batch = trainer_overhead.BATCH
    rates = []
    for _ in range(epochs):
        sync()
        started = time.perf_counter()
        perm = torch.randperm(len(x), device=dev)
        steps = max(1, len(x) // batch)
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            with amp():
                loss = F.cross_entropy(forward(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync()
        rates.append(steps * batch / (time.perf_counter() - started))
    return rates


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] or rates)


def main(quick: bool = False, *, device: str = "cuda", num_samples: int | None = None, epochs: int | None = None,
         log=None) -> list[dict]:
    """One row per setting (skiptrain, bare, ratio), then the best-against-best row."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    num_samples = num_samples or (1024 if quick else 50_000)
    epochs = epochs or (2 if quick else 4)
    x, y = trainer_overhead.train_split(num_samples)
    x, y = x[: int(num_samples * 0.9)], y[: int(num_samples * 0.9)]  # the same training samples as skiptrain's
    variants = {k: v for k, v in VARIANTS.items() if device != "cpu" or not v["compile"]}
    if device == "cpu":  # bf16 autocast on CPU is slow and not what this measures
        variants = {k: v for k, v in variants.items() if v["precision"] == "fp32"}
    rows = []
    for name, settings in variants.items():
        sk = run_skiptrain(num_samples, epochs, device, settings)
        bare = run_bare(x, y, epochs, device, **settings)
        rows.append({"setting": name, "skiptrain": steady(sk), "bare": steady(bare),
                     "ratio": steady(sk) / steady(bare), "target": TARGET_MATCHED})
        log(f"{name}: skiptrain {steady(sk):,.0f}, bare {steady(bare):,.0f} samples/s, ratio {rows[-1]['ratio']:.3f}")
    if device != "cpu":
        hand = {mode: steady(run_bare(x, y, epochs, device, "bf16", True, mode)) for mode in HAND_MODES}
        best_hand = max(hand, key=hand.get)
        best_sk = max(rows, key=lambda row: row["skiptrain"])
        rows.append({"setting": "best against best", "skiptrain_setting": best_sk["setting"],
                     "hand_setting": f"bf16 + channels_last + compile({best_hand})", "skiptrain": best_sk["skiptrain"],
                     "bare": hand[best_hand], "ratio": best_sk["skiptrain"] / hand[best_hand], "target": TARGET_BEST})
        log(f"best against best: {rows[-1]['ratio']:.3f}")
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| setting | skiptrain samples/s | bare loop samples/s | ratio | goal |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        name = row["setting"] if "hand_setting" not in row else \
            f"best against best: {row['skiptrain_setting']} vs {row['hand_setting']}"
        lines.append(f"| {name} | {row['skiptrain']:,.0f} | {row['bare']:,.0f} | {row['ratio']:.3f} | "
                     f">= {row['target']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(format_table(main(args.quick, device=args.device)))
