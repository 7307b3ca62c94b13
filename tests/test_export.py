"""ONNX export and predict, end to end through the CLI: verification, metadata, errors."""
from __future__ import annotations

import copy
import json
import os
import tempfile
import textwrap
from pathlib import Path

# onnxruntime keeps a device id and a small database under $XDG_CACHE_HOME (else ~/.cache)
os.environ["XDG_CACHE_HOME"] = str(Path(tempfile.gettempdir()) / "skiptrain-test-cache")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from skiptrain import checkpoint, registry  # noqa: E402
from skiptrain import export as export_module  # noqa: E402

from .conftest import CONFIGS, EXAMPLES, invoke  # noqa: E402

RESIDUAL = """
model:
  name: tiny-res
  input: [3, 16, 16]
  blocks:
    res:
      args: {channels: 8, stride: 1}
      layers:
        - {id: conv1, type: conv2d, out_channels: "${channels}", kernel_size: 3, stride: "${stride}", padding: 1, bias: false}
        - {id: bn1, type: batchnorm2d}
        - {type: relu}
        - {id: conv2, type: conv2d, out_channels: "${channels}", kernel_size: 3, padding: 1, bias: false}
        - {id: bn2, type: batchnorm2d}
      skips: [{from: input, to: bn2}]
  layers:
    - {id: stem, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {id: s1, block: res}
    - {id: s2, block: res, args: {channels: 16, stride: 2}}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 5}
"""

UNET = """
model:
  name: tiny-unet
  input: [1, 16, 16]
  layers:
    - {id: enc, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: relu}
    - {type: maxpool2d, kernel_size: 2}
    - {id: mid, type: conv2d, out_channels: 16, kernel_size: 3, padding: 1}
    - {id: up, type: conv_transpose2d, out_channels: 8, kernel_size: 2, stride: 2}
    - {id: head, type: conv2d, out_channels: 3, kernel_size: 1}
  skips: [{from: enc, to: up, merge: concat}]
"""

TRANSFORMER = """
model:
  name: tiny-transformer
  input: [1, 12]
  blocks:
    encoder:
      layers:
        - {type: layernorm}
        - {id: attn, type: self_attention, num_heads: 2}
        - {type: layernorm}
        - {type: linear, out_features: 32}
        - {type: gelu}
        - {id: fc2, type: linear, out_features: 16}
      skips: [{from: input, to: attn}, {from: attn, to: fc2}]
  layers:
    - {type: transpose, dims: [0, 1]}
    - {type: linear, out_features: 16}
    - {id: enc, block: encoder, repeat: 2}
    - {type: layernorm}
    - {type: mean, dim: 0}
    - {id: head, type: linear, out_features: 4}
"""

DIGITS = """
model:
  name: digits-tiny
  input: [1, 8, 8]
  layers:
    - {id: stem, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: relu}
    - {id: body, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: relu}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 10}
  skips: [{from: stem, to: body}]
data: {dataset: digits, batch_size: 64}
train: {epochs: 1, device: cpu, optimizer: {name: adamw, lr: 3.0e-3}}
"""

