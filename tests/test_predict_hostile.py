"""`predict` on hostile and broken inputs (issue 15): every .npy that is not numbers of the model's
shape, every file that is not a regular file, .onnx files from elsewhere with odd graphs or
metadata, non-finite values, and output folders that cannot be written. Each is either answered
from what can be inferred, or refused with one message naming the file and what was expected:
exit 1, never a traceback, and `--json` output is always strict JSON."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_RESIDUAL, invoke

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained tiny residual run (input [1, 8, 8], 4 classes): one epoch, a few seconds."""
    root = tmp_path_factory.mktemp("run")
    config = root / "tiny.yaml"
    config.write_text(TINY_RESIDUAL.replace("epochs: 2", "epochs: 1").replace("num_samples: 160", "num_samples: 32"))
    assert invoke("train", config, "--run-dir", root / "run", "-q").exit_code == 0
    return root / "run"


def onnx_file(path: Path, module, *examples, axes=None, props=None, names=("x",)) -> Path:
    """``module`` exported with the TorchScript exporter (0.1 s); ``props`` replace its metadata."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), examples, str(path), dynamo=False, input_names=list(names),
                          output_names=["y"], dynamic_axes=axes or {names[0]: {0: "batch"}, "y": {0: "batch"}})
    if props is not None:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()})
        onnx.save(proto, str(path))
    return path


def linear(weight: float | None = None) -> torch.nn.Module:
    """A [4] -> [3] classifier; with ``weight``, every weight that value (to overflow on purpose)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    if weight is not None:
        with torch.no_grad():
            layer.weight.fill_(weight)
    return layer


def refused(*args, expect: str) -> str:
    result = invoke("predict", *args)
    assert result.exit_code == 1, (args, result.output)
    assert "Traceback" not in result.output
    assert expect in result.stderr, (args, result.stderr)
    return result.stderr


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, which Python's own dumps would write."""
    def bare(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=bare)


