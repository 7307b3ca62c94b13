"""A run as one self-contained HTML page (``skiptrain report``, and RUN_DIR/report.html after every ``train``).

Everything is inline — styles, the network diagram and the curves as SVG, sample images as small PNG
``data:`` URIs — so the page opens from disk or as an e-mail attachment, with no network. The page is
assembled from the run directory alone (metrics.jsonl, summary.json, config.yaml, transfer.json and a
checkpoint), so ``skiptrain report`` rebuilds the same page that ``train`` wrote. What metrics.jsonl does
not keep — the confusion matrix, per-class figures and the worst samples of the checkpoint (best.pt, else
last.pt) on the validation split — comes from the record training wrote of that checkpoint's validation
pass (``validation_record``); without one that fits (an older run, --limit-batches) the checkpoint is
measured once more. What to show comes from the task
(``Task.sample_losses`` and ``show_sample``, its metrics' keys), never from its name. Every text of the
user's is escaped.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CheckpointError, ConfigError, Location, SkiptrainError, warn
from .outputs import check_output, write_text
from .report_images import image_html as _image, input_html as _input_html
from .svg_charts import Series, heatmap, line_chart, number
from .training.rundir import RunDir, resumable, run_id

MAX_SAMPLES = 64  # a few dozen samples at most: the page stays light
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:18px 22px 60px}
h1{font-size:22px;margin:6px 0 2px}h2{font-size:17px;margin:26px 0 10px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
.sub{color:#5b6474;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 12px;min-width:110px}
.card b{display:block;font-size:18px}.card span{color:#5b6474;font-size:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.charts svg,.panel{background:#fff;border:1px solid #dde1e7;border-radius:6px}
svg.chart{width:100%;height:auto}svg.heatmap{width:100%;height:auto}
.panel{padding:10px;overflow:auto}
#totals{margin-bottom:10px;line-height:1.6}.skd-tools{font-size:13px;margin:0 0 8px}.skd-tools span{color:#5b6474;margin-left:8px}
.skd-body{display:flex;gap:16px;align-items:flex-start}.skd-scroll{overflow:auto;max-height:900px;flex:0 1 auto}
#skd-info{position:sticky;top:8px;flex:0 0 300px;white-space:pre-wrap;font:12px monospace;background:#f6f7f9;
border:1px solid #dde1e7;padding:8px;margin:0}
table{border-collapse:collapse;font-size:13px;background:#fff}
td,th{border:1px solid #e3e6eb;padding:3px 8px;text-align:left}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.scroll{max-height:420px;overflow:auto;display:inline-block}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.samples{display:flex;flex-wrap:wrap;gap:8px}
.sample{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:6px;font-size:12px;min-width:170px}
.sample img{width:72px;height:72px;image-rendering:pixelated;object-fit:contain;border:1px solid #eee}
.sample .imgs{display:flex;gap:4px}.sample .wrong{color:#b3261e}.sample .ok{color:#1b6e3a}
pre{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px;font-size:12px;overflow:auto;max-height:520px}
.note{color:#5b6474;font-size:12px}
"""


@dataclass
class Measured:
    """The checkpoint on one split: the task's metric summary and the worst samples, worst first."""

    split: str
    checkpoint: str
    epoch: int
    result: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0
    total: int = 0
    class_names: list[str] | None = None
    per_class: tuple[str, str] | None = None
    note: str = ""  # why the checkpoint was measured again although training had recorded its validation


