"""skiptrain.data: every registered dataset, the batch pipeline, augmentations, sharding."""
from __future__ import annotations

import os
import pickle
import random
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch

from skiptrain.config import load_config
from skiptrain.data import AUGMENTATIONS, DATASETS, Batches, DataBundle, dataset_names, load_data
from skiptrain.data.augment import Draw
from skiptrain.errors import DataError


def batches(split: Batches, epoch: int = 0, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(split.epoch(epoch, start))


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


# ---------------------------------------------------------------- offline datasets

def test_digits_shapes_sizes_and_classes():
    bundle = load_data({"dataset": "digits", "batch_size": 100}, input_shape=(1, 8, 8))
    assert isinstance(bundle, DataBundle) and bundle.task == "classification"
    assert (bundle.num_classes, bundle.class_names) == (10, [str(d) for d in range(10)])
    # 1797 images: a fixed 20% test split (360), val = 10% of the remaining 1437
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (1293, 144, 360)
    assert len(bundle.train) == 12 and len(bundle.val) == 2 and len(bundle.test) == 4  # train drops its last partial batch
    x, y = next(iter(bundle.train.epoch(0)))
    assert x.shape == (100, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sum(len(y) for _, y in bundle.test.epoch(0)) == 360
    labels = torch.cat([y for _, y in bundle.test.epoch(0)])
    assert set(labels.tolist()) == set(range(10))


def test_digits_test_split_ignores_the_run_seed_and_val_follows_it():
    cfg = {"dataset": "digits", "normalize": "none"}  # auto statistics follow the carved train split
    a = load_data(cfg, input_shape=(1, 8, 8), seed=0)
    b = load_data(cfg, input_shape=(1, 8, 8), seed=1)
    assert same(batches(a.test), batches(b.test))
    assert not same(batches(a.val), batches(b.val))
    c = load_data({**cfg, "seed": 0}, input_shape=(1, 8, 8), seed=1)  # data.seed wins
    assert same(batches(a.val), batches(c.val)) and same(batches(a.train, 3), batches(c.train, 3))


def test_batches_are_deterministic_and_start_skips_to_the_tail():
    cfg = {"dataset": "digits", "batch_size": 64, "augment": [{"random_crop": {"padding": 1}}, "horizontal_flip"]}
    first = load_data(cfg, input_shape=(1, 8, 8), seed=5)
    torch.manual_seed(123)  # global RNG state must not matter
    second = load_data(cfg, input_shape=(1, 8, 8), seed=5)
    epoch2 = batches(first.train, 2)
    assert same(epoch2, batches(second.train, 2))
    assert same(batches(first.train, 2, start=7), epoch2[7:])
    assert not same(epoch2, batches(first.train, 3))  # another epoch, another order
    assert batches(first.train, 2, start=len(first.train)) == []


def test_normalize_auto_centres_the_train_split():
    bundle = load_data({"dataset": "digits", "batch_size": 128}, input_shape=(1, 8, 8))
    x = torch.cat([x for x, _ in bundle.train.epoch(0)])
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02
    assert len(bundle.mean) == 1 and 0.25 < bundle.mean[0] < 0.35
    raw = load_data({"dataset": "digits", "normalize": "none"}, input_shape=(1, 8, 8))
    x = torch.cat([x for x, _ in raw.train.epoch(0)])
    assert raw.mean is None and x.min() >= 0 and x.max() <= 1
    given = load_data({"dataset": "digits", "normalize": {"mean": [0.5], "std": [0.5]}}, input_shape=(1, 8, 8))
    x = torch.cat([x for x, _ in given.train.epoch(0)])
    assert given.mean == [0.5] and x.min() >= -1 and x.max() <= 1


def test_mnist1d_sizes_shapes_and_global_rng_untouched():
    random.seed(7)
    np.random.seed(7)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    bundle = load_data({"dataset": "mnist1d", "batch_size": 128}, input_shape=(40,))
    assert random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (3600, 400, 1000)
    assert bundle.num_classes == 10 and bundle.input_shape == (40,)
    x, y = next(iter(bundle.train.epoch(0)))
    assert x.shape == (128, 40) and y.shape == (128,)
    channels = load_data({"dataset": "mnist1d", "batch_size": 128}, input_shape=(1, 40))
    x1, y1 = next(iter(channels.train.epoch(0)))
    assert x1.shape == (128, 1, 40) and torch.equal(x1.view(128, 40), x) and torch.equal(y1, y)
    assert set(torch.cat([y for _, y in bundle.test.epoch(0)]).tolist()) == set(range(10))


def test_shapes_masks_and_determinism():
    cfg = {"dataset": "shapes", "num_samples": 64, "batch_size": 16}
    bundle = load_data(cfg, input_shape=(1, 32, 32), task="segmentation")
    assert bundle.task == "segmentation" and bundle.class_names == ["background", "circle", "square"]
    assert (bundle.train.num_samples + bundle.val.num_samples, bundle.test.num_samples) == (64, 16)
    x, y = next(iter(bundle.train.epoch(0)))
    assert x.shape == (16, 1, 32, 32) and y.shape == (16, 32, 32) and y.dtype == torch.int64
    masks = torch.cat([y for _, y in bundle.train.epoch(0)])
    assert set(masks.unique().tolist()) == {0, 1, 2}
    again = load_data(cfg, input_shape=(1, 32, 32), task="segmentation")
    assert same(batches(bundle.train, 1), batches(again.train, 1))
    assert same(batches(bundle.test), batches(again.test))


@pytest.mark.parametrize("task, dtype, shape, target", [
    ("classification", "float32", (3, 8, 8), (16,)),
    ("segmentation", "float32", (3, 8, 8), (16, 8, 8)),
    ("regression", "float32", (12,), (16, 5)),
    ("classification", "int64", (10,), (16,)),
])
def test_synthetic_for_each_task(task, dtype, shape, target):
    cfg = {"dataset": "synthetic", "num_samples": 200, "num_classes": 5, "batch_size": 16}
    bundle = load_data(cfg, input_shape=shape, input_dtype=dtype, task=task)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (160, 20, 20)
    x, y = next(iter(bundle.train.epoch(0)))
    assert x.shape == (16, *shape) and y.shape == target
    if dtype == "int64":
        assert x.dtype == torch.int64 and 0 <= x.min() and x.max() < 100 and bundle.mean is None
    if task == "regression":
        assert y.dtype == torch.float32 and bundle.num_classes is None
    else:
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < 5 and bundle.num_classes == 5


def test_a_dataset_made_for_another_task_is_refused():
    with pytest.raises(DataError, match="classification dataset"):
        load_data({"dataset": "digits"}, input_shape=(1, 8, 8), task="segmentation")
    with pytest.raises(DataError, match="do not fit"):
        load_data({"dataset": "digits"}, input_shape=(1, 28, 28))


# ---------------------------------------------------------------- torchvision formats

def write_cifar10(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def write_idx(path, array: np.ndarray):
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, n_train=30, n_test=10):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))


