"""`data.normalize: imagenet` (issue 16): inputs normalised the way pretrained weights expect.

The name is declared in `data/options.py` (so `validate` and the schema know it), gives torchvision's
ImageNet mean and std, is refused on a model whose input does not have its 3 channels (located, with a
hint; never averaged down silently), and reaches every place the statistics go: the checkpoint, the
ONNX metadata and `predict` from a run, a checkpoint and an .onnx file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from skiptrain.data import load_data

from .conftest import invoke

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # torchvision's ImageNet statistics
CLASSES = ["ant", "bee"]
CONFIG = """\
model:
  name: tinyrgb
  input: [{channels}, 16, 16]
  layers:
    - {{id: stem, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}}
    - {{type: relu}}
    - {{type: global_avgpool}}
    - {{id: head, type: linear, out_features: 2}}
data:
  dataset: imagefolder
  root: {root}
  normalize: imagenet
  batch_size: 4
  num_workers: 0
train:
  epochs: 1
  device: cpu
  deterministic: true
"""


def image_folder(root: Path) -> Path:
    """root/{train,test}/{ant,bee}: 20x20 RGB PNGs of random colours (resized to 16x16 on load)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return image_folder(tmp_path / "images")


def config(tmp_path: Path, folder: Path, channels: int = 3) -> Path:
    path = tmp_path / f"rgb{channels}.yaml"
    path.write_text(CONFIG.format(channels=channels, root=folder))
    return path


def test_validate_accepts_the_name_and_the_schema_lists_it(tmp_path, folder):
    result = invoke("validate", config(tmp_path, folder))
    assert result.exit_code == 0, result.output
    schema = json.loads(invoke("schema").stdout)
    normalize = schema["$defs"]["data"]["properties"]["normalize"]
    assert {"enum": ["auto", "none", "imagenet"], "type": "string"} in normalize["anyOf"]
    assert "imagenet" in normalize["description"] and "0.485" in normalize["description"]


def test_a_misspelt_name_is_located_with_a_did_you_mean(tmp_path, folder):
    result = invoke("validate", config(tmp_path, folder), "--set", "data.normalize=imagnet")
    assert result.exit_code == 1
    assert "data.normalize=imagnet" in result.output and "did you mean `imagenet`?" in result.output
    assert "Traceback" not in result.output


def test_imagenet_on_a_one_channel_model_is_refused_at_validate_and_train(tmp_path, folder):
    path = config(tmp_path, folder, channels=1)
    line = path.read_text().splitlines().index("  normalize: imagenet") + 1
    for argv in (["validate", path], ["train", path, "--run-dir", tmp_path / "run"]):
        result = invoke(*argv)
        assert result.exit_code == 1, result.output
        text = " ".join(result.output.split())  # rich wraps long lines
        assert f"{path.name}:{line}" in text and "`normalize: imagenet` is for 3-channel input" in text, text
        assert "model.input: [3, H, W]" in text and "mean: 0.449, std: 0.226" in text, text
        assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_the_batches_are_normalised_with_torchvisions_statistics(folder):
    common = {"dataset": "imagefolder", "root": str(folder), "num_workers": 0, "batch_size": 4, "val_fraction": 0}
    named = load_data({**common, "normalize": "imagenet"}, input_shape=(3, 16, 16))
    raw = load_data({**common, "normalize": "none"}, input_shape=(3, 16, 16))
    assert named.mean == MEAN and named.std == STD and raw.mean is None
    (x, _), (x_raw, _) = next(iter(named.train.epoch(0))), next(iter(raw.train.epoch(0)))
    expected = (x_raw - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6) and not torch.allclose(x, x_raw, atol=1e-2)


def test_checkpoint_export_and_predict_keep_class_names_and_imagenet_statistics(tmp_path, folder):
    from PIL import Image

    import skiptrain
    from skiptrain import checkpoint
    from skiptrain.data.folders import load_image

    run = tmp_path / "run"
    result = invoke("train", config(tmp_path, folder), "--run-dir", run, "-q")
    assert result.exit_code == 0, result.output
    data = checkpoint.read(run).data
    assert data["mean"] == MEAN and data["std"] == STD and data["class_names"] == CLASSES

    onnx_file = tmp_path / "tinyrgb.onnx"
    result = invoke("export", run, "--output", onnx_file)
    assert result.exit_code == 0, result.output
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(meta["mean"]) == MEAN and json.loads(meta["std"]) == STD
    assert json.loads(meta["class_names"]) == CLASSES

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(image)
    # what predict must compute: the image at the model's input size, in 0..1, normalised with ImageNet's values
    model = skiptrain.api.restore(run).model
    x = load_image(str(image), (16, 16), "RGB").float().unsqueeze(0) / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(model(x), 1)[0]
    assert abs(expected[0] - expected[1]) > 1e-4  # the two classes are told apart, so a wrong mean would show
    for source in (run, run / "checkpoints" / "last.pt", onnx_file):
        result = invoke("predict", source, image, "--json", "--top", "2")
        assert result.exit_code == 0, result.output
        (row,) = json.loads(result.stdout)["predictions"]
        assert [t["name"] for t in row["top"]] == [CLASSES[t["class"]] for t in row["top"]]
        assert sorted(t["name"] for t in row["top"]) == CLASSES
        for top in row["top"]:
            assert top["probability"] == pytest.approx(expected[top["class"]].item(), abs=1e-5), source