def write_report(source: str | Path, output: str | Path | None = None, *, overwrite: bool = False,
                 device: Any = "auto", which: str | None = None, samples: int = 24) -> dict[str, Any]:
    """Write the report of the run directory ``source``: RUN_DIR/report.html (the run's own file, always
    refreshed), or ``output`` (never over an input or a run's file; an existing file only with ``overwrite``)."""
    started = time.perf_counter()
    run = Path(source)
    if not run.is_dir() or run_id(run) is None:
        raise CheckpointError(f"{run} is not a run directory", Location(str(run)),
                              "give a folder written by `skiptrain train` (it holds config.yaml and metrics.jsonl)")
    if which not in (None, "best", "last"):
        raise CheckpointError(f"--checkpoint {which!r}: a run's checkpoint is best or last", Location("--checkpoint"),
                              "pass --checkpoint best or --checkpoint last")
    if not 0 <= samples <= MAX_SAMPLES:
        raise ConfigError(f"--samples {samples}: the report shows 0 to {MAX_SAMPLES} samples", Location("--samples"))
    target = run / "report.html" if output is None else check_output(output, [run], overwrite=overwrite)
    page = run_page(run, device=device, which=which, samples=samples)
    write_text(target, page, option=str(target) if output is None else "--output")
    return {"output": str(target), "bytes": len(page.encode("utf-8")), "seconds": time.perf_counter() - started}


def after_training(run_dir: Path, device: Any) -> None:
    """``train``'s last step: write RUN_DIR/report.html; a failure is a warning (the run itself is done)."""
    try:
        write_report(run_dir, device=device)
    except (SkiptrainError, OSError, RuntimeError, ValueError) as exc:
        warn(f"report.html was not written ({getattr(exc, 'message', None) or exc}); "
             f"try again with: skiptrain report {run_dir}")


def run_page(run: Path, *, device: Any = "auto", which: str | None = None, samples: int = 24) -> str:
    """The whole page of one run, as text."""
    import yaml

    rundir = RunDir(run)
    history = rundir.history()
    summary = _json(run / "summary.json") or {}
    config_text = _text(run / "config.yaml")
    transfer = _json(run / "transfer.json")
    restored, measured, note = None, None, ""
    if resumable(run) or (run / "checkpoints" / "best.pt").is_file():
        from .api import restore
        from .training.setup import select_device

        which = which or ("best" if (run / "checkpoints" / "best.pt").is_file() else "last")
        dev = select_device(str(device)) if not hasattr(device, "type") else device
        restored = restore(run, which, device=dev)
        measured = measure(restored, dev, samples)
        note = "The data has no validation or test split, so the checkpoint was not measured."
    else:
        note = "This run has no checkpoint yet, so nothing was measured."
    plan = restored.plan if restored is not None else _plan(config_text)
    name = summary.get("name") or (plan.graph.name if plan is not None else run.name)
    parts = [_header(name, run, summary, history, measured),
             _section("Network", _diagram(plan)),
             _section("Training curves", _curves(history)),
             _section(f"Measured on the {measured.split} split" if measured else "Evaluation",
                      _evaluation(measured) if measured else f"<p class='note'>{escape(note)}</p>")]
    if transfer is not None:
        parts.append(_section("Transfer (train.init)", _transfer(transfer)))
    config = yaml.safe_load(config_text) if config_text else {}
    parts.append(_section("Run", _details(summary, history, config or {}, restored)))
    parts.append(_section("Resolved config", f"<pre>{escape(config_text or '(no config.yaml)')}</pre>"))
    return page(f"{name} — skiptrain report", "".join(parts))


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main>{body}"
            f"<p class='note'>Written by skiptrain {escape(__version__)} on {time.strftime('%Y-%m-%d %H:%M')}; "
            f"self-contained: no network, no scripts but the diagram's own.</p></main></body></html>\n")


def measure(restored, dev, samples: int = 24, max_samples: int = 10_000) -> Measured | None:
    """The checkpoint on the validation split (else test), at most ``max_samples`` samples in the split's
    own order: the task's metrics and the ``samples`` samples of highest loss. What training recorded of
    that checkpoint's validation pass (``validation_record``) when it covers as much: no forward pass then."""
    import torch

    from .api import restored_data
    from .evaluate import Worst
    from .tasks import get_task

    try:
        recorded = _recorded(restored, samples, max_samples)
        note = ""
    except SkiptrainError as exc:
        recorded, note = None, f"Measured again: the validation record is damaged ({exc.message})."
    if recorded is not None:
        return recorded
    task_name, data = restored_data(restored, dev)
    task = get_task(task_name)
    split_name, split = ("val", data.val) if data.val is not None else ("test", data.test)
    if split is None:
        return None
    metrics, worst, seen = task.metrics(data.num_classes), Worst(task, samples), 0
    model = restored.model
    with torch.inference_mode():
        for x, y in split.epoch(0):
            if seen >= max_samples:
                break
            out = model(x)
            metrics.update(out, y)
            seen += len(x)
            worst.update(x, out, y)
    shown = _shown(task, worst.samples(), data.mean, data.std, data.class_names)
    return Measured(split_name, Path(restored.state.path).name, restored.state.epoch, metrics.summary(), shown,
                    seen, split.num_samples, data.class_names, task.per_class, note)


