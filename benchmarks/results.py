"""Train the reference configs that learn offline and write docs/results.md from what they measured.

    python benchmarks/results.py            # quickstart, mnist1d, U-Net, transformer (minutes on a laptop CPU)
    python benchmarks/results.py --quick    # two epochs each with few batches: a smoke run

Every figure on the page comes from this run; nothing is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sections import carried  # noqa: E402

import torch  # noqa: E402

import skiptrain  # noqa: E402

# config, the metric that matters, the target it must reach
RUNS = [
    ("configs/quickstart.yaml", "test_acc", 0.97, "residual CNN, digits (8x8)"),
    ("configs/mnist1d_resnet.yaml", "test_acc", 0.94, "1-D ResNet, MNIST-1D (paper's CNN baseline: 94%)"),
    ("configs/unet.yaml", "test_miou", 0.80, "U-Net, shapes segmentation"),
    ("configs/transformer.yaml", "test_acc", None, "pre-norm transformer, MNIST-1D"),
]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU only, {os.cpu_count()} cores"
    return f"{cpu}; {device}; torch {torch.__version__}; Python {platform.python_version()}"


def run(config: str, quick: bool, out_dir: Path) -> dict:
    cfg = skiptrain.load_config(ROOT / config)
    started = time.perf_counter()
    summary = skiptrain.train(cfg, run_dir=str(out_dir / Path(config).stem), quiet=True, force=True,
                              epochs=2 if quick else None, limit_batches=3 if quick else None)
    summary["wall_seconds"] = time.perf_counter() - started
    history = [line for line in (out_dir / Path(config).stem / "metrics.jsonl").read_text().splitlines()]
    summary["epochs_run"] = len(history)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 epochs of 3 batches each")
    parser.add_argument("--output", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--only", nargs="*", help="config paths to run (default: all)")
    parser.add_argument("--from-runs", metavar="DIR",
                        help="tabulate finished runs in DIR/<config stem>/ (summary.json) instead of training")
    args = parser.parse_args()
    if args.from_runs:
        rows = [row(config, metric, target, what, summary) for config, metric, target, what in RUNS
                if (summary := _finished(Path(args.from_runs) / Path(config).stem)) is not None]
        write_page(Path(args.output), rows, args.quick, from_runs=True)
        print(f"wrote {args.output} from {len(rows)} finished runs")
        return
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for config, metric, target, what in RUNS:
            if args.only and config not in args.only:
                continue
            print(f"training {config} ...", flush=True)
            summary = run(config, args.quick, Path(tmp))
            rows.append(row(config, metric, target, what, summary))
            print(rows[-1], flush=True)
            write_page(Path(args.output), rows, args.quick)  # after every run: a stopped run keeps what it measured
    print(f"wrote {args.output}")


def _finished(run_dir: Path) -> dict | None:
    """A finished run's summary, with the epochs it logged (None when it has no summary yet)."""
    if not (run_dir / "summary.json").is_file():
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["epochs_run"] = len((run_dir / "metrics.jsonl").read_text().splitlines())
    return summary


def row(config: str, metric: str, target, what: str, summary: dict) -> str:
    value = summary.get(metric)
    ok = "-" if target is None else ("yes" if value is not None and value >= target else "**no**")
    wall = f"{summary['wall_seconds']:.0f} s" if "wall_seconds" in summary else "-"
    return (f"| `{config}` | {what} | {summary['epochs_run']} | {summary['params']:,} | "
            f"{metric.removeprefix('test_')} {value:.4f} | {target if target is not None else '-'} | {ok} | "
            f"{summary['train_seconds']:.0f} s | {wall} |")


def write_page(path: Path, rows: list[str], quick: bool, from_runs: bool = False) -> None:
    origin = ("Tabulated by `python benchmarks/results.py --from-runs DIR` from the summary.json of runs that "
              "`benchmarks/results.py` trained" if from_runs else "Produced by `python benchmarks/results.py`")
    page = [
        "# Results",
        "",
        origin + (" --quick (a smoke run, not real results)" if quick else "")
        + (f"; tabulated on {time.strftime('%Y-%m-%d')}." if from_runs else f" on {time.strftime('%Y-%m-%d')}."),
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} when written.",
        "",
        "| config | what | epochs | parameters | test metric | target | reached | training time | wall time |",
        "|---|---|---:|---:|---|---:|---|---:|---:|",
        *rows,
        "",
        "Training time sums the epochs' training loops; wall time includes data generation, validation,",
        "checkpoints and the test pass. Each run uses the config unchanged (seed 0).",
        "",
    ]
    path.write_text(carried(path.read_text() if path.is_file() else "", "\n".join(page)))  # e.g. gpt.py's section


if __name__ == "__main__":
    main()
