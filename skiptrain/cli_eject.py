"""`skiptrain eject`: a model as one standalone PyTorch file (see ``eject.py``).

A module of its own so that ``cli.py`` stays short; it registers the command on ``cli.app``.
"""
from __future__ import annotations

import typer

from .cli import app, err, user_errors


@app.command()
def eject(
    source: str = typer.Argument(..., help="A config YAML, a run directory or a checkpoint file.",
                                 show_default=False),
    output: str = typer.Option(..., "--output", "-o", help="The Python file to write (e.g. model.py).",
                               show_default=False),
    force: bool = typer.Option(False, "--force", help="Overwrite --output if it exists."),
) -> None:
    """Write the model as one plain PyTorch file (torch only, never skiptrain) with skiptrain's state-dict keys."""
    with user_errors():
        from .api import eject as eject_model

        result = eject_model(source, output, overwrite=force)
        weights = "a run's checkpoint" if result["kind"] == "checkpoint" else "a checkpoint of this config"
        err.print(f"wrote {result['output']}: class {result['class']}; load {weights} with "
                  f"model.load_state_dict(torch.load(path, weights_only=True)['model'])", markup=False)