def _recorded(restored, samples: int, max_samples: int) -> Measured | None:
    """The checkpoint's validation as training recorded it (``validation_record.usable``), without a forward pass."""
    from .tasks import get_task
    from .validation_record import usable

    record, meta = usable(restored.state, samples, max_samples), restored.data
    if record is None:
        return None
    task, names = get_task(record["task"]), meta.get("class_names")
    return Measured(record["split"], Path(restored.state.path).name, restored.state.epoch, record["result"],
                    _shown(task, record["samples"][:samples], meta.get("mean"), meta.get("std"), names),
                    record["evaluated"], record["total"], names, task.per_class)


def _shown(task, rows: list[dict[str, Any]], mean, std, class_names) -> list[dict[str, Any]]:
    """The report's sample cards from ``Worst.samples()`` rows (worst first)."""
    return [{"loss": row["loss"], "input": _input_html(row["input"], mean, std),
             "shown": task.show_sample(row["output"].numpy(), row["target"].numpy(), class_names)} for row in rows]


def _plan(config_text: str | None):
    """The plan of a run without a checkpoint, from its config.yaml (None if that does not build)."""
    if not config_text:
        return None
    from .api import check_model, load

    try:
        import yaml

        return check_model(load(yaml.safe_load(config_text), origin="config.yaml"))
    except (SkiptrainError, ValueError, TypeError):
        return None


def _diagram(plan) -> str:
    """The network (``diagram.diagram_section``: repeated blocks collapsed and opened by a click, projections
    highlighted, hover for a node's details) and its totals."""
    if plan is None:
        return "<p class='note'>The config does not build a model here.</p>"
    from .diagram import diagram_section
    from .report import summary_lines

    totals = "".join(f"<div>{escape(line)}</div>" for line in summary_lines(plan))
    return (f"<div class='panel note' id='totals'>{totals}</div>"
            f"<div class='panel diagram' id='diagram'>{diagram_section(plan)}</div>")


def _section(title: str, body: str) -> str:
    anchor = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
    return f"<section id='{anchor}'><h2>{escape(title)}</h2>{body}</section>"


def _header(name: str, run: Path, summary: dict, history: list[dict], measured: Measured | None) -> str:
    cards = [(f"{summary['params']:,}", "parameters")] if isinstance(summary.get("params"), int) else []
    if history:
        cards.append((str(history[-1].get("epoch", len(history))), "epochs"))
        cards.append((number(history[-1]["train_loss"]), "final train loss"))
    best = summary.get("best")
    if isinstance(best, dict) and best.get("value") is not None:
        cards.append((number(best["value"]), f"best {best.get('metric')} (epoch {best.get('epoch')})"))
    cards += [(number(v), k.replace("_", " ")) for k, v in summary.items()
              if k.startswith("test_") and isinstance(v, (int, float))]
    html = "".join(f"<div class='card'><b>{escape(v)}</b><span>{escape(k)}</span></div>" for v, k in cards)
    return (f"<h1>{escape(name)}</h1><div class='sub'>run directory <code>{escape(str(run))}</code></div>"
            f"<div class='cards'>{html}</div>")


