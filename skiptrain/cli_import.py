"""`skiptrain import`: a PyTorch model (``MODULE:CALLABLE``) as skiptrain YAML (see ``importer.py``).

A module of its own so that ``cli.py`` stays short; it registers the command on ``cli.app``.
"""
from __future__ import annotations

from typing import Optional

import typer

from .cli import app, err, user_errors


@app.command("import")
def import_(
    target: str = typer.Argument(..., metavar="MODULE:CALLABLE", show_default=False,
                                 help="The model to import: a module and a callable in it that returns an nn.Module "
                                      "(torchvision.models:resnet50, mypkg.nets:MyNet). Its code runs."),
    input_shape: str = typer.Option(..., "--input", show_default=False,
                                    help="The shape of one sample, channels first: 3,224,224."),
    output: str = typer.Option(..., "--output", "-o", show_default=False, help="The YAML file to write."),
    kwargs: Optional[str] = typer.Option(None, "--kwargs", show_default=False,
                                         help="Keyword arguments for the callable, a JSON object: "
                                              '\'{"num_classes": 10}\'.'),
    weights: Optional[str] = typer.Option(None, "--weights", show_default=False,
                                          help="Also write the model's weights (.safetensors) for `train.init`."),
    force: bool = typer.Option(False, "--force", help="Overwrite --output and --weights if they exist."),
) -> None:
    """Write a PyTorch model as skiptrain YAML: blocks from its submodules, ids from its module paths, checked by
    rebuilding (same state-dict keys and parameters, bitwise-equal outputs)."""
    with user_errors():
        from .api import import_model

        result = import_model(target, input_shape, output, kwargs=kwargs, weights=weights, overwrite=force)
        blocks = f"{len(result['blocks'])} blocks ({', '.join(result['blocks'])})" if result["blocks"] else "no blocks"
        err.print(f"wrote {result['output']}: {result['parameters']:,} parameters, {result['keys']} state-dict keys, "
                  f"{blocks}; rebuilt and checked: bitwise-equal outputs", markup=False)
        if result["weights"]:
            err.print(f"wrote {result['weights']}: the model's weights (use as `train.init`)", markup=False)
