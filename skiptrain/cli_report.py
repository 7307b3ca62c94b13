"""`skiptrain report`: a run as one self-contained HTML page (see ``html_report.py``).

A module of its own so that ``cli.py`` stays short; it registers the command on ``cli.app``.
"""
from __future__ import annotations

from typing import Optional

import typer

from .cli import app, err, user_errors
from .html_report import MAX_SAMPLES  # no torch: --help stays fast


@app.command()
def report(
    run_dir: str = typer.Argument(..., help="A run directory written by `skiptrain train`.", show_default=False),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="Write the page here instead of RUN_DIR/report.html (never over the "
                                              "run's own files).", show_default=False),
    force: bool = typer.Option(False, "--force", help="Overwrite --output if it exists."),
    device: str = typer.Option("auto", "--device", help="Where to measure the checkpoint: cpu, cuda, mps or auto."),
    which: Optional[str] = typer.Option(None, "--checkpoint",
                                        help="best or last (default: best when the run has one).", show_default=False),
    samples: int = typer.Option(24, "--samples", min=0, max=MAX_SAMPLES,
                                help="How many validation samples of highest loss to show."),
) -> None:
    """Write one self-contained HTML page of a run: diagram, curves, confusion matrix, worst samples, config."""
    with user_errors():
        from .api import report as write_page

        result = write_page(run_dir, output, overwrite=force, device=device, which=which, samples=samples)
        err.print(f"wrote {result['output']} ({result['bytes'] / 1024:.0f} KiB in {result['seconds']:.1f} s)",
                  markup=False)