@pytest.fixture
def cifar_md5s_skipped(monkeypatch):
    # torchvision checks CIFAR files against their published md5s even with download=False,
    # which tiny test files cannot match: only that integrity check is replaced here.
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def test_cifar10_from_its_on_disk_format(tmp_path, cifar_md5s_skipped):
    write_cifar10(tmp_path)
    cfg = {"dataset": "cifar10", "root": str(tmp_path), "batch_size": 4, "val_fraction": 0.2,
           "augment": [{"random_crop": {"padding": 4}}, "horizontal_flip"]}
    bundle = load_data(cfg, input_shape=(3, 32, 32))
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (16, 4, 4)
    assert bundle.class_names[:2] == ["airplane", "automobile"] and bundle.num_classes == 10
    x, y = next(iter(bundle.train.epoch(0)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and len(bundle.mean) == 3
    grey = load_data({**cfg, "augment": []}, input_shape=(1, 16, 16))  # fitted to the model's input
    assert next(iter(grey.test.epoch(0)))[0].shape == (4, 1, 16, 16)


def test_mnist_from_idx_files(tmp_path):
    write_mnist(tmp_path)
    bundle = load_data({"dataset": "mnist", "root": str(tmp_path), "batch_size": 9}, input_shape=(1, 28, 28))
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (27, 3, 10)
    assert bundle.class_names[0].startswith("0") and bundle.num_classes == 10
    x, _ = next(iter(bundle.test.epoch(0)))
    assert x.shape == (9, 1, 28, 28)
    flat = load_data({"dataset": "mnist", "root": str(tmp_path)}, input_shape=(784,))
    assert next(iter(flat.test.epoch(0)))[0].shape == (10, 784)


def test_missing_torchvision_dataset_names_the_folder(tmp_path):
    with pytest.raises(DataError) as info:
        load_data({"dataset": "cifar10", "root": str(tmp_path / "nowhere")}, input_shape=(3, 32, 32))
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in info.value.message
    assert "download: true" in info.value.hint


@pytest.mark.parametrize("name, module", [("cifar10", "cifar"), ("mnist", "mnist")])
def test_failed_download_is_a_data_error(tmp_path, monkeypatch, name, module):
    import importlib

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(importlib.import_module(f"torchvision.datasets.{module}"), "download_and_extract_archive", offline)
    shape = (3, 32, 32) if name == "cifar10" else (1, 28, 28)
    with pytest.raises(DataError) as info:
        load_data({"dataset": name, "root": str(tmp_path), "download": True}, input_shape=shape)
    assert "could not download" in info.value.message and str(tmp_path) in info.value.message
    assert "network" in info.value.hint


# ---------------------------------------------------------------- image folders

def write_png(path, array: np.ndarray, mode: str | None = None):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode).save(path)


def test_imagefolder_with_and_without_split_folders(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(6):
            write_png(tmp_path / "flat" / cls / f"{i}.png", rng.integers(0, 256, (10, 12, 3)))
            write_png(tmp_path / "split" / "train" / cls / f"{i}.png", rng.integers(0, 256, (10, 12, 3)))
        write_png(tmp_path / "split" / "test" / cls / "0.png", rng.integers(0, 256, (10, 12, 3)))
    cfg = {"dataset": "imagefolder", "root": str(tmp_path / "flat"), "batch_size": 4, "num_workers": 0,
           "val_fraction": 0.25, "augment": ["horizontal_flip"]}
    flat = load_data(cfg, input_shape=(3, 8, 8))
    assert flat.class_names == ["cat", "dog"] and flat.test is None
    assert (flat.train.num_samples, flat.val.num_samples) == (9, 3)
    x, y = next(iter(flat.train.epoch(0)))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert same(batches(flat.train, 1, start=1), batches(flat.train, 1)[1:])
    split = load_data({**cfg, "root": str(tmp_path / "split"), "num_workers": 2, "val_fraction": 0},
                      input_shape=(1, 16, 16))
    assert (split.train.num_samples, split.val, split.test.num_samples) == (12, None, 2)
    assert batches(split.test)[0][0].shape == (2, 1, 16, 16)
    assert same(batches(split.train, 0), batches(split.train, 0))  # persistent workers, next epoch the same


def test_segfolder_images_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        write_png(tmp_path / "images" / f"s{i}.png", rng.integers(0, 256, (12, 12)))
        mask = np.zeros((12, 12))
        mask[2:6, 2:6], mask[7:10, 7:10] = 1, 2
        write_png(tmp_path / "masks" / f"s{i}.png", mask, "L")
    cfg = {"dataset": "segfolder", "root": str(tmp_path), "batch_size": 2, "num_workers": 0,
           "val_fraction": 0.2, "augment": [{"random_crop": {"padding": 2}}, "horizontal_flip", "vertical_flip"]}
    bundle = load_data(cfg, input_shape=(1, 12, 12), task="segmentation")
    assert bundle.num_classes == 3 and (bundle.train.num_samples, bundle.val.num_samples) == (4, 1)
    x, y = next(iter(bundle.val.epoch(0)))
    assert x.shape == (1, 1, 12, 12) and y.shape == (1, 12, 12) and set(y.unique().tolist()) == {0, 1, 2}
    for _, y in bundle.train.epoch(0):
        assert y.shape == (2, 12, 12) and set(y.unique().tolist()) <= {0, 1, 2}
    write_png(tmp_path / "masks" / "orphan.png", np.zeros((12, 12)), "L")
    with pytest.raises(DataError, match="orphan.png has no image"):
        load_data(cfg, input_shape=(1, 12, 12), task="segmentation")


def test_missing_or_empty_folders_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data({"dataset": "imagefolder", "root": str(tmp_path / "none")}, input_shape=(3, 8, 8))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_data({"dataset": "imagefolder", "root": str(tmp_path / "empty")}, input_shape=(3, 8, 8))
    with pytest.raises(DataError, match="images does not exist"):
        load_data({"dataset": "segfolder", "root": str(tmp_path)}, input_shape=(3, 8, 8), task="segmentation")


# ---------------------------------------------------------------- augmentations

def draw(batch: int, seed: int = 0) -> Draw:
    return Draw([(seed, batch, 0, batch)], torch.device("cpu"))


def test_augmentations_move_masks_with_images():
    # pixel values are their own ids (+1), masks the same ids: any geometric change must
    # keep them equal, and padding must show 0 in both
    ids = torch.arange(1, 6 * 7 + 1).view(1, 6, 7).repeat(16, 1, 1)
    x, mask = ids.unsqueeze(1).float(), ids.clone()
    for name in ("random_crop", "horizontal_flip", "vertical_flip"):
        out, out_mask = AUGMENTATIONS[name].fn(x, mask, draw(16), **({"padding": 2} if name == "random_crop" else {}))
        assert out.shape == x.shape and out_mask.shape == mask.shape
        assert torch.equal(out[:, 0].long(), out_mask)
        assert not torch.equal(out, x)


def test_flips_and_crops_do_what_they_say():
    x = torch.arange(12.0).view(1, 1, 3, 4).repeat(8, 1, 1, 1)
    flipped, _ = AUGMENTATIONS["horizontal_flip"].fn(x, None, draw(8), p=1.0)
    assert torch.equal(flipped, x.flip(-1))
    kept, _ = AUGMENTATIONS["vertical_flip"].fn(x, None, draw(8), p=0.0)
    assert torch.equal(kept, x)
    cropped, _ = AUGMENTATIONS["random_crop"].fn(x + 1, None, draw(8), padding=1)
    for image in cropped[:, 0]:  # each crop is a shifted window of the zero-padded image
        padded = torch.nn.functional.pad(x[0, 0] + 1, (1, 1, 1, 1))
        assert any(torch.equal(image, padded[i:i + 3, j:j + 4]) for i in range(3) for j in range(3))
    noisy, _ = AUGMENTATIONS["gaussian_noise"].fn(x, None, draw(8), std=0.1)
    assert 0.05 < (noisy - x).std() < 0.15


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_every_augmentation_is_deterministic_and_keeps_shape(name):
    x = torch.rand(8, 3, 8, 8)
    a, _ = AUGMENTATIONS[name].fn(x, None, draw(8, seed=3))
    b, _ = AUGMENTATIONS[name].fn(x, None, draw(8, seed=3))
    assert a.shape == x.shape and torch.equal(a, b)


def test_augmentation_only_touches_training_batches():
    cfg = {"dataset": "digits", "augment": ["gaussian_noise"]}
    noisy, clean = load_data(cfg, input_shape=(1, 8, 8)), load_data({"dataset": "digits"}, input_shape=(1, 8, 8))
    assert same(batches(noisy.val), batches(clean.val)) and same(batches(noisy.test), batches(clean.test))
    assert not same(batches(noisy.train), batches(clean.train))


# ---------------------------------------------------------------- config mistakes

@pytest.mark.parametrize("data, message, hint", [
    ({"dataset": "digit"}, "unknown dataset `digit`", "did you mean `digits`?"),
    ({"dataset": "digits", "augment": ["horizontal_flp"]}, "unknown augmentation", "did you mean `horizontal_flip`?"),
    ({"dataset": "digits", "augment": [{"random_crop": {"pading": 4}}]}, "no argument `pading`", "`padding`"),
    ({"dataset": "digits", "batchsize": 32}, "unknown key `batchsize`", "did you mean `batch_size`?"),
    ({"dataset": "digits", "val_fraction": 1.5}, "val_fraction", None),
    ({"dataset": "digits", "batch_size": 0}, "batch_size", None),
    ({"dataset": "digits", "normalize": {"mean": [0.1, 0.2], "std": [1, 1]}}, "channel", None),
    ({"batch_size": 32}, "no `dataset:`", None),
])
def test_mistakes_are_data_errors_with_suggestions(data, message, hint):
    with pytest.raises(DataError) as info:
        load_data(data, input_shape=(1, 8, 8))
    assert message in info.value.message
    if hint:
        assert hint in info.value.hint


def test_errors_point_at_the_yaml_line(write_yaml):
    path = write_yaml("""
        model: {input: [1, 8, 8], layers: [{type: flatten}, {type: linear, out_features: 10}]}
        data:
          dataset: digits
          augment: [horizontal_flip, {randomcrop: {padding: 1}}]
    """)
    with pytest.raises(DataError) as info:
        load_data(load_config(path).data, input_shape=(1, 8, 8))
    assert info.value.location.line == 4 and "random_crop" in info.value.hint


# ---------------------------------------------------------------- sharding

@pytest.mark.parametrize("dataset, shape, task", [("digits", (1, 8, 8), "classification"),
                                                   ("shapes", (1, 16, 16), "segmentation")])
def test_rank_shards_concatenate_to_the_global_batch(dataset, shape, task):
    cfg = {"dataset": dataset, "batch_size": 32, "num_samples": 100,
           "augment": [{"random_crop": {"padding": 2}}, "horizontal_flip", "gaussian_noise"]}
    whole = load_data(cfg, input_shape=shape, task=task, seed=4)
    ranks = [load_data(cfg, input_shape=shape, task=task, seed=4, rank=r, world_size=2) for r in range(2)]
    assert all(len(r.train) == len(whole.train) and r.train.batch_size == 16 for r in ranks)
    for (x, y), (x0, y0), (x1, y1) in zip(whole.train.epoch(1), ranks[0].train.epoch(1), ranks[1].train.epoch(1)):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    with pytest.raises(DataError, match="split evenly"):
        load_data({**cfg, "batch_size": 33}, input_shape=shape, task=task, world_size=2)


def test_every_registered_dataset_is_tested():
    tested = {"digits", "mnist1d", "shapes", "synthetic", "cifar10", "mnist", "imagefolder", "segfolder",
              "text"}  # text: tests/test_data_text.py
    same_code = {"cifar100": "cifar10", "fashion_mnist": "mnist"}  # one torchvision loader, another class
    assert set(dataset_names()) == set(DATASETS) == tested | set(same_code)


def test_task_none_takes_the_datasets_own():
    assert load_data({"dataset": "shapes", "num_samples": 8}, input_shape=(1, 16, 16), task=None).task == "segmentation"
    assert load_data({"dataset": "synthetic", "num_samples": 20}, input_shape=(4,), task=None).task == "classification"


@pytest.mark.parametrize("chunk", [2, 3, 8])
def test_batches_are_the_same_whatever_the_chunk(chunk):
    # on a GPU, batches are gathered and augmented several at a time: that must not change them
    spec = {"dataset": "synthetic", "num_samples": 700, "num_classes": 4, "batch_size": 64,
            "augment": [{"random_crop": {"padding": 2}}, "horizontal_flip", {"gaussian_noise": {"std": 0.1}}]}
    one = load_data(spec, input_shape=(3, 8, 8)).train
    many = load_data(spec, input_shape=(3, 8, 8)).train
    one.chunk, many.chunk = 1, chunk
    for start in (0, 3):
        a, b = list(one.epoch(2, start=start)), list(many.epoch(2, start=start))
        assert len(a) == len(b) == len(one) - start
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
