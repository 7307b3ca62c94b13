"""``compare``'s runs as one self-contained HTML page (report.html beside report.md): the curves of every
run overlaid, the final figures in one table, and a link to each run's own report.html.

The page is built from what ``compare`` returns (compare.json), in the style of a run's page
(``html_report.page``); every text of the user's (config paths, run names, overrides) is escaped.
"""
from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any

from .html_report import page
from .outputs import write_text
from .svg_charts import Series, line_chart, number


def write_compare(result: dict[str, Any], folder: str | Path) -> Path:
    """Write FOLDER/report.html (compare made the folder new, so nothing of the user's is replaced)."""
    target = Path(folder) / "report.html"
    return write_text(target, compare_page(result, Path(folder)), option=str(target))


def compare_page(result: dict[str, Any], folder: Path) -> str:
    runs = result["runs"]
    labels = [Path(run["run_dir"]).name for run in runs]
    metric = result.get("metric", "test_loss")
    keys = [k for k in dict.fromkeys(k for run in runs for row in run["history"] for k in row)
            if all(any(k in row for row in run["history"]) for run in runs)]
    charts = [line_chart([Series(label, [r.get("epoch") for r in run["history"]], [r.get(key) for r in run["history"]])
                          for label, run in zip(labels, runs)],
                         title="learning rate" if key == "lr" else key.replace("_", " "), ylabel=key.split("_", 1)[-1], chart_id=f"chart-{key}",
                         log_y=key == "lr")
              for key in keys if key.endswith("loss") or key.startswith("val_") or key == "lr"]
    tests = [k for k in dict.fromkeys(k for run in runs for k in run) if k.startswith("test_")]
    head = ["run", "config", "params", "final train loss", *(k.replace("_", " ") for k in tests), "train time",
            "report"]
    rows = []
    for label, run in zip(labels, runs):
        link = os.path.relpath(Path(run["run_dir"]) / "report.html", folder)
        cells = [escape(label), f"<code>{escape(str(run['config']))}</code>", f"{run['params']:,}",
                 _num(run.get("final_train_loss")), *(_num(run.get(k), bold=k == metric) for k in tests),
                 "n/a" if run.get("train_seconds") is None else f"{run['train_seconds']:.1f} s",
                 f"<a href='{escape(Path(link).as_posix(), quote=True)}'>report.html</a>"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = ("<table id='runs'><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" + "".join(rows)
             + "</table>")
    overrides = ", ".join(f"<code>{escape(o)}</code>" for o in result.get("overrides") or [])
    budget = (f"Same data and seed ({escape(str(result.get('seed')))}), {escape(str(result.get('epochs')))} epochs each"
              + (f", at most {result['limit_batches']} batches per split and epoch" if result.get("limit_batches") else "")
              + (f"; overrides: {overrides}" if overrides else "") + ".")
    body = (f"<h1>Comparison: {len(runs)} configs</h1><p class='sub'>{budget}</p>"
            f"<section id='final-metrics'><h2>Final metrics</h2>{table}</section>"
            f"<section id='training-curves'><h2>Training curves</h2><div class='charts' id='curves'>{''.join(charts)}"
            "</div></section>")
    return page(f"Comparison of {len(runs)} configs — skiptrain", body)


def _num(value: Any, bold: bool = False) -> str:
    text = "n/a" if not isinstance(value, (int, float)) else number(value)
    return f"<b>{text}</b>" if bold else text
