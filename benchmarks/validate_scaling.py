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

``--configs`` times named configs instead, the fastest of ``--repeat`` interleaved rounds (wall and
CPU seconds, user + system, of the child): a five-layer config, configs/imagenet/resnet50.yaml,
DenseNet-121 written with the language of issue 13 (each dense layer a block instance with a
``concat`` skip, transition widths by hand: 368 nodes, torchvision's 7,978,856 parameters), every
configs/zoo/*.yaml, and ``python -c "import torch"`` as the floor. ``--tree DIR`` runs the skiptrain
of another checkout (``git archive COMMIT | tar -x -C DIR``) for before/after numbers:

    python benchmarks/validate_scaling.py --configs --repeat 5
    python benchmarks/validate_scaling.py --configs --repeat 5 --tree /tmp/skiptrain-before

Where the time goes (issue 14; ``-X importtime``, cProfile and rusage on the 2-core machine):

* ``import torch``: 1.1-1.3 s, the floor.
* The first meta forward imports, through torch's own Python meta kernels, ``torch._dynamo`` (every
  Python decomposition is wrapped by ``torch._disable_dynamo``, which imports it on first call: relu,
  batch_norm, linear, add ...) and sympy (``torch._check`` in the conv meta kernel imports
  ``torch.fx.experimental.symbolic_shapes``): about 0.6 + 0.3 s of CPU, once per process, for any config.
  Not avoidable while shapes come from meta tensors. (torchvision's import also pulls in
  ``torch._dynamo``, through ``torchvision.ops.roi_align``; on top of that it costs 0.07 s.)
* Python's cycle collector: those imports make some 330,000 objects and every full collection walks
  them all: about 0.6 s of collections during a ``validate`` and 0.7 s more in the interpreter's
  shutdown. Fixed: ``validate`` pauses the collector (and restores it), and the CLI's entry point
  calls ``gc.freeze()`` before the interpreter exits.
* The per-layer CPU check was already run once per distinct (type, arguments, shape), memoized with
  the shape. Its cost was not the kernels but OpenMP's second thread: on a busy 2-core machine,
  waiting for it made each small kernel 10-20x slower (0.3-1.2 s for DenseNet-121's 110 checks; 0.02 s
  on an idle one). It now runs on one thread: 0.01 s. No check is dropped.
* The meta forwards of distinct shapes: DenseNet-121's 368 nodes infer in 0.15 s once the imports
  are done; counting multiply-adds (``compute.py``) adds 0.02-0.1 s.
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
ZOO = ROOT / "configs" / "zoo"
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


FIVE_YAML = """\
model:
  name: five
  input: [3, 32, 32]
  layers:
    - {type: conv2d, out_channels: 16, kernel_size: 3, padding: 1}
    - {type: relu}
    - {type: global_avgpool}
    - {type: linear, out_features: 32}
    - {type: linear, out_features: 10}
"""


def densenet121_yaml() -> str:
    """DenseNet-121 in the language of issue 13: a block instance per dense layer, widths by hand."""
    lines = ["model:", "  name: densenet121_issue13", "  input: [3, 224, 224]", "  projection: none", "  blocks:",
             "    dense:", "      layers:",
             "        - {id: norm1, type: batchnorm2d}", "        - {type: relu}",
             "        - {id: conv1, type: conv2d, out_channels: 128, kernel_size: 1, bias: false}",
             "        - {id: norm2, type: batchnorm2d}", "        - {type: relu}",
             "        - {id: conv2, type: conv2d, out_channels: 32, kernel_size: 3, padding: 1, bias: false}",
             "      skips:", "        - {from: input, to: conv2, merge: concat}",
             "    trans:", "      args: {out: 128}", "      layers:",
             "        - {id: norm, type: batchnorm2d}", "        - {type: relu}",
             "        - {id: conv, type: conv2d, out_channels: '${out}', kernel_size: 1, bias: false}",
             "        - {id: pool, type: avgpool2d, kernel_size: 2, stride: 2}",
             "  layers:",
             "    - {id: conv0, type: conv2d, out_channels: 64, kernel_size: 7, stride: 2, padding: 3, bias: false}",
             "    - {id: norm0, type: batchnorm2d}", "    - {type: relu}",
             "    - {id: pool0, type: maxpool2d, kernel_size: 3, stride: 2, padding: 1}"]
    channels = 64
    for i, n in enumerate((6, 12, 24, 16)):
        lines.append(f"    - {{id: denseblock{i + 1}, block: dense, repeat: {n}}}")
        channels += 32 * n
        if i < 3:
            channels //= 2
            lines.append(f"    - {{id: transition{i + 1}, block: trans, args: {{out: {channels}}}}}")
    lines += ["    - {id: norm5, type: batchnorm2d}", "    - {type: relu}", "    - {type: global_avgpool}",
              "    - {id: classifier, type: linear, out_features: 1000}"]
    return "\n".join(lines) + "\n"


def skiptrain_command() -> list[str]:
    if Path("/proc/self/status").is_file():
        return [sys.executable, "-c", PEAK_REPORTER]
    exe = Path(sys.executable).with_name("skiptrain")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "skiptrain"]


def resnet_args(n: int) -> list[str]:
    s1, s2, s3 = STAGE_LAYERS
    return [str(CONFIG), "--set", f"model.layers.{s1}.repeat={n}", "--set", f"model.layers.{s2}.repeat={n - 1}",
            "--set", f"model.layers.{s3}.repeat={n - 1}"]


def validate(args: list[str], tree: Path | None = None, command: list[str] | None = None) -> dict:
    """Run ``skiptrain validate --json ARGS`` in a child process: seconds (wall and CPU), peak MB, nodes,
    parameters. ``tree``: import skiptrain from that checkout; ``command``: run it instead (no JSON)."""
    env = {**os.environ}  # the child runs in `tree`: `-c` puts the working directory first on sys.path
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak_kb"
        started = time.perf_counter()
        proc = subprocess.Popen(command or [*skiptrain_command(), "validate", "--json", *args], stdout=out,
                                stderr=err, cwd=tree or ROOT, env={**env, "SKIPTRAIN_PEAK_FILE": str(peak_file)})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"skiptrain validate {' '.join(args)} exited {proc.returncode}: "
                               f"{err.read().decode(errors='replace')[-2000:]}")
        plan = json.loads(out.read()) if command is None else {"nodes": [], "params": 0}
        cpu = usage.ru_utime + usage.ru_stime
        if peak_file.is_file():
            peak_mb = int(peak_file.read_text()) / 2**10
        else:  # ru_maxrss is in KiB on Linux, bytes on macOS
            peak_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"nodes": len(plan["nodes"]), "params": plan["params"], "seconds": seconds, "cpu_seconds": cpu,
            "peak_mb": peak_mb}


def configs_main(repeat: int = 3, *, tree: Path | None = None, quick: bool = False, log=None) -> list[dict]:
    """One dict per config (``name``, ``nodes``, ``params``, ``seconds``, ``cpu_seconds``, ``peak_mb``):
    the fastest of ``repeat`` rounds, each round running every config once (so load hits them alike)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="skiptrain-validate-") as tmp:
        five, densenet = Path(tmp) / "five.yaml", Path(tmp) / "densenet121_issue13.yaml"
        five.write_text(FIVE_YAML)
        densenet.write_text(densenet121_yaml())
        cases = [("python -c 'import torch' (the floor)", None), ("five layers", five)]
        if not quick:
            cases += [("configs/imagenet/resnet50.yaml", ROOT / "configs" / "imagenet" / "resnet50.yaml"),
                      ("DenseNet-121, issue-13 language", densenet)]
            cases += [(f"configs/zoo/{path.name}", path) for path in sorted(ZOO.glob("*.yaml"))]
        for round_ in range(repeat):
            log(f"validate configs, round {round_ + 1}/{repeat} ...")
            for name, path in cases:
                try:
                    row = {"name": name, **(validate([], command=[sys.executable, "-c", "import torch"])
                                            if path is None else validate([str(path)], tree=tree))}
                except RuntimeError as exc:  # a zoo config that this tree cannot read yet
                    log(f"  {name}: {str(exc).splitlines()[0][:200]}")
                    continue
                kept = best.setdefault(name, row)
                for key in ("seconds", "cpu_seconds", "peak_mb"):
                    kept[key] = min(kept[key], row[key])
    return [best[name] for name, _ in cases if name in best]


def _count(n: int) -> str:
    return f"{n:,}" if n else "-"


def format_configs_table(rows: list[dict]) -> str:
    lines = ["| config | nodes | parameters | wall s | CPU s | peak MB |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {_count(r['nodes'])} | {_count(r['params'])} | {r['seconds']:.2f} | "
              f"{r['cpu_seconds']:.2f} | {r['peak_mb']:.0f} |" for r in rows]
    return "\n".join(lines)


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
    parser.add_argument("--configs", action="store_true", help="time named configs and the zoo, not sizes")
    parser.add_argument("--repeat", type=int, default=3, help="rounds for --configs (the fastest is kept)")
    parser.add_argument("--tree", type=Path, default=None, help="import skiptrain from this checkout")
    args = parser.parse_args()
    if args.configs:
        print(format_configs_table(configs_main(args.repeat, tree=args.tree, quick=args.quick)))
    else:
        print(format_table(main(args.quick, plot=None if args.quick else PLOT)))
