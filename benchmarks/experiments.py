"""The degradation experiment (He et al. 2016, Fig. 1 and 6) in miniature; writes docs/experiments.md.

    python benchmarks/experiments.py                # 4 epochs each: a few minutes on a 2-core CPU
    python benchmarks/experiments.py --epochs 2     # shorter
    python benchmarks/experiments.py --quick        # 1 epoch, 5 batches: a smoke run (writes to a temp dir)

Trains plain-20, plain-56, ResNet-20 and ResNet-56 (configs/experiments/, narrow 1-D convnets
with BN on MNIST-1D) with `skiptrain.compare.compare` on the same data, seed and epoch budget,
then measures the gradient flow of the deep pair with `skiptrain.gradflow`. Every figure on
the page comes from this run, and the verdict sentences are computed from it, not typed.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from skiptrain.compare import compare  # noqa: E402
from skiptrain.api import gradflow  # noqa: E402
from skiptrain.gradflow import first_to_last, plot_gradflow  # noqa: E402

SHALLOW, DEEP = 20, 56  # weighted layers, as in He et al.'s Fig. 1 and 6
CONFIGS = [f"configs/experiments/{kind}{depth}_mnist1d.yaml" for kind in ("plain", "resnet") for depth in (SHALLOW, DEEP)]
DEEP_PAIR = CONFIGS[1], CONFIGS[3]
GRADFLOW_STEPS = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 5 batches, into a temp dir; no docs page")
    args = parser.parse_args()
    epochs, limit, steps = (1, 5, 2) if args.quick else (args.epochs, None, GRADFLOW_STEPS)
    work = Path(tempfile.mkdtemp(prefix="skiptrain-exp-")) if args.quick else ROOT / "runs" / "experiments"
    started = time.perf_counter()
    result = compare(CONFIGS, epochs=epochs, output_dir=work / "compare", limit_batches=limit, quiet=True)
    flows = [(Path(c).stem.removesuffix("_mnist1d"), gradflow(ROOT / c, steps=steps)) for c in DEEP_PAIR]
    plot_gradflow(flows, work / "gradflow.png")
    total = time.perf_counter() - started
    page = render(result, flows, epochs, steps, total)
    if args.quick:
        print(page)
        return
    images = ROOT / "docs" / "img"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "compare" / "curves.png", images / "experiments_curves.png")
    shutil.copy(work / "gradflow.png", images / "experiments_gradflow.png")
    (ROOT / "docs" / "experiments.md").write_text(page)
    print(page)
    print(f"wrote docs/experiments.md, docs/img/experiments_*.png ({total:.0f} s)")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.lower().startswith("model name"))
    except (OSError, StopIteration):
        return f"{platform.machine()} CPU"


def verdict(runs: dict[str, dict], deep: str, shallow: str, family: str) -> str:
    d, s = runs[deep], runs[shallow]
    loss = "lower" if d["final_train_loss"] < s["final_train_loss"] else "higher"
    acc = "higher" if d["test_acc"] > s["test_acc"] else "lower"
    return (f"- {family}: the {DEEP}-layer net ended with a **{loss}** training loss ({d['final_train_loss']:.3f} vs "
            f"{s['final_train_loss']:.3f}) and a **{acc}** test accuracy ({d['test_acc']:.3f} vs {s['test_acc']:.3f}) "
            f"than the {SHALLOW}-layer one.")


def flow_sentence(flows: list) -> str:
    (plain_name, plain), (res_name, res) = flows
    factor = first_to_last(res) / max(first_to_last(plain), 1e-30)
    if factor >= 1:
        return (f"At initialisation the stem of {res_name} gets {factor:.1f}x more gradient, relative to its head, "
                f"than the stem of {plain_name}.")
    return (f"At initialisation the stem of {plain_name} gets {1 / factor:.1f}x more gradient, relative to its head, "
            f"than the stem of {res_name}: here the skips do not help the gradient reach the first layer.")


def render(result: dict, flows: list, epochs: int, steps: int, total: float) -> str:
    runs = {Path(r["config"]).stem.removesuffix("_mnist1d"): r for r in result["runs"]}
    plain_degrades = runs[f"plain{DEEP}"]["final_train_loss"] > runs[f"plain{SHALLOW}"]["final_train_loss"]
    resnet_gains = runs[f"resnet{DEEP}"]["final_train_loss"] < runs[f"resnet{SHALLOW}"]["final_train_loss"]
    seen = ("shows both halves of the paper's finding" if plain_degrades and resnet_gains else
            "shows only part of the paper's finding" if plain_degrades or resnet_gains else
            "does not show the paper's finding")
    rows = "\n".join(f"| {name} | {r['params']:,} | {r['final_train_loss']:.4f} | {r['test_acc']:.4f} | "
                     f"{r['train_seconds']:.1f} s |" for name, r in runs.items())
    flow_rows = "\n".join(f"| {name} | {f['layers'][0]['init']:.2e} | {f['layers'][-1]['init']:.2e} | "
                          f"{first_to_last(f):.2e} | {first_to_last(f, 'trained'):.2e} |" for name, f in flows)
    threads = torch.get_num_threads()
    return f"""# Experiments: degradation, in miniature

