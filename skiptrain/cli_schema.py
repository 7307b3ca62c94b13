"""`skiptrain schema [CONFIG]`: the config language as a JSON Schema (see ``schema.py``).

A module of its own so that ``cli.py`` stays short; it registers the command on ``cli.app``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import _emit, app, user_errors


@app.command()
def schema(
    config: Optional[Path] = typer.Argument(None, help="Also check this config's blocks' arguments.", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Print a JSON Schema (draft 2020-12) of the config language, for editors and CI."""
    with user_errors():
        from .schema import schema_text

        _emit(schema_text(config), output, (config,) if config else ())