def _curves(history: list[dict]) -> str:
    """Loss (train, validation), each other validation metric, learning rate and throughput per epoch."""
    if not history:
        return "<p class='note'>No epoch finished yet (metrics.jsonl is empty).</p>"
    epochs = [row.get("epoch") for row in history]
    keys = list(dict.fromkeys(k for row in history for k in row))

    def column(key: str) -> list:
        return [row.get(key) for row in history]

    losses = [Series(k.replace("_", " "), epochs, column(k), dashed=not k.startswith("train"))
              for k in keys if k.endswith("loss")]
    charts = [line_chart(losses, title="loss", ylabel="loss", chart_id="chart-loss")]
    charts += [line_chart([Series(k.replace("_", " "), epochs, column(k))], title=k.replace("_", " "),
                          ylabel=k.removeprefix("val_"), chart_id=f"chart-{k}")
               for k in keys if k.startswith("val_") and not k.endswith("loss")]
    if "lr" in keys:
        charts.append(line_chart([Series("learning rate", epochs, column("lr"))], title="learning rate (end of epoch)",
                                 ylabel="lr", log_y=True, chart_id="chart-lr"))
    if "samples_per_s" in keys:
        charts.append(line_chart([Series("train samples/s", epochs, column("samples_per_s"))],
                                 title="training throughput", ylabel="samples/s", chart_id="chart-throughput"))
    return f"<div class='charts' id='curves'>{''.join(charts)}</div>"


def _evaluation(m: Measured) -> str:
    capped = f" (the first {m.evaluated:,} of {m.total:,})" if m.evaluated < m.total else ""
    lines = [f"<p class='sub'>checkpoint <code>{escape(m.checkpoint)}</code> (epoch {m.epoch}), "
             f"{m.evaluated:,} samples{capped}</p>"]
    lines += [f"<p class='note'>{escape(m.note)}</p>"] if m.note else []
    scalars = [(k, v) for k, v in m.result.items() if isinstance(v, (int, float))]
    lines.append("<div class='cards'>" + "".join(f"<div class='card'><b>{number(v)}</b><span>{escape(k)}</span></div>"
                                                 for k, v in scalars) + "</div>")
    confusion = m.result.get("confusion")
    if confusion:
        k = len(confusion)
        names = [str(m.class_names[i]) if m.class_names and i < len(m.class_names) else str(i) for i in range(k)]
        lines.append("<div class='row'><div class='panel' id='confusion' style='flex:1 1 420px;max-width:620px'>"
                     + heatmap(confusion, names, chart_id="confusion-matrix") + "</div>"
                     + _per_class(confusion, names, m) + "</div>")
    if m.samples:
        lines.append(f"<h3>{len(m.samples)} samples of highest loss, worst first</h3><div class='samples' id='samples'>"
                     + "".join(_sample(s) for s in m.samples) + "</div>")
    return "".join(lines)


def _per_class(confusion: list[list[int]], names: list[str], m: Measured) -> str:
    """Support, precision, recall (and the task's own per-class figure when it adds one: IoU)."""
    k = len(confusion)
    support = [sum(row) for row in confusion]
    predicted = [sum(confusion[i][j] for i in range(k)) for j in range(k)]
    precision = [confusion[j][j] / predicted[j] if predicted[j] else None for j in range(k)]
    recall = [confusion[j][j] / support[j] if support[j] else None for j in range(k)]
    columns = [("precision", precision), ("recall", recall)]
    key, heading = m.per_class or (None, None)
    own = m.result.get(key) if key else None
    if isinstance(own, list) and len(own) == k and any(
            r is not None and abs(o - r) > 1e-9 for o, r in zip(own, recall)):  # classification's accuracy is recall
        columns.append((heading, [o if support[j] or predicted[j] else None for j, o in enumerate(own)]))
    head = "".join(f"<th class='n'>{escape(h)}</th>" for h, _ in columns)
    rows = "".join(f"<tr><td>{escape(names[j])}</td><td class='n'>{support[j]:,}</td>"
                   + "".join(f"<td class='n'>{'-' if col[j] is None else f'{col[j]:.3f}'}</td>" for _, col in columns)
                   + "</tr>" for j in range(k))
    return (f"<div class='scroll'><table id='per-class'><tr><th>class</th><th class='n'>support</th>{head}</tr>"
            f"{rows}</table></div>")


