"""How do ``skiptrain validate`` time and memory grow with the size of the graph?

Runs ``skiptrain validate --json`` once per network, each in its own process, and records the
wall time of the whole command (interpreter start, imports, expansion, shape inference on meta
tensors, JSON output) and the process's peak resident memory (VmHWM, which the child reads
from /proc/self/status as it exits; ``ru_maxrss`` where there is no /proc).

* CIFAR ResNets of depth 6n + 2 made from configs/cifar/resnet20.yaml with ``--set``: stage1
  repeats n times, stage2 and stage3 n - 1 times after their down2/down3 blocks
  (ResNet-20/56/110/1202: n = 3/9/18/200);
* a plain MLP on a 64-wide input: one block ``{linear 64, relu}`` repeated 1,000 and 10,000 times,
  then a linear head (written to a temporary YAML file).

    python benchmarks/validate_scaling.py            # all sizes, plot to docs/img/validate_scaling.png
    python benchmarks/validate_scaling.py --quick    # ResNet-20 and a 100-layer MLP, no plot
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cifar" / "resnet20.yaml"
PLOT = ROOT / "docs" / "img" / "validate_scaling.png"
STAGE_LAYERS = (3, 5, 7)  # indices of stage1, stage2, stage3 in resnet20.yaml's `layers`

MLP_YAML = """\
model:
  name: mlp{depth}
  input: [64]
  blocks:
    fc:
      layers:
        - {{type: linear, out_features: 64}}
        - {{type: relu}}
  layers:
    - {{id: body, block: fc, repeat: {depth}}}
    - {{id: head, type: linear, out_features: 10}}
"""


# The child reports its own peak from /proc/self/status: VmHWM belongs to the process after
# exec, while ru_maxrss from wait4 also counts the parent's pages that fork copied before exec.
PEAK_REPORTER = """
import atexit, os, sys
def report():
    with open("/proc/self/status") as status, open(os.environ["SKIPTRAIN_PEAK_FILE"], "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(report)
sys.argv = ["skiptrain", *sys.argv[1:]]
from skiptrain.cli import main
main()
"""


def skiptrain_command() -> list[str]:
    if Path("/proc/self/status").is_file():
        return [sys.executable, "-c", PEAK_REPORTER]
    exe = Path(sys.executable).with_name("skiptrain")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "skiptrain"]


def resnet_args(n: int) -> list[str]:
    s1, s2, s3 = STAGE_LAYERS
    return [str(CONFIG), "--set", f"model.layers.{s1}.repeat={n}", "--set", f"model.layers.{s2}.repeat={n - 1}",
            "--set", f"model.layers.{s3}.repeat={n - 1}"]


def validate(args: list[str]) -> dict:
    """Run ``skiptrain validate --json ARGS`` in a child process: seconds, peak MB, nodes, parameters."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak_kb"
        started = time.perf_counter()
        proc = subprocess.Popen([*skiptrain_command(), "validate", "--json", *args], stdout=out, stderr=err,
                                cwd=ROOT, env={**os.environ, "SKIPTRAIN_PEAK_FILE": str(peak_file)})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"skiptrain validate {' '.join(args)} exited {proc.returncode}: "
                               f"{err.read().decode(errors='replace')[-2000:]}")
        plan = json.loads(out.read())
        if peak_file.is_file():
            peak_mb = int(peak_file.read_text()) / 2**10
        else:  # ru_maxrss is in KiB on Linux, bytes on macOS
            peak_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"nodes": len(plan["nodes"]), "params": plan["params"], "seconds": seconds, "peak_mb": peak_mb}


def main(quick: bool, *, plot: Path | None = None, log=None) -> list[dict]:
    """One dict per network: ``name``, ``nodes``, ``params``, ``seconds``, ``peak_mb``."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    resnets = (3,) if quick else (3, 9, 18, 200)
    mlps = (100,) if quick else (1_000, 10_000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="skiptrain-validate-") as tmp:
        cases = [(f"ResNet-{6 * n + 2}", resnet_args(n)) for n in resnets]
        for depth in mlps:
            path = Path(tmp) / f"mlp{depth}.yaml"
            path.write_text(MLP_YAML.format(depth=depth))
            cases.append((f"MLP, {depth:,} x (linear, relu)", [str(path)]))
        for name, args in cases:
            log(f"validate {name} ...")
            row = {"name": name, **validate(args)}
            log(f"  {row['nodes']} nodes, {row['seconds']:.2f} s, {row['peak_mb']:.0f} MB peak")
            rows.append(row)
    if plot is not None:
        write_plot(rows, plot)
    return rows


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for kind, marker in (("ResNet", "o"), ("MLP", "s")):
        pts = [r for r in rows if r["name"].startswith(kind)]
        ax.plot([r["nodes"] for r in pts], [r["seconds"] for r in pts], marker=marker, label=kind)
        for r in pts:
            ax.annotate(r["name"].split(",")[0] if kind == "ResNet" else f"MLP {r['nodes']:,} nodes",
                        (r["nodes"], r["seconds"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("nodes in the expanded graph")
    ax.set_ylabel("seconds (whole `skiptrain validate --json`)")
    ax.set_title("skiptrain validate: time vs graph size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def format_table(rows: list[dict]) -> str:
    lines = ["| network | nodes | parameters | seconds | peak MB |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['nodes']:,} | {r['params']:,} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |"
              for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(format_table(main(args.quick, plot=None if args.quick else PLOT)))
