"""`skiptrain eject`: the standalone file imports only torch, has skiptrain's keys and its exact outputs."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.fx

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
                          cwd=folder, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _lint(files: list[str]) -> str:
    """``ruff check`` with its default rules where ruff is installed, else pyflakes: '' when clean."""
    ruff = Path(sys.executable).with_name("ruff")
    command = [str(ruff), "check", "--no-cache", "--isolated", "-q"] if ruff.exists() else [sys.executable, "-m", "pyflakes"]
    done = subprocess.run([*command, *files], capture_output=True, text=True, check=False)
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
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=False)
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


def _eject_text(config: Path, folder: Path) -> str:
    from skiptrain.eject import eject

    out = folder / f"{config.stem}_{len(list(folder.iterdir()))}.py"
    eject(config, out)
    return out.read_text()


def _forwards(text: str) -> list[str]:
    """The forward body of each class that eject wrote (not of skiptrain's layer classes copied in)."""
    ours = [c for c in text.split("\nclass ")[1:] if re.match(r'\w+\(nn\.\w+\):\n    """(Block `|The model of)', c)]
    return [body for c in ours
            for body in re.findall(r"def forward\(self, x: torch\.Tensor\) -> torch\.Tensor:\n(.*?)\n        return", c, re.DOTALL)]


def test_blocks_become_classes_with_their_args_and_a_readable_forward(tmp_path):
    resnet20 = _eject_text(ROOT / "configs" / "cifar" / "resnet20.yaml", tmp_path)
    assert resnet20.count("class Basic(nn.Module):") == 1
    assert "    def __init__(self, channels: int, stride: int) -> None:" in resnet20  # the block's `args:`
    assert re.search(r"self\.stage1 = nn\.Sequential\(\s+Basic\(channels=16, stride=1\),\s+Basic\(channels=16", resnet20)
    assert "self.down2 = BasicBn2Proj(channels=32, stride=2)" in resnet20  # with a projection: a class of its own
    assert "in_channels=channels // 2" in resnet20  # an inferred width as an expression of the block's args
    resnet50 = _eject_text(ROOT / "configs" / "zoo" / "resnet50.yaml", tmp_path)
    assert resnet50.count("class Bottleneck(nn.Module):") == 1 and "def __init__(self, planes: int, stride: int)" in resnet50
    assert re.search(r"self\.layer1 = nn\.Sequential\(\s+BottleneckDownsample\(in_channels=64, planes=64, stride=1\),"
                     r"\s+Bottleneck\(planes=64, stride=1\),", resnet50)
    assert re.search(r"self\.downsample = nn\.Sequential\(\s+nn\.Conv2d\(in_channels=in_channels, out_channels=planes \* 4, "
                     r"kernel_size=1, bias=False, stride=stride\)", resnet50)
    for text in (resnet20, resnet50):
        forwards = _forwards(text)
        assert len(forwards) == 3  # two block classes and the model
        for body in forwards:
            names = set(re.findall(r"^\s+(\w+) = ", body, re.MULTILINE))
            assert names <= {"x", "out", "downsample", "bn2_proj"}, names  # no generated temporaries
            assert "_modules" not in body and "get_submodule" not in body and "= None" not in body
        assert "        out = out + x\n" in text
    assert "        x = self.layer1(x)\n        x = self.layer2(x)\n" in resnet50
    # `skiptrain import` reads an ejected file back with torch.fx: every generated forward traces
    namespace: dict = {"__name__": "ejected"}
    exec(compile(resnet50, "resnet50.py", "exec"), namespace)  # noqa: S102 - the file eject just wrote
    classes = {v for v in namespace.values() if isinstance(v, type) and v.__module__ == "ejected"}
    ours = {c for c in classes if re.match(r"(Block `|The model of)", c.__doc__ or "")}

    class Tracer(torch.fx.Tracer):  # skiptrain's own layer classes, copied into the file, stay leaves
        def is_leaf_module(self, module: torch.nn.Module, name: str) -> bool:
            return type(module) not in ours and (type(module) in classes or super().is_leaf_module(module, name))

    with torch.device("meta"):
        graph = Tracer().trace(namespace["Resnet50"]())
    assert sum(node.op == "call_module" for node in graph.nodes) > 100


CROSSING = """
model:
  name: crossing
  input: [4, 8, 8]
  blocks:
    res:
      args: {channels: 8}
      layers:
        - {id: conv1, type: conv2d, out_channels: "${channels}", kernel_size: 3, padding: 1}
        - {id: bn1, type: batchnorm2d}
        - {type: relu}
        - {id: conv2, type: conv2d, out_channels: "${channels}", kernel_size: 3, padding: 1}
      skips:
        - {from: input, to: conv2}
  layers:
    - {id: stem, type: conv2d, out_channels: 8, kernel_size: 1}
    - {id: stage, block: res, repeat: 3}
    - {id: wide, block: res, args: {channels: 16}}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 3}
  skips:
    - {from: stem, to: stage.1.bn1}                  # into a block's inner layer: stage.1 stays flat
    - {from: stem, to: wide.conv2, merge: concat}    # into a block's output: merged after calling it
"""


def test_an_instance_that_a_skip_crosses_into_stays_flat_with_the_same_keys_and_outputs(tmp_path):
    """A skip into a block's inner layer keeps that copy flat; one into its output is merged after the call."""
    import skiptrain
    from skiptrain.export import random_input

    config = tmp_path / "crossing.yaml"
    config.write_text(CROSSING)
    text = _eject_text(config, tmp_path)
    assert "_put(self, 'stage.1.conv2', nn.Conv2d(" in text  # the crossed copy: module by module, under its keys
    assert "_put(self, 'stage.0', Res(channels=8))" in text and "_put(self, 'stage.2', Res(channels=8))" in text
    assert "self.wide = ResConv2Proj(channels=16)" in text  # the other copies are classes, as usual
    assert "        out = self.wide(out)\n        out = torch.cat([out, stem], dim=1)\n" in text  # merged after the call
    namespace: dict = {}
    exec(compile(text, str(config), "exec"), namespace)  # noqa: S102 - the file eject just wrote
    ejected = namespace["Crossing"]().eval()
    torch.manual_seed(1)
    model = skiptrain.build_model(config).eval()
    assert list(ejected.state_dict()) == list(model.state_dict())
    ejected.load_state_dict(model.state_dict())
    example = random_input(model, batch=2, seed=3)
    with torch.no_grad():
        assert torch.equal(ejected(example), model(example))
