"""How long does the command line take to answer ``--help``?

Times ``skiptrain --help`` and ``skiptrain validate --help`` as child processes (interpreter start
and imports included), 5 times each after one untimed run, and reports the median.
Target: under 0.3 s (torch must not be imported to print help).

    python benchmarks/startup.py
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.3
COMMANDS = (["--help"], ["validate", "--help"])


def skiptrain_command() -> list[str]:
    exe = Path(sys.executable).with_name("skiptrain")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "skiptrain"]


def time_command(argv: list[str], repeats: int) -> list[float]:
    subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def main(quick: bool, *, log=None) -> list[dict]:
    """One dict per command: ``command``, ``median_s``, ``min_s``, ``max_s``, ``target_s``, ``met``."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows = []
    for args in COMMANDS:
        times = time_command([*skiptrain_command(), *args], repeats=5)
        median = statistics.median(times)
        rows.append({"command": "skiptrain " + " ".join(args), "median_s": median, "min_s": min(times),
                     "max_s": max(times), "target_s": TARGET_S, "met": median < TARGET_S})
        log(f"skiptrain {' '.join(args)}: median {median:.3f} s")
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| command | median s | min s | max s | target |", "|---|---:|---:|---:|---|"]
    lines += [f"| `{r['command']}` | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | "
              f"< {r['target_s']} s: {'met' if r['met'] else 'missed'} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(main("--quick" in sys.argv)))
