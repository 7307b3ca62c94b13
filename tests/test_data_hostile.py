"""Hostile and broken data folders (issue 15): every bad file is one located DataError naming it,
through the CLI with and without DataLoader workers, never a traceback."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from skiptrain.data import load_data
from skiptrain.errors import DataError

from .conftest import invoke


def save(path: Path, array: np.ndarray, mode: str | None = None, fmt: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, fmt)
    return path


def encoded(fmt: str, size: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A 70-byte PNG whose header declares ``width x height`` pixels (IHDR patched, CRC fixed)."""
    data = bytearray(encoded("PNG", 8))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


BAD_FILES = {
    "random bytes": ("bad.jpg", lambda: np.random.default_rng(2).bytes(300)),
    "empty": ("bad.jpg", lambda: b""),
    "truncated jpeg": ("bad.jpg", lambda: encoded("JPEG")[: len(encoded("JPEG")) // 2]),
    "truncated png": ("bad.png", lambda: encoded("PNG")[: len(encoded("PNG")) // 2]),
}


def image_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(per_class):
            save(root / cls / f"{i}.png", rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
    return root


def classifier(root: Path, workers: int, extra: str = "") -> str:
    return f"""
model:
  name: tiny
  input: [3, 8, 8]
  layers:
    - {{type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}}
    - {{type: global_avgpool}}
    - {{type: linear, out_features: 2}}
data: {{dataset: imagefolder, root: '{root}', batch_size: 4, num_workers: {workers}{extra}}}
train: {{epochs: 1, device: cpu}}
"""


def segmenter(root: Path, workers: int, data: str = "", train: str = "") -> str:
    return f"""
model:
  name: seg
  input: [1, 8, 8]
  layers:
    - {{type: conv2d, out_channels: 2, kernel_size: 3, padding: 1}}
data: {{dataset: segfolder, root: '{root}', batch_size: 2, num_workers: {workers}, normalize: none{data}}}
train: {{epochs: 1, device: cpu{train}}}
"""


def seg_folder(root: Path, bad_value: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    for i in range(6):
        save(root / "images" / f"s{i}.png", rng.integers(0, 256, (8, 8)).astype(np.uint8))
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:5] = 1
        if bad_value is not None and i == 3:
            mask[0, :3] = bad_value
        save(root / "masks" / f"s{i}.png", mask, "L")
    return root


def refused(result, *needles: str) -> str:
    """One data error, exit 1, no traceback; every needle in it."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Caught" not in result.output, result.output
    assert "data error:" in result.output, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    return result.output


# ---------------------------------------------------------------- corrupt, empty and truncated images

@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_broken_image_stops_train_with_its_name(write_yaml, tmp_path, kind, workers):
    root = image_folder(tmp_path / "images")
    name, content = BAD_FILES[kind]
    (root / "cat" / name).write_bytes(content())
    result = invoke("train", write_yaml(classifier(root, workers)), "--run-dir", tmp_path / "run", "-q")
    refused(result, f"the image {Path('cat') / name} cannot be used", "hint: remove the file", "config.yaml:")
    assert str(root) not in result.output.split("cannot be used")[0].split("image ")[-1]  # relative to root
    assert ("the file is empty" in result.output) == (kind == "empty")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_broken_after_the_scan_is_named_from_a_worker(tmp_path, workers):
    """The scan passed; the file breaks before it is read (as a copy in progress would): the DataLoader
    worker's error is the same located DataError as without workers, not its traceback text."""
    root = image_folder(tmp_path / "images")
    bundle = load_data({"dataset": "imagefolder", "root": str(root), "batch_size": 4, "num_workers": workers,
                        "normalize": "none", "val_fraction": 0}, input_shape=(3, 8, 8))
    (root / "dog" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    with pytest.raises(DataError) as info:
        for _ in bundle.train.epoch(0):
            pass
    assert info.value.message.startswith("the image dog/2.png cannot be used"), info.value.message
    assert "Traceback" not in info.value.message and info.value.hint


def test_a_truncated_jpeg_is_named_when_normalize_auto_reads_it(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "dog" / "cut.jpg").write_bytes(encoded("JPEG")[:900])  # passes the header check
    with pytest.raises(DataError, match="the image dog/cut.jpg cannot be used.*truncated"):
        load_data({"dataset": "imagefolder", "root": str(root), "num_workers": 2}, input_shape=(3, 8, 8))


# ---------------------------------------------------------------- decompression bombs

@pytest.mark.parametrize("workers", [0, 2])
def test_a_decompression_bomb_is_refused_with_the_limit(write_yaml, tmp_path, workers):
    from PIL import Image

    root = image_folder(tmp_path / "images")
    (root / "cat" / "bomb.png").write_bytes(bomb_png(200_000, 200_000))
    result = invoke("train", write_yaml(classifier(root, workers)), "--run-dir", tmp_path / "run", "-q")
    refused(result, "the image cat/bomb.png cannot be used", "40,000,000,000 pixels",
            f"limit of {Image.MAX_IMAGE_PIXELS:,} pixels (Image.MAX_IMAGE_PIXELS)")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_image_over_the_limit_but_under_twice_it_is_refused_too(tmp_path):
    """PIL only warns between MAX_IMAGE_PIXELS and twice that; skiptrain refuses at the limit itself."""
    root = image_folder(tmp_path / "images")
    (root / "dog" / "big.png").write_bytes(bomb_png(10_000, 10_000))  # 1e8 > 89,478,485
    with pytest.raises(DataError, match="dog/big.png cannot be used: it declares 100,000,000 pixels"):
        load_data({"dataset": "imagefolder", "root": str(root), "num_workers": 0}, input_shape=(3, 8, 8))


# ---------------------------------------------------------------- segmentation masks

@pytest.mark.parametrize("workers", [0, 2])
def test_a_mask_value_that_is_no_class_names_the_mask(write_yaml, tmp_path, workers):
    root = seg_folder(tmp_path / "seg", bad_value=255)
    result = invoke("train", write_yaml(segmenter(root, workers, ", num_classes: 2")), "--run-dir", tmp_path / "r")
    refused(result, "the mask masks/s3.png has values 255, but the classes are 0 to 1", "ignore_index: 255")


def test_a_mask_value_equal_to_ignore_index_trains_and_evaluates(write_yaml, tmp_path):
    root = seg_folder(tmp_path / "seg", bad_value=255)
    loss = ", loss: {name: cross_entropy, ignore_index: 255}"
    result = invoke("train", write_yaml(segmenter(root, 0, ", num_classes: 2", loss)), "--run-dir", tmp_path / "a")
    assert result.exit_code == 0, result.output
    evaluated = invoke("eval", tmp_path / "a", "--split", "val")
    assert evaluated.exit_code == 0 and "miou" in evaluated.output, evaluated.output
    # num_classes counted from the masks leaves ignore_index out: 2 classes, not 256
    result = invoke("train", write_yaml(segmenter(root, 0, "", loss), "b.yaml"), "--run-dir", tmp_path / "b")
    assert result.exit_code == 0, result.output


def test_another_value_beside_ignore_index_is_still_refused(tmp_path):
    root = seg_folder(tmp_path / "seg", bad_value=7)
    bundle = load_data({"dataset": "segfolder", "root": str(root), "num_classes": 2, "num_workers": 0,
                        "val_fraction": 0, "batch_size": 6, "normalize": "none"}, input_shape=(1, 8, 8),
                       task="segmentation", ignore_index=255)
    with pytest.raises(DataError, match=r"masks/s3.png has values 7, but the classes are 0 to 1 or 255"):
        list(bundle.train.epoch(0))


def test_a_broken_mask_is_named(write_yaml, tmp_path):
    root = seg_folder(tmp_path / "seg")
    (root / "masks" / "s1.png").write_bytes(encoded("PNG")[:100])
    result = invoke("train", write_yaml(segmenter(root, 0)), "--run-dir", tmp_path / "r")
    refused(result, "the mask masks/s1.png cannot be used")


# ---------------------------------------------------------------- folders, stray files, links, modes

def test_stray_files_are_skipped_and_counted(write_yaml, tmp_path):
    root = image_folder(tmp_path / "images")
    for stray in ("cat/.DS_Store", "dog/Thumbs.db", "dog/notes.txt"):
        (root / stray).write_bytes(b"\x00\x01 not an image")
    result = invoke("train", write_yaml(classifier(root, 0)), "--run-dir", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    assert "skipped 3 file(s) that are not images" in result.output, result.output
    assert "cat/.DS_Store" in result.output


def test_stray_files_beside_segmentation_images_and_masks_are_counted(tmp_path):
    root = seg_folder(tmp_path / "seg")
    (root / "images" / ".DS_Store").write_bytes(b"\x00")
    (root / "masks" / "s1.jpg").write_bytes(b"\x00")  # masks are PNGs only
    with pytest.warns(UserWarning, match=r"`segfolder`: skipped 2 file\(s\).*images/.DS_Store, masks/s1.jpg"):
        load_data({"dataset": "segfolder", "root": str(root), "num_workers": 0}, input_shape=(1, 8, 8),
                  task="segmentation")


def test_a_symlink_loop_is_skipped_not_followed(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "cat" / "again").symlink_to(root / "cat", target_is_directory=True)  # a folder loop
    (root / "dog" / "self.png").symlink_to(root / "dog" / "self.png")  # a link to itself
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\).*dog/self.png"):
        bundle = load_data({"dataset": "imagefolder", "root": str(root), "num_workers": 0, "val_fraction": 0},
                           input_shape=(3, 8, 8))
    assert bundle.train.num_samples == 12


def test_a_class_folder_without_images_is_named(write_yaml, tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "bird").mkdir()
    (root / "bird" / "readme.txt").write_text("todo")
    result = invoke("train", write_yaml(classifier(root, 0)), "--run-dir", tmp_path / "run")
    refused(result, "the class folder bird has no images", "remove the folder if it is not a class")


def test_no_class_folders_or_no_root_is_a_data_error(write_yaml, tmp_path):
    (tmp_path / "flat").mkdir()
    save(tmp_path / "flat" / "a.png", np.zeros((8, 8, 3), np.uint8))
    refused(invoke("train", write_yaml(classifier(tmp_path / "flat", 0)), "--run-dir", tmp_path / "a"),
            "no class folders")
    refused(invoke("train", write_yaml(classifier(tmp_path / "none", 0), "b.yaml"), "--run-dir", tmp_path / "b"),
            "does not exist")


def test_palette_alpha_cmyk_and_16_bit_images_are_read(tmp_path):
    from PIL import Image

    root = tmp_path / "modes"
    grey = np.full((8, 8), 128, np.uint8)
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    palette = Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).convert("P", palette=Image.ADAPTIVE)
    palette.save(root / "a" / "palette.png")
    save(root / "a" / "alpha.png", np.stack([grey, grey], -1), "LA")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).convert("CMYK").save(root / "b" / "cmyk.jpg")
    save(root / "b" / "deep.png", np.full((8, 8), 128 * 257, np.uint16))
    assert Image.open(root / "b" / "deep.png").mode.startswith("I")
    bundle = load_data({"dataset": "imagefolder", "root": str(root), "num_workers": 0, "val_fraction": 0,
                        "normalize": "none", "batch_size": 4}, input_shape=(3, 8, 8))
    dataset = bundle.train.loader.dataset
    images = {Path(path).name: dataset[i][0] for i, (path, _) in enumerate(dataset.samples)}
    assert all(x.shape == (3, 8, 8) and x.dtype == torch.uint8 for x in images.values())
    assert images["deep.png"].unique().tolist() == [128]  # scaled to 8 bits, not clipped to white
    assert images["alpha.png"].unique().tolist() == [128]
    assert abs(int(images["cmyk.jpg"].float().mean()) - 200) <= 3
    assert images["palette.png"].unique().tolist() == [40]
