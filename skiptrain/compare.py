"""Train several configs on the same data, seed and epoch budget; one table, one figure.

``compare`` is the API behind ``skiptrain compare``: each config gets its own run
directory under the output directory, then ``report.md``, ``compare.json`` and
``curves.png`` (train loss and the validation metric of every run, overlaid) are written
beside them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from .config import Config, plain, where
from .errors import ConfigError
from .outputs import atomic_output, new_folder, write_text
from .tasks import headlines, reported


def metrics() -> list[str]:
    """The tasks' headline metrics; the first that every run reports is the one compared."""
    return list(dict.fromkeys(task.headline for task in headlines()))


def compare(configs: Sequence[str | Path], overrides: Iterable[str] = (), *, epochs: int | None = None,
            output_dir: str | Path | None = None, limit_batches: int | None = None, device: str | None = None,
            quiet: bool = True) -> dict[str, Any]:
    """Train every config with the same overrides and budget; returns what compare.json holds."""
    from .api import load, train

    if len(configs) < 2:
        raise ConfigError("compare needs at least two configs", None, "name two or more config files")
    overrides = list(overrides)
    loaded = [load(path, overrides) for path in configs]
    check_same_budget(loaded, [str(p) for p in configs], epochs)
    out = new_folder(output_dir if output_dir is not None else unique_default())
    runs = []
    for path, config, run_dir in zip(configs, loaded, run_dirs(out, configs)):
        summary = train(config, run_dir=str(run_dir), epochs=epochs, device=device, quiet=quiet, force=True,
                        limit_batches=limit_batches)
        runs.append(run_record(str(path), summary, run_dir))
    result = {"output_dir": str(out), "overrides": overrides, "epochs": runs[0]["epochs"],
              "seed": loaded[0].train.get("seed", 0), "limit_batches": limit_batches, "metric": metric_of(runs),
              "runs": runs, "report": str(out / "report.md"), "curves": str(out / "curves.png")}
    plot_curves(runs, out / "curves.png")
    write_text(out / "report.md", report_markdown(result), option=str(out / "report.md"))
    from .html_compare import write_compare  # report.html: the same, as a page linking each run's report.html

    result["html"] = str(write_compare(result, out))
    write_text(out / "compare.json", json.dumps(result, indent=2) + "\n", option=str(out / "compare.json"))
    return result


def unique_default() -> Path:
    """runs/compare-<time>, with -2, -3, ... when a comparison started in the same second."""
    base = Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    found, n = base, 1
    while found.exists():
        n += 1
        found = base.with_name(f"{base.name}-{n}")
    return found


def check_same_budget(configs: list[Config], names: list[str], epochs: int | None) -> None:
    """A fair comparison: the same data section, seed and (unless --epochs sets it) epochs."""
    first, name = configs[0], names[0]
    for other, other_name in zip(configs[1:], names[1:]):
        if plain(other.data) != plain(first.data):
            raise ConfigError(f"{other_name} trains on other data than {name}", where(other.data, "dataset"),
                              "compare configs with the same `data:` section (or make them equal with --set)")
        if other.train.get("seed", 0) != first.train.get("seed", 0):
            raise ConfigError(f"{other_name} uses another seed than {name}", where(other.train, "seed"),
                              "make them equal with --set train.seed=N")
        if epochs is None and other.train.get("epochs", 10) != first.train.get("epochs", 10):
            raise ConfigError(f"{other_name} trains for {other.train.get('epochs', 10)} epochs, {name} for "
                              f"{first.train.get('epochs', 10)}", where(other.train, "epochs"),
                              "give every run the same budget with --epochs N")


def run_dirs(out: Path, configs: Sequence[str | Path]) -> list[Path]:
    """One directory per config, named after its file; repeated names get -2, -3, ..."""
    seen: dict[str, int] = {}
    dirs = []
    for path in configs:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return dirs


def run_record(config: str, summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from .training.rundir import RunDir

    record = {"config": config, "name": summary["name"], "run_dir": str(run_dir), "params": summary["params"],
              "epochs": summary["epochs"], "final_train_loss": summary.get("final_train_loss"),
              "train_seconds": summary.get("train_seconds")}
    record.update({f"test_{m}": summary[f"test_{m}"] for m in metrics() if f"test_{m}" in summary})
    record["history"] = RunDir(run_dir).history()
    return record


def metric_of(runs: list[dict[str, Any]]) -> str:
    """The test metric every run reports: the headline of their task (accuracy, mean IoU), else loss."""
    task = reported(set.intersection(*(set(r) for r in runs)) if runs else set())
    return f"test_{task.headline}" if task else "test_loss"


def report_markdown(result: dict[str, Any]) -> str:
    metric = result["metric"]
    label = f"test {reported([metric]).label}" if reported([metric]) else "test loss"
    lines = [f"# Comparison: {len(result['runs'])} configs", "",
             f"Same data and seed ({result['seed']}), {result['epochs']} epochs each"
             + (f", at most {result['limit_batches']} batches per split and epoch" if result["limit_batches"] else "")
             + (f"; overrides: {', '.join(f'`{o}`' for o in result['overrides'])}" if result["overrides"] else "")
             + ".", "",
             f"| config | params | final train loss | {label} | train time |",
             "|---|---:|---:|---:|---:|"]
    for run in result["runs"]:
        value = run.get(metric)
        lines.append(f"| {run['name']} (`{run['config']}`) | {run['params']:,} | {_num(run['final_train_loss'])} | "
                     f"{_num(value)} | {_num(run['train_seconds'], '.1f')} s |")
    lines += ["", "![train loss and validation curves](curves.png)", ""]
    return "\n".join(lines)


def _num(value: Any, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def plot_curves(runs: list[dict[str, Any]], target: Path) -> Path:
    """Train loss (left) and the validation metric (right) of every run against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next((k for k in ("val_acc", "val_miou", "val_loss")
                   if all(r["history"] and k in r["history"][0] for r in runs)), None)
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(11 if metric else 5.5, 4), squeeze=False)
    for run in runs:
        epochs = [row["epoch"] for row in run["history"]]
        axes[0][0].plot(epochs, [row["train_loss"] for row in run["history"]], marker=".", label=run["name"])
        if metric:
            axes[0][1].plot(epochs, [row.get(metric) for row in run["history"]], marker=".", label=run["name"])
    axes[0][0].set(xlabel="epoch", ylabel="train loss", title="train loss")
    axes[0][0].legend()
    if metric:
        axes[0][1].set(xlabel="epoch", ylabel=metric.replace("_", " "), title=metric.replace("_", " "))
        axes[0][1].legend()
    fig.tight_layout()
    with atomic_output(target, option=str(target)) as temp:
        fig.savefig(temp, dpi=100, format="png")
    plt.close(fig)
    return target