def _sample(s: dict[str, Any]) -> str:
    prediction, truth = s["shown"]
    right = isinstance(prediction, str) and isinstance(truth, str) and prediction.rsplit(" (", 1)[0] == truth
    pictures = [(v, label) for v, label in ((prediction, "prediction"), (truth, "truth")) if not isinstance(v, str)]
    images = s["input"] + "".join(_image(v, label) for v, label in pictures)
    caption = (f"<div class='note'>{' · '.join(['input', *(label for _, label in pictures)])}</div>"
               if pictures else "")  # which image is which: the input, then the masks
    texts = "".join(f"<div class='{'ok' if right else 'wrong'}'>{label}: {escape(v)}</div>"
                    for v, label in ((prediction, "prediction"), (truth, "truth")) if isinstance(v, str))
    return (f"<div class='sample'><div class='imgs'>{images}</div>{caption}{texts}"
            f"<div class='note'>loss {number(s['loss'])}</div></div>")


def _transfer(transfer: dict) -> str:
    rows = [("source", transfer.get("source")), ("form", transfer.get("form")), ("strict", transfer.get("strict"))]
    for key in ("tensors", "parameters"):
        part = transfer.get(key) or {}
        if part:
            rows.append((f"{key} loaded", f"{part.get('loaded', 0):,} of {part.get('total', 0):,} "
                                          f"({100 * float(part.get('share', 0)):.1f}%)"))
    rows += [(f"cast {pair}", n) for pair, n in (transfer.get("cast") or {}).items()]
    table = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    missing = transfer.get("not_loaded") or []
    shown = "".join(f"<tr><td>{escape(str(e.get('key', '')))}</td><td>{escape(str(e.get('reason', '')))}</td>"
                    f"<td>{escape(_shapes(e))}</td></tr>" for e in missing[:200])
    more = f"<p class='note'>and {len(missing) - 200} more (all in transfer.json)</p>" if len(missing) > 200 else ""
    rest = (f"<h3>not loaded ({len(missing)}): kept their fresh initialisation</h3><div class='scroll'><table>"
            f"<tr><th>tensor</th><th>reason</th><th>file vs model</th></tr>{shown}</table></div>{more}") if missing else ""
    return f"<table id='transfer'>{table}</table>{rest}"


def _shapes(entry: dict) -> str:
    file, model = entry.get("file_shape"), entry.get("model_shape")
    return f"{file} vs {model}" if file is not None or model is not None else ""


def _details(summary: dict, history: list[dict], config: dict, restored) -> str:
    import torch

    # the settings in force (defaults filled in) from the checkpoint; the config's train section without one
    train = dict(config.get("train") or {}, **((restored.state.settings or {}) if restored is not None else {}))
    device = str(summary.get("device", "?"))
    precision = str(train.get("precision", "auto"))
    if precision == "auto":
        precision += ": bf16 autocast where the GPU supports it" if device.startswith("cuda") else ": fp32"
    seconds = [r.get("seconds") for r in history if isinstance(r.get("seconds"), (int, float))]
    speeds = [r.get("samples_per_s") for r in history if isinstance(r.get("samples_per_s"), (int, float))]
    trained = restored.state.skiptrain_version if restored is not None else None
    rows = [("device", device + (f" x {summary['world_size']} processes" if summary.get("world_size", 1) > 1 else "")),
            ("precision", precision), ("seed", train.get("seed", 0)),
            ("deterministic", train.get("deterministic", False)),
            ("training time", f"{sum(seconds):.1f} s over {len(seconds)} epochs" if seconds else "-"),
            ("throughput", f"{sum(speeds) / len(speeds):,.0f} samples/s (mean over epochs), "
                           f"best epoch {max(speeds):,.0f}" if speeds else "-"),
            ("skiptrain", __version__ + (f" (trained with {trained})" if trained and trained != __version__ else "")),
            ("torch", torch.__version__), ("python", platform.python_version())]
    return "<table id='details'>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
                                            for k, v in rows) + "</table>"


def _json(path: Path) -> Any:
    """A JSON file of the run, or None when it is missing or cut short (a kill during an older, non-atomic write)."""
    text = _text(path)
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return None


def _text(path: Path) -> str | None:
    from .files import MiB, read_bytes

    if not path.is_file():
        return None
    return read_bytes(path, path.name, 64 * MiB).decode("utf-8", "replace")