He et al. (2016) observed that a deeper *plain* network trains worse than a shallower one, with a
higher **training** error, so the problem is optimisation rather than overfitting, and that the
same depth with identity skips trains better instead. This page repeats that on a laptop scale:
four narrow 1-D convnets (16 channels, batch norm, 3-wide kernels) on MNIST-1D, {SHALLOW} and {DEEP} weighted
layers (the paper's CIFAR depths), without and with an identity skip around every pair of convs. Plain and residual nets of
the same depth have the same layers and the same parameter count.

Budget: **{epochs} epochs each**, SGD (lr 0.05, momentum 0.9, cosine schedule), batch 128, seed 0,
the same data for all four. This is far from convergence; it measures how quickly each net
*starts* to optimise, which is where degradation shows first.

## Result

The run {seen}:

{verdict(runs, f"plain{DEEP}", f"plain{SHALLOW}", "Plain")}
{verdict(runs, f"resnet{DEEP}", f"resnet{SHALLOW}", "Residual")}

| config | params | final train loss | test accuracy | train time |
|---|---:|---:|---:|---:|
{rows}

![train loss and validation accuracy of the four runs](img/experiments_curves.png)

## Gradient flow of the deep pair

Gradient norm of every parameterised layer (convs, BN, head) on one training batch, at
initialisation and after {steps} SGD steps (`skiptrain gradflow`). The ratio is the first
layer's (the stem's) norm over the last layer's (the head's).

| net | stem grad norm (init) | head grad norm (init) | stem/head at init | stem/head after {steps} steps |
|---|---:|---:|---:|---:|
{flow_rows}

![gradient norm against depth, plain-{DEEP} vs ResNet-{DEEP}](img/experiments_gradflow.png)

{flow_sentence(flows)}

## Reproduce

```bash
python benchmarks/experiments.py --epochs {epochs}
# or piece by piece:
skiptrain compare configs/experiments/{{plain{SHALLOW},plain{DEEP},resnet{SHALLOW},resnet{DEEP}}}_mnist1d.yaml \\
    --epochs {epochs} --output-dir runs/experiments/compare
skiptrain gradflow configs/experiments/plain{DEEP}_mnist1d.yaml --run {steps} -o plain{DEEP}_gradflow.png --json
skiptrain gradflow configs/experiments/resnet{DEEP}_mnist1d.yaml --run {steps} -o resnet{DEEP}_gradflow.png --json
```

Measured on {cpu_name()} ({os.cpu_count()} cores), {threads} torch threads, torch {torch.__version__}, Python
{platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end; the whole script took {total:.0f} s.
One seed only: differences of a point or two of accuracy are within seed-to-seed noise.
"""


if __name__ == "__main__":
    main()