class RunsCode:
    """A pickle that would touch a file if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` grey pixels and holds none (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def hostile_arrays(tmp_path: Path) -> list[tuple[Path, str]]:
    """(input file, the words its refusal must contain) for a model taking float samples [1, 8, 8]."""
    cases = []

    def save(name: str, array, expect: str, **options):
        path = tmp_path / name
        with open(path, "wb") as f:
            np.save(f, array, **options)
        cases.append((path, expect))

    save("strings.npy", np.full((1, 8, 8), "a"), "holds text, but the model takes numbers")
    save("records.npy", np.zeros((1, 8, 8), dtype=[("a", "f4"), ("b", "f4")]), "holds records (a structured dtype)")
    save("void.npy", np.zeros((1, 8, 8), dtype="V4"), "holds `|V4` values")
    save("object.npy", np.array([RunsCode(tmp_path / "ran")], dtype=object), "holds Python objects",
         allow_pickle=True)
    save("complex.npy", np.zeros((1, 8, 8), np.complex64), "holds complex numbers")
    save("bool.npy", np.zeros((1, 8, 8), bool), "holds booleans")
    save("dates.npy", np.zeros((1, 8, 8), "datetime64[s]"), "holds dates")
    save("empty.npy", np.zeros((0, 1, 8, 8), np.float32), "holds no samples (shape [0, 1, 8, 8])")
    save("rank.npy", np.zeros((3, 5), np.float32), "takes samples of shape [1, 8, 8]")
    save("nan.npy", np.stack([np.zeros((1, 8, 8)), np.full((1, 8, 8), np.nan), np.full((1, 8, 8), np.inf)]),
         "holds NaN or infinite values (sample 1 and 1 more)")
    (tmp_path / "zero.npy").write_bytes(b"")
    cases.append((tmp_path / "zero.npy", "is not a .npy array"))
    save("cut.npy", np.zeros((4, 1, 8, 8), np.float32), "is truncated")
    cut = tmp_path / "cut.npy"
    cut.write_bytes(cut.read_bytes()[:-100])
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }".ljust(117) + "\n"
    (tmp_path / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
    cases.append((tmp_path / "huge.npy", "promises [1000000000000] float32 (4,000,000,000,000 bytes) but 0 bytes"))
    cases.append((png_header(tmp_path / "bomb.png", 200_000, 200_000), "DecompressionBombError"))
    (tmp_path / "folder.npy").mkdir()
    cases.append((tmp_path / "folder.npy", "holds no images or .npy files"))
    (tmp_path / "dev.npy").symlink_to("/dev/zero")
    cases.append((tmp_path / "dev.npy", "is a character device, not a regular file"))
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "x.npy").symlink_to("/dev/zero")
    cases.append((tmp_path / "inside", "x.npy is a character device"))
    return cases


def test_hostile_npy_files_are_one_message_each(run, tmp_path):
    for path, expect in hostile_arrays(tmp_path):
        message = refused(run, path, expect=expect)
        assert path.name in message, message
    assert not (tmp_path / "ran").exists()  # the object array was refused without unpickling it


def test_hostile_npy_files_through_an_onnx_model_too(tmp_path):
    model = onnx_file(tmp_path / "m.onnx", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)),
                      torch.zeros(1, 1, 8, 8))
    (tmp_path / "arrays").mkdir()
    for path, expect in hostile_arrays(tmp_path / "arrays"):
        refused(model, path, expect=expect)


def test_token_models_refuse_floats(tmp_path):
    model = onnx_file(tmp_path / "tok.onnx", torch.nn.Sequential(torch.nn.Embedding(10, 3), torch.nn.Flatten()),
                      torch.zeros(1, 4, dtype=torch.long))
    np.save(tmp_path / "f.npy", np.zeros((1, 4), np.float32))
    refused(model, tmp_path / "f.npy", expect="holds floats, but the model takes integers (token ids)")
    np.save(tmp_path / "oov.npy", np.full((1, 4), 99, np.int64))  # beyond the vocabulary
    refused(model, tmp_path / "oov.npy", expect="the model cannot run on")
    np.save(tmp_path / "ok.npy", np.ones((2, 4), np.int64))
    result = invoke("predict", model, tmp_path / "ok.npy", "--json")
    assert result.exit_code == 0, result.output
    assert len(strict_json(result.stdout)["predictions"]) == 2


def test_an_onnx_file_with_symbolic_sizes_takes_them_from_the_input(tmp_path):
    from PIL import Image

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(3, 4))
    model = onnx_file(tmp_path / "sym.onnx", net, torch.zeros(1, 1, 8, 8), props={"input_shape": "abc"},
                      axes={"x": {0: "batch", 2: "h", 3: "w"}, "y": {0: "batch"}})
    np.save(tmp_path / "a.npy", np.zeros((2, 1, 12, 10), np.float32))
    result = invoke("predict", model, tmp_path / "a.npy", "--json", "--top", "1")
    assert result.exit_code == 0, result.output
    assert "metadata `input_shape` 'abc' does not fit the graph's [1, ?, ?]; ignored" in result.stderr
    assert [row["input"] for row in strict_json(result.stdout)["predictions"]] == [
        f"{tmp_path / 'a.npy'}[0]", f"{tmp_path / 'a.npy'}[1]"]
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "p.png")
    result = invoke("predict", model, tmp_path / "p.png", "--json")
    assert result.exit_code == 0, result.output
    # the first file fixes the open sizes; a later file of another size is refused by name
    np.save(tmp_path / "c.npy", np.zeros((1, 1, 9, 9), np.float32))
    refused(model, tmp_path / "a.npy", tmp_path / "c.npy", expect="c.npy holds an array of shape [1, 1, 9, 9]")


def test_an_onnx_file_with_two_inputs_is_refused(tmp_path):
    class Two(torch.nn.Module):
        def forward(self, a, b):
            return a + b

    model = onnx_file(tmp_path / "two.onnx", Two(), torch.zeros(1, 4), torch.zeros(1, 4), names=("a", "b"),
                      axes={"a": {0: "batch"}, "b": {0: "batch"}})
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    refused(model, tmp_path / "x.npy", expect="takes 2 inputs (`a`, `b`); predict feeds one array")


def test_an_onnx_file_without_metadata_is_guessed_from_its_graph(tmp_path):
    model = onnx_file(tmp_path / "plain.onnx", linear(), torch.zeros(1, 4))
    np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
    result = invoke("predict", model, tmp_path / "x.npy", "--json", "--top", "3")
    assert result.exit_code == 0, result.output
    rows = strict_json(result.stdout)["predictions"]
    assert len(rows) == 3 and {entry["name"] for entry in rows[0]["top"]} == {"0", "1", "2"}


HOSTILE_METADATA = [  # (metadata, works?, words in the warning or the refusal)
    ({"input_shape": "abc"}, True, ""),  # the graph's fixed [4] is the truth
    ({"input_shape": [4, 4]}, True, ""),  # the graph's fixed [4] wins; no symbolic size to fill
    ({"task": "nope"}, True, "metadata `task` 'nope' is not a known task"),
    ({"task": [1, 2]}, True, "metadata `task` [1, 2] is not a known task"),
    ({"class_names": "abc"}, True, "metadata `class_names` 'abc' is not a list of names"),
    ({"class_names": {"a": 1}}, True, "is not a list of names"),
    ({"class_names": [f"c{i}" for i in range(200_000)]}, True, ""),
    ({"model_name": "[" * 100_000}, True, ""),  # JSON nested too deep to decode: kept as text
    ({"mean": "abc", "std": 1}, False, "`mean` is 'abc', but predict needs a finite number"),
    ({"mean": [0.5] * 100_000, "std": [1.0] * 100_000}, False, "`mean` is a list of 100000 values"),
    ({"mean": 0.5}, False, "`std` is None"),
    ({"mean": 0.5, "std": 0}, False, "`std` is 0, but predict needs a non-zero number"),
    ({"mean": [0.1, 0.2, 0.3, 0.4], "std": [1, 1, 1, 1]}, True, ""),  # one per feature of a [4] input
]


@pytest.mark.parametrize("props, works, words", HOSTILE_METADATA, ids=lambda v: str(v)[:30])
def test_hostile_onnx_metadata(tmp_path, props, works, words):
    model = onnx_file(tmp_path / "meta.onnx", linear(), torch.zeros(1, 4), props=props)
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    if not works:
        refused(model, tmp_path / "x.npy", expect=words)
        return
    result = invoke("predict", model, tmp_path / "x.npy", "--json")
    assert result.exit_code == 0, result.output
    strict_json(result.stdout)
    assert words in result.stderr


def test_markup_class_names_from_metadata_are_shown_literally(tmp_path):
    model = onnx_file(tmp_path / "m.onnx", linear(), torch.zeros(1, 4),
                      props={"class_names": ["[bold]x[/]", "[red]y", "z"], "task": "classification"})
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    result = invoke("predict", model, tmp_path / "x.npy", "--top", "3")
    assert result.exit_code == 0, result.output
    assert "[bold]x[/]" in result.stdout and "[red]y" in result.stdout


def test_json_is_strict_and_non_finite_outputs_are_refused(tmp_path, run):
    np.save(tmp_path / "ok.npy", np.zeros((2, 1, 8, 8), np.float32))
    result = invoke("predict", run, tmp_path / "ok.npy", "--json")
    assert result.exit_code == 0, result.output
    assert len(strict_json(result.stdout)["predictions"]) == 2
    # finite inputs that overflow the model: refused by name, never `NaN` in the JSON
    model = onnx_file(tmp_path / "big.onnx", linear(1e30), torch.zeros(1, 4))
    np.save(tmp_path / "big.npy", np.array([[1, 1, 1, 1], [1e30, 1e30, 1e30, 1e30]], np.float32))
    result = invoke("predict", model, tmp_path / "big.npy", "--json")
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert f"the model's outputs for {tmp_path / 'big.npy'}[1] are NaN or infinite" in result.stderr


def test_output_dir_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    seg = onnx_file(tmp_path / "seg.onnx", torch.nn.Conv2d(1, 3, 3, padding=1), torch.zeros(1, 1, 8, 8),
                    props={"task": "segmentation"})
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for target in (afile, afile / "sub"):
        message = refused(seg, tmp_path / "x.npy", "--output-dir", target, expect="afile is a file, not a folder")
        assert "--output-dir" in message
    assert afile.read_text() == "keep"
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make the check see what a user would see
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == readonly else real(p, mode, **kw))
    refused(seg, tmp_path / "x.npy", "--output-dir", readonly / "masks", expect=f"the folder {readonly} is not writable")
    assert list(readonly.iterdir()) == []
    result = invoke("predict", seg, tmp_path / "x.npy", "--output-dir", tmp_path / "masks", "--json")
    assert result.exit_code == 0, result.output
    assert Path(strict_json(result.stdout)["predictions"][0]["mask"]).is_file()


def test_a_failed_mask_write_is_one_message(tmp_path, monkeypatch):
    from PIL import Image

    seg = onnx_file(tmp_path / "seg.onnx", torch.nn.Conv2d(1, 3, 3, padding=1), torch.zeros(1, 1, 8, 8),
                    props={"task": "segmentation"})
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    refused(seg, tmp_path / "x.npy", "--output-dir", tmp_path / "m", expect="could not write the predictions: No space")


def test_an_array_larger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    from skiptrain.training import setup

    model = onnx_file(tmp_path / "m.onnx", linear(), torch.zeros(1, 4))
    np.save(tmp_path / "x.npy", np.ones((100, 4), np.float32))
    monkeypatch.setattr(setup, "available_memory", lambda device: 1000)
    refused(model, tmp_path / "x.npy", expect="x.npy needs 3,200 bytes of memory to read, but 1,000 bytes is available")
