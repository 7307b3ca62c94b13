"""Progress: a rich bar per epoch and a table of epoch metrics on a terminal; plain lines elsewhere."""
from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


_FIRST = ("epoch", "train_loss", "val_loss")  # then the task's validation metric (val_acc, val_miou, ...)
_LAST = ("lr", "seconds", "samples_per_s", "skipped_batches")  # skipped: on_nan skip_batch, so far in the run


class Reporter:
    def __init__(self, quiet: bool = False, enabled: bool = True):
        self.enabled = enabled and not quiet
        self.console = Console(stderr=False, highlight=False)
        self.live = self.enabled and sys.stdout.isatty()
        self.rows: list[dict[str, str]] = []
        self.progress: Progress | None = None
        self.task = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.live:
            return
        self.progress = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:,.0f}/s"),
                                 TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, loss=float("nan"), rate=0.0)

    def step(self, loss: float, rate: float, done: int) -> None:
        """``done``: batches of this epoch finished (the loop reports every few batches, not each)."""
        if self.progress is not None:
            self.progress.update(self.task, completed=done, loss=loss, rate=rate)

    def end_epoch(self, row: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if not self.enabled:
            return
        keys = [k for k in _FIRST if k in row] + [k for k in row if k.startswith("val_") and k not in _FIRST] + \
            [k for k in _LAST if k in row]
        self.rows.append({k: _fmt(k, row[k]) for k in keys})
        print("  ".join(f"{k}={_fmt(k, row[k])}" for k in keys), flush=True)

    def finish(self) -> None:
        """On a terminal, the whole run as one table of epoch metrics."""
        if not (self.live and self.rows):
            return
        columns = list(dict.fromkeys(key for row in self.rows for key in row))  # skipped_batches may come late
        table = Table(*columns, title="epochs", title_justify="left")
        for row in self.rows:
            table.add_row(*(row.get(key, "") for key in columns))
        self.console.print(table)

    def info(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)


def _fmt(key: str, value: Any) -> str:
    if key == "epoch":
        return str(value)
    if key == "lr":
        return f"{value:.3g}"
    if key == "samples_per_s":
        return f"{value:,.0f}"
    if key == "seconds":
        return f"{value:.1f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
