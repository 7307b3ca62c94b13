"""A run directory: the resolved config, one metrics line per epoch, checkpoints, summary, curves."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import SkiptrainError


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.jsonl"

    @classmethod
    def create(cls, out_dir: str, name: str, run_dir: str | None, force: bool = False) -> "RunDir":
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path(out_dir) / f"{name}-{stamp}"
            k = 1
            while path.exists():
                k += 1
                path = Path(out_dir) / f"{name}-{stamp}-{k}"
        else:
            path = Path(run_dir)
            if (path / "checkpoints").exists() and not force:
                raise SkiptrainError(f"{path} already holds a run", None,
                                     f"continue it with --resume {path}, pick another --run-dir, "
                                     "or pass --force to overwrite it")
        run = cls(path)
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        if run.metrics_path.exists():
            run.metrics_path.unlink()
        return run

    def write_config(self, config: dict) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def history(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything after it is discarded
        return rows

    def truncate_history(self, epochs_done: int) -> None:
        """Keep the metrics of epochs that the resumed checkpoint includes: each epoch once."""
        rows = [r for r in self.history() if r.get("epoch", 0) <= epochs_done]
        self._write_lines(rows)

    def _write_lines(self, rows: list[dict]) -> None:
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.metrics_path)

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def plot_curves(self) -> Path | None:
        """curves.png: losses and the validation metric against epochs."""
        rows = self.history()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in rows]
        metric = next((k for k in rows[0] if k.startswith("val_") and k != "val_loss"), None)  # the task's
        fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(10 if metric else 5, 4), squeeze=False)
        axes[0][0].plot(epochs, [r["train_loss"] for r in rows], label="train")
        if "val_loss" in rows[0]:
            axes[0][0].plot(epochs, [r.get("val_loss") for r in rows], label="val")
        axes[0][0].set(xlabel="epoch", ylabel="loss", title="loss")
        axes[0][0].legend()
        if metric:
            axes[0][1].plot(epochs, [r.get(metric) for r in rows], color="tab:green")
            axes[0][1].set(xlabel="epoch", ylabel=metric, title=metric)
        fig.tight_layout()
        target = self.path / "curves.png"
        fig.savefig(target, dpi=100)
        plt.close(fig)
        return target
