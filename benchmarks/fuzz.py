"""Run the long fuzzing profile of tests/test_fuzz.py and record what it tried in docs/reliability.md.

    python benchmarks/fuzz.py                  # profile `long`: thousands of configs, a few minutes on 2 cores
    python benchmarks/fuzz.py --examples 300   # fewer examples (the count is shared by the fuzz tests)
    python benchmarks/fuzz.py --seed 1234      # replay a run: hypothesis draws the same configs
    python benchmarks/fuzz.py --no-write       # print the figures, leave docs/reliability.md alone
    python benchmarks/fuzz.py --suite hostile  # tests/test_fuzz_hostile.py: 1,500 hostile inputs to the CLI

The tests run under pytest with ``SKIPTRAIN_FUZZ_PROFILE=long``; they count every config they
try (refused with a ``SkiptrainError``, accepted, built and run) into a JSON file named by
``SKIPTRAIN_FUZZ_STATS``. This script turns the counts, the date, the machine and the duration
into the section between ``<!-- fuzz:start -->`` and ``<!-- fuzz:end -->`` of docs/reliability.md
and leaves the rest of that page as it is (the page is created if it does not exist). It exits
with pytest's status, so a run that found a bug fails, and the page says so.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sections import put  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
SUITES = {"config": ("tests/test_fuzz.py", "<!-- fuzz:start -->", "<!-- fuzz:end -->", "SKIPTRAIN_FUZZ_EXAMPLES"),
          "hostile": ("tests/test_fuzz_hostile.py", "<!-- hostile:start -->", "<!-- hostile:end -->",
                      "SKIPTRAIN_HOSTILE_EXAMPLES")}


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), "") if cpuinfo.exists() else ""
    try:
        import torch
        versions = f"torch {torch.__version__}"
    except ImportError:
        versions = "torch missing"
    try:
        import hypothesis
        versions += f", hypothesis {hypothesis.__version__}"
    except ImportError:
        pass
    return (f"{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{platform.system()} {platform.release()}; Python {platform.python_version()}, {versions}")


def run(suite: str, examples: int | None, seed: int) -> tuple[int, dict, float, str]:
    """pytest on the suite's test file with the long profile: (exit status, counts, seconds, output tail)."""
    test_file, _, _, examples_variable = SUITES[suite]
    with tempfile.TemporaryDirectory(prefix="skiptrain-fuzz-") as tmp:
        stats_path = Path(tmp) / "stats.json"
        env = {**os.environ, "SKIPTRAIN_FUZZ_PROFILE": "long", "SKIPTRAIN_FUZZ_STATS": str(stats_path),
               "MPLCONFIGDIR": str(Path(tmp) / "mpl")}
        if examples:
            env[examples_variable] = str(examples)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file,
                   f"--hypothesis-seed={seed}", "-W", "ignore::UserWarning"]
        print("$", " ".join(command), flush=True)
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - started
        sys.stdout.write(proc.stdout)
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    summary = next((line.strip("= ") for line in reversed(proc.stdout.splitlines()) if line.startswith("=")
                    or " passed" in line or " failed" in line), "")
    return proc.returncode, stats, seconds, summary


def footer(passed: str, status: int, seconds: float, summary: str, seed: int, examples: int | None) -> list[str]:
    """A section's last lines: the result (``passed`` when pytest exited 0) and how the run was made."""
    minutes, secs = divmod(round(seconds), 60)
    result = f"passed: {passed}" if status == 0 else f"FAILED ({summary or f'pytest exit status {status}'})"
    return [f"Result: {result}.", "",
            f"Run: {datetime.date.today().isoformat()}, {minutes} min {secs:02d} s, profile `long`"
            f"{f', {examples} examples' if examples else ''}, `--hypothesis-seed={seed}`; {machine()}."]


