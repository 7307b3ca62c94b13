"""`skiptrain sample`: text from a language-model run, streamed to stdout as it is generated.

A module of its own so that ``cli.py`` stays short; it registers the command on ``cli.app`` (imported
by ``cli.py``, so ``sample`` is listed after the other commands).
"""
from __future__ import annotations

import math
import os
import sys
from typing import Optional

import typer

from .cli import app, err, user_errors


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise typer.BadParameter("must be a finite number (0 is greedy)")
    return value


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()  # each token as it comes


def _reader_left() -> None:
    """The reader closed the pipe (`| head`): stop quietly, with nothing more to flush at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    raise typer.Exit(0)


@app.command()
def sample(
    source: str = typer.Argument(..., help="A run directory, a checkpoint or an exported .onnx file of a language model.",
                                 show_default=False),
    prompt: str = typer.Option("", "--prompt", "-p", help="The text to continue (default: a newline, as nanoGPT)."),
    tokens: int = typer.Option(300, "--tokens", "-n", min=1, help="How many tokens to generate."),
    temperature: float = typer.Option(0.8, "--temperature", "-t", min=0.0, callback=_finite,
                                      help="Divides the logits: lower is safer, higher is wilder; 0 is greedy (argmax)."),
    top_k: Optional[int] = typer.Option(40, "--top-k", "-k", min=1,
                                        help="Draw from the k most likely tokens only (k >= the vocabulary: all)."),
    seed: int = typer.Option(1, "--seed", min=0, max=2 ** 64 - 1, help="The same seed gives the same text."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps or auto."),
    which: str = typer.Option("last", "--checkpoint", help="last or best (for a run directory)."),
    cache: bool = typer.Option(True, "--cache/--no-cache",
                               help="Keep attention keys and values between tokens (the same text, faster)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No timing line on stderr."),
) -> None:
    """Generate text from a language model (nanoGPT's sampling, key/value cache), streamed as it comes."""
    with user_errors():
        from .api import sample as generate_text

        try:
            result = generate_text(source, prompt, tokens, temperature, top_k, seed, device, which, cache,
                                   on_text=_write)
            _write("\n")
        except BrokenPipeError:
            _reader_left()
        if not quiet:
            how = "key/value cache" if result["cached"] else "no cache"
            err.print(f"{len(result['tokens'])} tokens in {result['seconds']:.2f} s "
                      f"({result['tokens_per_second']:.0f} tokens/s, {how})", markup=False)
