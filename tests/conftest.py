"""Shared fixtures: where the contract's examples live, a YAML writer, the tiny residual config
the end-to-end tests share, and the one way tests run the `skiptrain` command in-process."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_EXAMPLES = ROOT.parent / "shared" / "examples"
EXAMPLES = sorted(SHARED_EXAMPLES.glob("*.yaml")) if SHARED_EXAMPLES.is_dir() else []
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

os.environ.setdefault("MPLCONFIGDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "skiptrain-mpl"))


# A residual conv net whose skip needs a projection (stem [8, 8, 8] -> body [16, 4, 4]), with
# synthetic data and two deterministic CPU epochs: seconds to train. Tests derive variants with
# str.replace or --set; the model section alone is a model-only config.
TINY_RESIDUAL_MODEL = """
model:
  name: tiny
  input: [1, 8, 8]
  layers:
    - {id: stem, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {id: body, type: conv2d, out_channels: 16, kernel_size: 3, stride: 2, padding: 1}
    - {type: relu}
    - {type: dropout, p: 0.1}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 4}
  skips:
    - {from: stem, to: body}
"""
TINY_RESIDUAL = TINY_RESIDUAL_MODEL + """\
data: {dataset: synthetic, num_samples: 160, num_classes: 4, batch_size: 32}
train:
  epochs: 2
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}
  scheduler: {name: cosine, warmup_epochs: 1}
  device: cpu
  deterministic: true
"""


def invoke(*args, **options):
    """``skiptrain ARGS`` through Typer's CliRunner (each argument str()-ed); ``options`` go to
    ``CliRunner.invoke`` (``env``, ``input``, ``prog_name``). An exception other than the command's
    own exit is a bug, not an exit status, so it fails the test here."""
    from typer.testing import CliRunner

    from skiptrain.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], **options)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def straight_and_resumed(config: Path, tmp_path: Path) -> tuple[dict, dict, Path]:
    """Train ``config`` for 2 epochs straight, and for 1 epoch then resumed to 2 (the schedule must be
    the 2-epoch one): both final model state dicts, and the resumed run's directory."""
    import torch

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert invoke("train", config, "--run-dir", straight, "-q").exit_code == 0
    assert invoke("train", config, "--run-dir", split, "--epochs", "1", "-q").exit_code == 0
    result = invoke("train", "--resume", split, "--epochs", "2", "-q")
    assert result.exit_code == 0, result.output
    return (torch.load(straight / "checkpoints/last.pt", weights_only=True)["model"],
            torch.load(split / "checkpoints/last.pt", weights_only=True)["model"], split)


@pytest.fixture
def tiny_residual(write_yaml) -> Path:
    """TINY_RESIDUAL written to tmp_path/tiny_residual.yaml."""
    return write_yaml(TINY_RESIDUAL, "tiny_residual.yaml")


@pytest.fixture
def write_yaml(tmp_path):
    """Write dedented YAML text to a file and return its path."""
    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path
    return write


def needs_examples():
    return pytest.mark.skipif(not EXAMPLES, reason="../shared/examples is not beside this checkout")
