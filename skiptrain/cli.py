"""The `skiptrain` command: a thin Typer shell over the Python API.

Each command parses options, calls the API and prints; a ``SkiptrainError`` becomes one message with its location and
hint on stderr and exit code 1; usage errors exit 2. torch is imported inside the commands, so ``--help`` stays fast.
"""
from __future__ import annotations

import gc
import json
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console

from . import __version__
from .errors import SkiptrainError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Train networks written as graphs in YAML, with skip connections projected automatically.")
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

ConfigArg = typer.Argument(..., help="A config YAML (or a model-only YAML).", show_default=False)
SetOption = typer.Option([], "--set", metavar="KEY=VALUE",
                         help="Override a config value, e.g. --set train.optimizer.lr=0.05 (repeatable).")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn skiptrain's errors into one clear message and exit status 1, never a traceback."""
    try:
        yield
    except SkiptrainError as exc:
        sys.stderr.write(exc.format() + "\n")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        raise typer.Exit(130) from None


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector for a short command. Importing torch and the meta kernels' torch._dynamo and sympy
    makes some 300,000 objects, and each full collection walks all of them: 0.6 s of a 2-3 s `validate` (docs/benchmarks.md).
    Reference counting still frees everything not in a cycle; the collector's state is restored after, for in-process callers."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _emit(text: str, output: Optional[Path], inputs: tuple = ()) -> None:
    """Write a command's text to ``--output`` (checked, atomically; saying so on stderr) or to stdout."""
    if output is not None:
        from .outputs import check_output, write_text

        write_text(check_output(output, inputs), text)
        err.print(f"wrote {output}", markup=False)
    else:
        sys.stdout.write(text)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings as one line on stderr, like errors (the library itself never prints)."""
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def _version(value: bool) -> None:
    if value:
        print(f"skiptrain {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Train networks written as graphs in YAML, with skip connections projected automatically."""
    import warnings

    warnings.showwarning = _show_warning


@app.command()
def validate(
    config: Path = ConfigArg,
    overrides: List[str] = SetOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
    strict: bool = typer.Option(False, "--strict", help="Every shape mismatch is an error (projection: none)."),
) -> None:
    """Check a config: every node's shape, parameters and multiply-adds, every skip and projection, and the data: and train: keys."""
    with user_errors(), no_cycle_collection():
        from .api import check_config
        from .report import node_table, plan_json, projection_table, summary_lines

        plan = check_config(config, overrides, strict=strict)
        if as_json:
            sys.stdout.write(json.dumps(plan_json(plan)) + "\n")
            return
        out.print(node_table(plan))
        if plan.projections:
            out.print(projection_table(plan))
        for line in summary_lines(plan):
            out.print(line, markup=False)
        out.print(f"{config}: valid", markup=False)


class GraphFormat(str, Enum):
    mermaid = "mermaid"
    dot = "dot"
    svg = "svg"
    html = "html"


@app.command()
def graph(
    config: Path = ConfigArg,
    overrides: List[str] = SetOption,
    fmt: GraphFormat = typer.Option(GraphFormat.mermaid, "--format", "-f", help="mermaid, dot, svg or html (blocks open)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Print the network as a graph, skip edges and projections marked."""
    with user_errors():
        from .api import check_model
        from .diagram import render_html, render_svg
        from .report import dot, mermaid

        if output is not None:  # before any work: never the config itself, a folder or a missing folder
            from .outputs import check_output

            check_output(output, [config])
        plan = check_model(config, overrides)
        render = {GraphFormat.mermaid: mermaid, GraphFormat.dot: dot, GraphFormat.svg: render_svg,
                  GraphFormat.html: render_html}[fmt]
        _emit(render(plan), output, (config,))


@app.command()
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="A config YAML (optional with --resume: the checkpoint's own).",
                                            show_default=False),
    overrides: List[str] = SetOption,
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Exactly this run directory (default runs/<name>-<time>)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override train.epochs."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 or mps."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue from a run directory or checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result."),
    force: bool = typer.Option(False, "--force",
                               help="Replace a --run-dir that holds another run (its files are removed first)."),
    limit_batches: Optional[int] = typer.Option(None, "--limit-batches", min=1,
                                                help="At most this many batches per split and epoch (a smoke test)."),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1,
                                        help="Train in N processes on this machine (DDP through torch.distributed.run)."),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0, help="With --nproc: after a process fails, restart "
                                     "all up to K times, each time from the run directory's last checkpoint."),
) -> None:
    """Train a config: checkpoints, metrics, curves and test metrics in a run directory."""
    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        if run_dir is None:  # every process must write to the same place: fix the name once, here
            raise typer.BadParameter("--nproc needs --run-dir (all processes share one run directory)",
                                     param_hint="--run-dir")
        from .distributed import check_launch, launch, relaunch_args

        if config is not None:
            with user_errors():  # the common mistakes, caught once here rather than once per process
                from .api import load

                check_launch(load(config, overrides), nproc, device)
        raise typer.Exit(launch(nproc, relaunch_args(ctx, leave_out=("nproc", "max_restarts")), max_restarts))
    with user_errors():
        from . import api
        from .distributed import restart_resume

        resume, force = restart_resume(run_dir, resume, force)  # torchrun restarted us: from the last checkpoint

        if config is None and resume is None:
            raise typer.BadParameter("give a CONFIG, or --resume RUN_DIR", param_hint="CONFIG")
        summary = api.train(config, overrides, resume=resume, run_dir=run_dir, epochs=epochs, device=device,
                            quiet=quiet, force=force, limit_batches=limit_batches)
        if quiet and "run_dir" in summary:  # rank 0 only, under DDP
            from .training.loop import result_line

            if result_line(summary):
                print(result_line(summary))
            print(f"run directory: {summary['run_dir']}")
        if summary.get("world_size", 1) > 1:
            # The run is complete and the group left; skip interpreter teardown, where gloo's
            # threads sometimes abort a finished worker ("terminate called without an active exception").
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