def section(stats: dict, status: int, seconds: float, summary: str, seed: int, examples: int | None) -> str:
    def n(key: str) -> str:
        return f"{stats.get(key, 0):,}"

    return "\n".join([
        SUITES["config"][1],
        "### Fuzzing the config language",
        "",
        "`tests/test_fuzz.py` (hypothesis) mutates the example configs (keys deleted at any depth, values of the",
        "wrong type, huge numbers, unicode, random input shapes and dtypes, random skips, merges, projections",
        "and axes, duplicated and dropped layers, nasty `${...}` expressions), generates small graphs from",
        "scratch, and edits example YAML files as text (tags, anchors, deep nesting, huge numbers, control",
        "characters), which also go through `skiptrain validate`. The property: a config is either refused",
        "with skiptrain's own error (`SkiptrainError`), or it builds, and a forward pass of a batch of 2",
        "returns the shape and dtype that `validate` reported, with the values of a node-by-node",
        "interpretation of the plan. CI runs the `ci` profile (about 300 configs, derandomized); the figures",
        "below are from the `long` profile, run by `python benchmarks/fuzz.py`. Each bug the fuzzer found is",
        "fixed and has an example-based regression test (`found by tests/test_fuzz.py` in `tests/test_*.py`).",
        "",
        "| configs | count |",
        "|---|---:|",
        f"| tried | {n('tried')} |",
        f"| &nbsp;&nbsp;mutated examples | {n('mutated')} |",
        f"| &nbsp;&nbsp;graphs from scratch | {n('scratch')} |",
        f"| &nbsp;&nbsp;YAML files edited as text (also run through `skiptrain validate`) | {n('yaml_text')} |",
        f"| refused with a `SkiptrainError` | {n('rejected')} |",
        f"| accepted | {n('accepted')} |",
        f"| &nbsp;&nbsp;built and run on CPU, output checked | {n('built')} |",
        f"| &nbsp;&nbsp;checked only (over 5M parameters or 1M-element activations) | {n('too_large_to_build')} |",
        "",
        *footer("no config escaped with another exception, hung, or built a model that disagreed with `validate`",
                status, seconds, summary, seed, examples),
        SUITES["config"][2],
    ])


def hostile_section(stats: dict, status: int, seconds: float, summary: str, seed: int,
                    examples: int | None) -> str:
    """The figures of tests/test_fuzz_hostile.py: hostile input through the CLI."""
    def n(key: str) -> str:
        return f"{stats.get(key, 0):,}"

    commands = ", ".join(f"`{key.split('_', 1)[1]}` {value:,}" for key, value in sorted(stats.items())
                         if key.startswith("command_"))
    return "\n".join([
        SUITES["hostile"][1],
        "### Fuzzing hostile and careless input to the CLI",
        "",
        "`tests/test_fuzz_hostile.py` copies a workspace (a config, a trained run, a `.npy`, an image folder),",
        "damages one thing and runs one command: a hostile `--set` value on `validate` or `train`; a checkpoint",
        "with a valid checksum and wrong contents (top-level values replaced or deleted, weights deleted, added,",
        "reshaped, retyped or NaN, the stored config changed) or a damaged run directory (files deleted, emptied,",
        "truncated, garbled, replaced by a folder, a link to `/dev/zero` or a link loop) under `train --resume`,",
        "`eval`, `export`, `predict` and `train --run-dir [--force]`; output paths (inputs, run files, folders,",
        "missing folders, links) for `export`, `graph`, `schema` and `init`; `predict` inputs of every dtype",
        "and shape, raw bytes and devices; image folders with corrupt, empty, truncated, huge-header and stray",
        "files (0 and 2 workers). The property: exit 0, 1 or 2, a refusal is one message and never a traceback,",
        "no hang, no code run, and not one file outside what the command may write changed.",
        "CI runs 150 examples (derandomized); the figures below are from `python benchmarks/fuzz.py --suite hostile`.",
        "",
        "| cases | count |",
        "|---|---:|",
        f"| tried | {n('tried')} |",
        f"| refused with one message | {n('refused')} |",
        f"| accepted | {n('accepted')} |",
        "",
        f"Commands: {commands or 'none'}.",
        "",
        *footer("no traceback, no hang, no code run, and no file changed outside what each command may write",
                status, seconds, summary, seed, examples),
        SUITES["hostile"][2],
    ])


def write(text: str, suite: str) -> None:
    """Replace the suite's section of docs/reliability.md (or add it); nothing else on the page changes."""
    _, start, end, _ = SUITES[suite]
    put(DOC, start, end, text, new_page="# Reliability\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=None,
                        help="examples shared by the fuzz tests (default: the long profile's)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: a random one)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/reliability.md")
    parser.add_argument("--suite", choices=sorted(SUITES), default="config",
                        help="config: the model language (default); hostile: hostile input to the CLI")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 32)
    status, stats, seconds, summary = run(args.suite, args.examples, seed)
    text = (section if args.suite == "config" else hostile_section)(stats, status, seconds, summary, seed,
                                                                     args.examples)
    print("\n" + text)
    if not args.no_write:
        write(text, args.suite)
        print(f"\nwrote {DOC.relative_to(ROOT)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
