"""`skiptrain eject`: the standalone file imports only torch, has skiptrain's keys and its exact outputs."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import CONFIGS, EXAMPLES, invoke

ROOT = Path(__file__).resolve().parents[1]
BIG = {"resnet50", "densenet121", "convnext_tiny", "mobilenet_v3_large", "efficientnet_b0", "resnet34",
       "regnet_y_400mf", "resnet110", "plain110", "gpt_shakespeare_gpu"}  # zoo and deep ones: slow suite

# Run in a fresh interpreter where `import skiptrain` fails: each case's file, its keys and its outputs.
CHILD = r"""
import json, sys
sys.modules["skiptrain"] = None
import torch
torch.set_num_threads(int(sys.argv[2]))  # the parent's: kernels split work by threads
failures = []
for case in json.load(open(sys.argv[1])):
    namespace = {"__name__": "ejected"}
    exec(compile(open(case["file"]).read(), case["file"], "exec"), namespace)
    model = namespace[case["class"]]()
    saved = torch.load(case["data"], weights_only=True)
    if list(model.state_dict()) != saved["keys"]:
        failures.append(f"{case['file']}: keys differ"); continue
    model.load_state_dict(saved["state"])
    with torch.no_grad():
        out = model.eval()(saved["input"])
    if not torch.equal(out, saved["output"]):
        failures.append(f"{case['file']}: outputs differ by {(out - saved['output']).abs().max().item()}")
print(json.dumps(failures))
"""


def _prepare(config: Path, folder: Path) -> dict:
    """Eject ``config`` and save what the child compares against: skiptrain's keys, weights, input, output."""
    import skiptrain
    from skiptrain.eject import eject
    from skiptrain.export import random_input

    out = folder / f"{config.stem}_{len(list(folder.iterdir()))}.py"
    result = eject(config, out)
    torch.manual_seed(1)
    model = skiptrain.build_model(config).eval()
    example = random_input(model, batch=2, seed=3)
    with torch.no_grad():
        expected = model(example)
    data = out.with_suffix(".pt")
    torch.save({"keys": list(model.state_dict()), "state": model.state_dict(), "input": example,
                "output": expected}, data)
    return {"file": str(out), "class": result["class"], "data": str(data)}


def _check_in_child(cases: list[dict], folder: Path) -> list[str]:
    listing = folder / "cases.json"
    listing.write_text(json.dumps(cases))
    done = subprocess.run([sys.executable, "-I", "-c", CHILD, str(listing), str(torch.get_num_threads())], capture_output=True, text=True,
                          cwd=folder, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _lint(files: list[str]) -> str:
    """``ruff check`` with its default rules where ruff is installed, else pyflakes: '' when clean."""
    ruff = Path(sys.executable).with_name("ruff")
    command = [str(ruff), "check", "--no-cache", "--isolated", "-q"] if ruff.exists() else [sys.executable, "-m", "pyflakes"]
    done = subprocess.run([*command, *files], capture_output=True, text=True)
    return done.stdout + done.stderr


SMALL = [c for c in [*CONFIGS, *EXAMPLES] if c.stem not in BIG]
ZOO = sorted((ROOT / "configs" / "zoo").glob("*.yaml"))  # torchvision's architectures at 224: slow suite
LARGE = [*(c for c in CONFIGS if c.stem in BIG), *(c for c in ZOO if c not in CONFIGS)]


@pytest.mark.parametrize("configs", [pytest.param(SMALL, id="small"),
                                     pytest.param(LARGE, id="large", marks=pytest.mark.slow)])
def test_ejected_files_run_without_skiptrain_with_its_keys_and_bitwise_outputs(configs, tmp_path):
    start = time.perf_counter()
    cases = [_prepare(config, tmp_path) for config in configs]
    assert _check_in_child(cases, tmp_path) == []
    assert _lint([case["file"] for case in cases]) == ""
    print(f"{len(cases)} configs in {time.perf_counter() - start:.1f} s")


def test_a_trained_checkpoint_loads_into_the_ejected_model(tiny_residual, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", tiny_residual, "--run-dir", run, "--epochs", "1", "-q").exit_code == 0
    out = tmp_path / "model.py"
    result = invoke("eject", run, "--output", out)
    assert result.exit_code == 0, result.output
    checkpoint = run / "checkpoints" / "last.pt"
    code = (f"import sys; sys.modules['skiptrain'] = None\nimport torch\nns = {{}}\n"
            f"exec(open({str(out)!r}).read(), ns)\n"
            f"model = [v for v in ns.values() if isinstance(v, type) and issubclass(v, torch.nn.Module)][-1]()\n"
            f"model.load_state_dict(torch.load({str(checkpoint)!r}, weights_only=True)['model'])\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_eject_refuses_a_missing_input_and_an_output_over_its_input(tiny_residual, tmp_path):
    missing = invoke("eject", tmp_path / "nope.yaml", "--output", tmp_path / "m.py")
    assert missing.exit_code == 1 and "nope.yaml" in missing.output and "Traceback" not in missing.output
    before = tiny_residual.read_text()
    over = invoke("eject", tiny_residual, "--output", tiny_residual, "--force")
    assert over.exit_code == 1 and "--output" in over.output and "Traceback" not in over.output
    assert tiny_residual.read_text() == before


def test_eject_does_not_overwrite_without_force(tiny_residual, tmp_path):
    out = tmp_path / "m.py"
    out.write_text("keep\n")
    assert invoke("eject", tiny_residual, "--output", out).exit_code == 1
    assert out.read_text() == "keep\n"
    assert invoke("eject", tiny_residual, "--output", out, "--force").exit_code == 0
    assert "class " in out.read_text()
