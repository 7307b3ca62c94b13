"""The `skiptrain` command: a thin Typer shell over the Python API.

Each command parses options, calls the API and prints; a ``SkiptrainError`` becomes
one message with its location and hint on stderr and exit code 1; usage errors exit 2.
torch is imported inside the commands, so ``--help`` stays fast.
"""
from __future__ import annotations

import json
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


@app.command()
def validate(
    config: Path = ConfigArg,
    overrides: List[str] = SetOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
    strict: bool = typer.Option(False, "--strict", help="Every shape mismatch is an error (projection: none)."),
) -> None:
    """Check a config: every node's shape and parameters, every skip and projection."""
    with user_errors():
        from .api import check_model
        from .report import node_table, plan_json, projection_table, summary_lines

        plan = check_model(config, overrides, strict=strict)
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


@app.command()
def graph(
    config: Path = ConfigArg,
    overrides: List[str] = SetOption,
    fmt: GraphFormat = typer.Option(GraphFormat.mermaid, "--format", "-f", help="mermaid (for Markdown) or dot (Graphviz)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Print the network as a graph, skip edges and projections marked."""
    with user_errors():
        from .api import check_model
        from .report import dot, mermaid

        plan = check_model(config, overrides)
        text = mermaid(plan) if fmt == GraphFormat.mermaid else dot(plan)
        if output:
            output.write_text(text)
            err.print(f"wrote {output}", markup=False)
        else:
            sys.stdout.write(text)


def main() -> None:
    app()