class Split(str, Enum):
    val = "val"
    test = "test"


@app.command("eval")
def eval_command(
    source: str = typer.Argument(..., help="A run directory or a checkpoint file.", show_default=False),
    split: Split = typer.Option(Split.test, "--split", help="Which split to measure."),
    which: str = typer.Option("last", "--checkpoint", help="last or best (for a run directory)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
) -> None:
    """Measure a trained model: loss, accuracy, top-5 and per class, or mean IoU; a confusion-matrix PNG."""
    with user_errors():
        from rich.table import Table

        from .api import evaluate
        from .report import literal_row
        from .tasks import TASKS

        result = evaluate(source, split.value, which, device, confusion_png=True)
        names = result.get("class_names") or [str(i) for i in range(len(result.get("confusion") or []))]
        if as_json:
            sys.stdout.write(json.dumps(result) + "\n")
            return
        task = TASKS.get(result["task"])
        if task.per_class and result.get(task.per_class[0]):
            table = Table("class", task.per_class[1], title=f"{split.value} split, epoch {result['epoch']}",
                          title_justify="left")
            for name, value in zip(names, result[task.per_class[0]]):
                table.add_row(*literal_row([name, f"{value:.4f}"]))
            out.print(table)
        for key in task.shown:
            if key in result:
                out.print(f"{key}: {result[key]:.4f}", markup=False)
        if "confusion_png" in result:
            out.print(f"confusion matrix: {result['confusion_png']}", markup=False)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


@app.command()
def export(
    source: str = typer.Argument(..., help="A run directory, a checkpoint, or a config (random weights).",
                                 show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="The .onnx file to write.", show_default=False),
    opset: Optional[int] = typer.Option(None, "--opset", min=7, help="ONNX opset (default: the exporter's)."),
    batch: str = typer.Option("dynamic", "--batch", help="dynamic, or a fixed batch size N."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Check with onnx.checker and compare onnxruntime to PyTorch."),
) -> None:
    """Export to ONNX (eval mode, named input/output, metadata) and verify against PyTorch."""
    if batch != "dynamic" and not (batch.isdigit() and int(batch) > 0):
        raise typer.BadParameter("dynamic, or a positive integer", param_hint="--batch")
    with user_errors():
        from .api import export as export_onnx

        report = export_onnx(source, output, opset=opset, batch=batch, verify=verify)
        if report["fallback_reason"]:
            err.print(f"warning: the dynamo exporter failed ({report['fallback_reason']}); "
                      "used the TorchScript-based exporter instead", markup=False)
        out.print(f"exported {report['name']} to {report['output']} ({report['exporter']} exporter, "
                  f"opset {report['opset']}, batch {report['batch']}{', sequence 1..%s' % report['context'] if report.get('context') else ''}) in {report['seconds']:.1f} s", markup=False)
        if report["checks"] is not None:
            out.print("onnx.checker: ok", markup=False)
            for check in report["checks"]:
                out.print(f"onnxruntime vs PyTorch, batch {check['batch']}{', %s tokens' % check['length'] if check.get('length') else ''}, `{check['output']}`: max abs diff "
                          f"{check['max_abs']:.2e}, max rel diff {check['max_rel']:.2e} "
                          f"(tolerance atol {report['atol']:g} + rtol {report['rtol']:g})", markup=False)
        out.print(f"file size: {_megabytes(report['size_bytes'])}", markup=False)
        if report["latency_ms"]:
            ms = report["latency_ms"]
            out.print(f"latency at batch {report['latency_batch']}: onnxruntime {ms['onnxruntime']:.3f} ms, PyTorch {ms['pytorch']:.3f} ms "
                      f"({ms['pytorch'] / max(ms['onnxruntime'], 1e-9):.1f}x)", markup=False)


@app.command()
def predict(
    source: str = typer.Argument(..., help="A run directory, a checkpoint, or an .onnx file.", show_default=False),
    inputs: List[Path] = typer.Argument(..., help="Images (PNG, JPEG), .npy arrays, .txt prompts (language models), or folders of them.",
                                        show_default=False),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many classes to show per input."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir",
                                              help="Where segmentation masks go (default predictions/)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
) -> None:
    """Predict on images or arrays: top classes with probabilities, or segmentation masks as PNG."""
    with user_errors():
        from rich.table import Table

        from .api import predict as run_predict
        from .report import literal_row
        from .tasks import answers_table

        results = run_predict(source, inputs, top=top, output_dir=output_dir)
        if as_json:
            sys.stdout.write(json.dumps({"source": source, "predictions": results}) + "\n")
            return
        columns, groups = answers_table(results)
        table = Table(*columns, title_justify="left")
        for group in groups:
            for i, row in enumerate(group, 1):
                table.add_row(*literal_row(row), end_section=i == len(group))
        out.print(table)


@app.command("compare")
def compare_command(
    configs: List[Path] = typer.Argument(..., help="Two or more config YAMLs.", show_default=False),
    overrides: List[str] = SetOption,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="The same train.epochs for every run."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir",
                                              help="A new or empty folder for the runs and the report (default runs/compare-<time>)."),
    limit_batches: Optional[int] = typer.Option(None, "--limit-batches", min=1,
                                                help="At most this many batches per split and epoch."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 or mps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the report."),
) -> None:
    """Train several configs on the same data, seed and budget: report.md, compare.json, curves.png."""
    if len(configs) < 2:
        raise typer.BadParameter("give at least two configs", param_hint="CONFIGS")
    with user_errors():
        from .api import compare

        result = compare(configs, overrides, epochs=epochs, output_dir=output_dir, limit_batches=limit_batches,
                         device=device, quiet=quiet)
        sys.stdout.write(Path(result["report"]).read_text())
        print(f"output directory: {result['output_dir']}")


@app.command("gradflow")
def gradflow_command(
    config: Path = ConfigArg,
    overrides: List[str] = SetOption,
    run: int = typer.Option(0, "--run", min=0, metavar="N_STEPS", help="Also measure after N training steps."),
    output: Path = typer.Option(Path("gradflow.png"), "--output", "-o", help="The PNG to write."),
    as_json: bool = typer.Option(False, "--json", help="Print the per-layer norms as one JSON object."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or mps."),
) -> None:
    """Gradient norm of every parameterised layer on one training batch, at init (and after N steps)."""
    with user_errors():
        from .api import gradflow
        from .gradflow import first_to_last

        result = gradflow(config, overrides, steps=run, device=device, plot=output)
        if as_json:
            sys.stdout.write(json.dumps(result) + "\n")
            return
        for layer in result["layers"]:
            after = f"  {layer['trained']:.3e}" if run else ""
            out.print(f"{layer['index']:4d}  {layer['id']:<32} {layer['init']:.3e}{after}", markup=False)
        out.print(f"first/last layer gradient norm at init: {first_to_last(result):.3e}", markup=False)
        err.print(f"wrote {output}", markup=False)


@app.command()
def init(
    template: Optional[str] = typer.Argument(None, help="A template or zoo model; without one, list them all.",
                                             show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The file to write (default TEMPLATE.yaml)."),
    list_all: bool = typer.Option(False, "--list", help="List the templates and zoo models and exit."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Start a config from a commented template (quickstart, resnet-cifar, unet, ...) or a zoo model (resnet50, vit_b_16, ...)."""
    with user_errors():
        from .starter import describe, template_names, write_template

        if list_all or template is None:
            from rich.table import Table

            table = Table("template", "description", title_justify="left")
            for name in template_names():
                table.add_row(name, describe(name))
            out.print(table)
            if template is None and not list_all:
                out.print("write one with: skiptrain init TEMPLATE [--output FILE]", markup=False)
            return
        path = write_template(template, output, force=force)
        out.print(f"wrote {path}; check it with: skiptrain validate {path}", markup=False)


from . import cli_schema, cli_sample, cli_eject, cli_report, cli_import  # noqa: E402,F401  (register them after `init`)


def main() -> None:
    try:
        app()
    finally:
        # The process ends here: move every object into the collector's permanent generation, so the interpreter's shutdown
        # does not walk torch's 300,000 objects (0.7 s of a `validate`). Nothing is skipped: atexit, flushes, finalizers run.
        gc.freeze()