SHAPES = UNET.replace("tiny-unet", "shapes-unet") + """
data: {dataset: shapes, num_samples: 64, batch_size: 16}
train: {task: segmentation, epochs: 1, device: cpu}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@pytest.mark.parametrize("text", [RESIDUAL, UNET, TRANSFORMER], ids=["residual", "unet", "transformer"])
def test_export_verifies_and_runs_in_onnxruntime(tmp_path, text):
    config = write(tmp_path / "net.yaml", text)
    output = tmp_path / "out" / "net.onnx"
    output.parent.mkdir()  # an output's folder must exist (tests/test_outputs.py)
    result = invoke("export", config, "--output", output)
    assert result.exit_code == 0, result.output
    for words in ("dynamo exporter", "onnx.checker: ok", "batch 1", "batch 3", "max abs diff", "file size",
                  "latency at batch 1"):
        assert words in result.stdout, words
    proto = onnx.load(str(output))
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["output"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch axis
    meta = props(output)
    model = export_module.load_source(config).model  # the same seeded random weights
    assert meta["model_name"] == model.meta["skiptrain"]["name"] and meta["source"] == "config"
    assert json.loads(meta["input_shape"]) == model.meta["skiptrain"]["input_shape"]
    assert meta["input_dtype"] == "float32" and meta["skiptrain_version"] and meta["batch"] == "dynamic"
    x = torch.randn(5, *model.meta["skiptrain"]["input_shape"])
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["model_name"] == meta["model_name"]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, atol=1e-4, rtol=1e-3)


def test_fixed_batch_and_no_verify(tmp_path):
    config = write(tmp_path / "net.yaml", RESIDUAL)
    report = export_module.export_onnx(config, tmp_path / "b2.onnx", batch=2)
    assert [c["batch"] for c in report["checks"]] == [2] and report["latency_batch"] == 2
    assert all(c["max_abs"] < 1e-4 for c in report["checks"])
    dim = onnx.load(str(tmp_path / "b2.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 2 and props(tmp_path / "b2.onnx")["batch"] == "2"
    result = invoke("export", config, "-o", tmp_path / "nv.onnx", "--no-verify", "--opset", "18")
    assert result.exit_code == 0, result.output
    assert "onnx.checker" not in result.stdout and "latency" not in result.stdout and "opset 18" in result.stdout
    assert invoke("export", config, "-o", tmp_path / "x.onnx", "--batch", "lots").exit_code == 2


def test_a_wrong_export_is_caught(tmp_path, monkeypatch):
    """The file holds perturbed weights: verification must fail, naming the output."""
    original = export_module._export

    def tampered(model, example, *args):
        bad = copy.deepcopy(model)
        with torch.no_grad():
            bad.get_submodule("head").bias.add_(0.5)
        return original(bad, example, *args)

    monkeypatch.setattr(export_module, "_export", tampered)
    result = invoke("export", write(tmp_path / "net.yaml", RESIDUAL), "-o", tmp_path / "bad.onnx")
    assert result.exit_code == 1, result.output
    assert "output `output`" in result.stderr and "differs from PyTorch" in result.stderr
    assert "atol" in result.stderr and "Traceback" not in result.output


def test_falls_back_to_the_torchscript_exporter_and_says_so(tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def dynamo_broken(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("simulated dynamo failure")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_broken)
    output = tmp_path / "ts.onnx"
    result = invoke("export", write(tmp_path / "net.yaml", TRANSFORMER), "-o", output)
    assert result.exit_code == 0, result.output
    assert "simulated dynamo failure" in result.stderr and "TorchScript-based exporter" in result.stderr
    assert "torchscript exporter" in result.stdout and "batch 3" in result.stdout
    assert props(output)["model_name"] == "tiny-transformer"
    assert onnx.load(str(output)).graph.input[0].type.tensor_type.shape.dim[0].dim_param


@torch.library.custom_op("skiptrain_test::opaque", mutates_args=())
def _opaque(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_opaque.register_fake
def _(x):
    return torch.empty_like(x)


class Opaque(torch.nn.Module):
    """A layer no ONNX exporter knows: a custom operator without an ONNX translation."""

    def forward(self, x):
        return _opaque(x)


@pytest.fixture
def opaque_layer():
    registry.names()  # load the built-in types first
    with registry.LAYERS.scoped():
        registry.add(registry.LayerType("opaque_test", Opaque))
        yield


def test_an_unexportable_layer_is_named_by_its_node_id(tmp_path, opaque_layer):
    config = write(tmp_path / "odd.yaml", """
        model:
          input: [3, 8, 8]
          blocks:
            b:
              layers:
                - {id: conv, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
                - {id: weird, type: opaque_test}
          layers:
            - {id: stem, type: conv2d, out_channels: 4, kernel_size: 1}
            - {id: stage, block: b, repeat: 2}
            - {type: global_avgpool}
            - {id: head, type: linear, out_features: 3}
    """)
    result = invoke("export", config, "-o", tmp_path / "odd.onnx")
    assert result.exit_code == 1, result.output
    assert "layer `stage.0.weird` (opaque_test) cannot be exported" in result.stderr
    assert f"{config}:7:" in result.stderr and "Traceback" not in result.output


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits classifier trained for one epoch, and its ONNX export."""
    root = tmp_path_factory.mktemp("digits")
    run = root / "run"
    result = invoke("train", write(root / "digits.yaml", DIGITS), "--run-dir", run, "-q")
    assert result.exit_code == 0, result.output
    result = invoke("export", run, "-o", root / "digits.onnx")
    assert result.exit_code == 0, result.output
    return run, root / "digits.onnx"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A PNG (16x16 RGB: resized and turned grey), a single-sample .npy, and a folder of both plus a batch."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("inputs")
    png = root / "seven.png"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(png)
    one = root / "one.npy"
    np.save(one, rng.random((1, 8, 8), dtype=np.float32))
    folder = root / "folder"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "a.png")
    np.save(folder / "batch.npy", rng.random((3, 1, 8, 8), dtype=np.float32))
    (folder / "notes.txt").write_text("ignored")
    return png, one, folder


