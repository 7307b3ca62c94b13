"""The GPU figures: the model and trainer ratios on CUDA, and ResNet-20 images/s by precision,
memory format and compilation.

Needs a CUDA GPU. Writes its results as JSON (default ``benchmarks/results/gpu.json``), which
``benchmarks/run.py`` turns into the GPU section of docs/benchmarks.md, naming the GPU it ran
on; run it again on a GPU to refresh that section.

* **Model overhead**: ``model_overhead.main(device="cuda")``, YAML-built ResNet-20 and ResNet-18
  against the hand-written ones (batch 1 forward, batch 128 / 64 forward+backward).
* **Trainer overhead**: ``trainer_overhead.main(device="cuda")`` on CIFAR-sized synthetic data
  (50,000 samples): ``skiptrain train`` against a bare loop over tensors on the GPU and against a
  hand-written ``Dataset`` + ``DataLoader`` loop (pinned memory, several workers). fp32 and
  default memory format for all three, so they do the same arithmetic.
* **Throughput**: ``skiptrain train`` of ResNet-20 on the same data with fp32, bf16,
  bf16 + channels_last, and bf16 + channels_last + ``compile: true`` or
  ``compile: reduce-overhead`` (CUDA graphs); median images/s over the epochs after the first
  (which holds the compilation).
* **Matched**: ``gpu_matched.main``: the trainer against a bare loop with the same precision,
  memory format and compile mode (CUDA graphs included, through validation and checkpoints),
  and skiptrain's best setting against the best hand-written loop.

    python benchmarks/gpu.py                 # about 5 minutes on an H100
    python benchmarks/gpu.py --quick         # smoke sizes
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import gpu_matched  # noqa: E402
import model_overhead  # noqa: E402
import trainer_overhead  # noqa: E402

RESULTS = HERE / "results" / "gpu.json"
VARIANTS = {  # name -> train settings
    "fp32": {"precision": "fp32", "channels_last": False},
    "bf16": {"precision": "bf16", "channels_last": False},
    "bf16 + channels_last": {"precision": "bf16", "channels_last": True},
    "bf16 + channels_last + compile": {"precision": "bf16", "channels_last": True, "compile": True},
    "bf16 + channels_last + compile: reduce-overhead": {"precision": "bf16", "channels_last": True,
                                                        "compile": "reduce-overhead"},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def code_version() -> str:
    """The commit measured (with -dirty when the working tree had changes)."""
    import subprocess

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return sha.strip() + ("-dirty" if dirty.strip() else "") if sha else "unknown"


def machine() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {"code": code_version(), "gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "cpu_cores": os.cpu_count(), "cpu": model_overhead.cpu_model(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "date": f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"}


def throughput(num_samples: int, epochs: int) -> list[dict]:
    rows = []
    for name, settings in VARIANTS.items():
        with tempfile.TemporaryDirectory(prefix="skiptrain-inductor-") as cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold compile, as a user's first run
            started = time.perf_counter()
            rates = trainer_overhead.run_skiptrain(num_samples, epochs, "cuda", **settings)
            total = time.perf_counter() - started
        steady = rates[1:] or rates
        rows.append({"variant": name, "images_per_s": statistics.median(steady), "first_epoch_images_per_s": rates[0],
                     "epochs": len(rates), "run_seconds": total})
        log(f"{name}: " + ", ".join(f"{r:,.0f}" for r in rates) + " images/s per epoch")
    rate = {row["variant"]: row["images_per_s"] for row in rows}
    for row in rows:
        row["vs_fp32"] = row["images_per_s"] / rows[0]["images_per_s"]
    eager = rate["bf16 + channels_last"]
    return rows + [{"variant": "compile / eager (bf16 + channels_last)",
                    "ratio": rate["bf16 + channels_last + compile"] / eager,
                    "ratio_reduce_overhead": rate["bf16 + channels_last + compile: reduce-overhead"] / eager}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes, not measurements")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        log("benchmarks/gpu.py needs a CUDA GPU; none is visible")
        return 1
    samples, epochs = (2048, 2) if args.quick else (50_000, 4)
    started = time.perf_counter()
    result = {"machine": machine(), "quick": args.quick}
    log("== model overhead (cuda)")
    result["model"] = model_overhead.main(args.quick, threads=None, log=log, device="cuda")
    log("== trainer overhead (cuda)")
    result["trainer"] = trainer_overhead.main(args.quick, threads=torch.get_num_threads(), log=log, device="cuda",
                                              num_samples=samples, rounds=1 if args.quick else 2, epochs=epochs,
                                              workers=min(8, os.cpu_count() or 2))
    log("== trainer against a bare loop with the same settings (cuda)")
    result["matched"] = gpu_matched.main(args.quick, device="cuda", num_samples=samples, epochs=epochs, log=log)
    log("== throughput (cuda)")
    result["throughput"] = throughput(samples, epochs)
    result["seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