def test_export_from_a_run_dir_stores_the_data_metadata(digits_run):
    run, onnx_path = digits_run
    data = checkpoint.read(run).data
    meta = {key: json.loads(value) if value[:1] in "[{" else value for key, value in props(onnx_path).items()}
    assert meta["class_names"] == data["class_names"] == [str(d) for d in range(10)]
    assert meta["mean"] == data["mean"] and meta["std"] == data["std"] and len(meta["mean"]) == 1
    assert meta["task"] == "classification" and meta["dataset"] == "digits" and meta["source"] == "checkpoint"
    assert export_module.read_metadata(onnx_path)["num_classes"] == 10


def test_predict_agrees_between_checkpoint_and_onnx(digits_run, inputs):
    run, onnx_path = digits_run
    png, one, folder = inputs
    answers = []
    for source in (run, onnx_path):
        result = invoke("predict", source, png, one, folder, "--json", "--top", "3")
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.stdout))  # one JSON object, nothing else
    torch_rows, onnx_rows = answers[0]["predictions"], answers[1]["predictions"]
    assert [r["input"] for r in torch_rows] == [r["input"] for r in onnx_rows]
    assert len(torch_rows) == 1 + 1 + 1 + 3 and torch_rows[-1]["input"].endswith("batch.npy[2]")
    for a, b in zip(torch_rows, onnx_rows):
        assert a["class"] == b["class"] and a["name"] == str(a["class"]) and len(a["top"]) == 3
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
        assert a["top"][0]["probability"] >= a["top"][1]["probability"] >= a["top"][2]["probability"]


def test_predict_prints_a_table(digits_run, inputs):
    result = invoke("predict", digits_run[1], inputs[0], "--top", "2")
    assert result.exit_code == 0, result.output
    assert "probability" in result.stdout and "seven.png" in result.stdout


def test_predict_writes_segmentation_masks(tmp_path):
    run = tmp_path / "seg"
    assert invoke("train", write(tmp_path / "seg.yaml", SHAPES), "--run-dir", run, "-q").exit_code == 0
    image = tmp_path / "shape.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)).save(image)
    result = invoke("predict", run, image, "--output-dir", tmp_path / "masks", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["predictions"]
    mask = Image.open(row["mask"])
    assert Path(row["mask"]) == tmp_path / "masks" / "shape_mask.png"
    assert mask.mode == "P" and mask.size == (16, 16) and np.asarray(mask).max() < 3
    assert set(row["pixels"]) <= {"background", "circle", "square"}
    assert sum(row["pixels"].values()) == pytest.approx(1.0)


def test_user_errors_exit_1_without_a_traceback(digits_run, tmp_path):
    run, onnx_path = digits_run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a PNG")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((5, 5), np.float32))
    config = write(tmp_path / "c.yaml", RESIDUAL)
    cases = [
        (("export", tmp_path / "nowhere", "-o", tmp_path / "x.onnx"), "no such run directory"),
        (("predict", tmp_path / "nowhere", bad), "no such run directory"),
        (("predict", run, bad), "not a readable image"),
        (("predict", onnx_path, bad), "not a readable image"),
        (("predict", onnx_path, wrong), "takes samples of shape [1, 8, 8]"),
        (("predict", run, tmp_path / "missing.png"), "no such input file"),
        (("predict", config, bad), "predict needs trained weights"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS + EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_reference_config_and_example_exports(tmp_path, config):
    report = export_module.export_onnx(config, tmp_path / "model.onnx")
    assert report["exporter"] == "dynamo"
    assert all(c["max_abs"] <= export_module.ATOL for c in report["checks"])
