"""The image-folder decode cache (issue 20, item 1): decoded once, bitwise the same results as decoding
every epoch, kept in a file in the run directory over the memory budget, rebuilt when stale or broken."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import skiptrain
from skiptrain.data import decode_cache, folders, load_data
from skiptrain.data.decode_cache import CachedBatches, keep_decoded_in
from skiptrain.errors import DataError


def write_image(path: Path, rng: np.random.Generator, grey: bool = False) -> None:
    from PIL import Image

    height, width = (int(v) for v in rng.integers(9, 40, 2))  # mixed sizes, all resized to the input
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (height, width) if grey else (height, width, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)


def class_folder(root: Path, per_class: int = 9) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("ant", "bee", "cow"):
        for i in range(per_class):
            write_image(root / cls / f"{i}.{'jpg' if i % 2 else 'png'}", rng)
    return root


def seg_folder(root: Path, count: int = 14) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(count):
        write_image(root / "images" / f"s{i}.{'jpg' if i % 2 else 'png'}", rng, grey=True)
        mask = rng.integers(0, 3, (12, 12)).astype(np.uint8)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, "L").save(root / "masks" / f"s{i}.png")
    return root


def config(kind: str, root: Path, cache: bool, workers: int = 0) -> dict:
    if kind == "classification":
        model = {"name": "tiny", "input": [3, 12, 12], "layers": [
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "batchnorm2d"},
            {"type": "relu"}, {"type": "global_avgpool"}, {"type": "linear", "out_features": 3}]}
        data = {"dataset": "imagefolder", "augment": [{"random_crop": {"padding": 2}}, "horizontal_flip"]}
    else:
        model = {"name": "seg", "input": [1, 12, 12], "layers": [
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "relu"},
            {"type": "conv2d", "out_channels": 3, "kernel_size": 1}]}
        data = {"dataset": "segfolder", "augment": ["horizontal_flip"]}
    data.update(root=str(root), batch_size=4, num_workers=workers, cache=cache, val_fraction=0.15)
    return {"model": model, "data": data, "train": {"epochs": 2, "device": "cpu", "seed": 3}}


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every image decoded in this process (with num_workers: 0 that is every image)."""
    seen: list[str] = []
    real = folders.read_image

    def counted(path, *args, **kwargs):
        seen.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(folders, "read_image", counted)
    return seen


def trained(cfg: dict, run: Path) -> tuple[dict, list[dict]]:
    import json

    skiptrain.train(cfg, run_dir=run, quiet=True)
    weights = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return weights, [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s") and "time" not in k} for row in rows]


@pytest.mark.parametrize("kind, budget", [("classification", None), ("classification", 0),
                                          ("segmentation", None)])
def test_cached_training_is_bitwise_the_uncached(tmp_path, monkeypatch, decodes, kind, budget):
    """2 epochs with augmentation and normalize auto: the same weights and metrics, bit for bit, with the
    samples in memory or (budget 0) in a file in the run directory."""
    root = class_folder(tmp_path / "data") if kind == "classification" else seg_folder(tmp_path / "data")
    if budget is not None:
        monkeypatch.setattr(decode_cache, "MEMORY_BUDGET", budget)
    plain_weights, plain_rows = trained(config(kind, root, cache=False), tmp_path / "plain")
    uncached = len(decodes)
    decodes.clear()
    cached_weights, cached_rows = trained(config(kind, root, cache=True), tmp_path / "cached")
    assert plain_rows == cached_rows and len(cached_rows) == 2
    assert plain_weights.keys() == cached_weights.keys()
    for name, value in plain_weights.items():
        assert torch.equal(value, cached_weights[name]), name
    assert len(decodes) < uncached - 10  # without the cache, epoch 2 decodes every sample again
    written = list((tmp_path / "cached" / "cache").glob("decoded-*.bin"))
    assert len(written) == (2 if budget == 0 else 0)  # train and val, only over the budget
    assert not list((tmp_path / "cached" / "cache").glob("*.tmp"))


def passes(bundle, epochs: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for epoch in range(epochs):
        out += list(bundle.train.epoch(epoch))
    return out


def bundle_in(root: Path, run: Path, **extra):
    bundle = load_data({"dataset": "imagefolder", "root": str(root), "batch_size": 4, "num_workers": 0,
                        "val_fraction": 0, "normalize": "none", **extra}, input_shape=(3, 12, 12))
    keep_decoded_in(bundle, run)
    return bundle


def test_a_cache_file_is_reused_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch, decodes):
    monkeypatch.setattr(decode_cache, "MEMORY_BUDGET", 0)
    root, run = class_folder(tmp_path / "data"), tmp_path / "run"
    first = passes(bundle_in(root, run))
    assert len(decodes) == 27 and len(list((run / "cache").glob("decoded-*.bin"))) == 1
    decodes.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid file: no note
        again = passes(bundle_in(root, run))  # a restart in the same run directory
    assert decodes == [] and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    changed = root / "bee" / "3.jpg"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes, new time
    with pytest.warns(UserWarning, match=r"decode cache .*decoded-\w+\.bin is stale .*: rebuilding it"):
        passes(bundle_in(root, run))
    assert len(decodes) == 27
    decodes.clear()
    write_image(changed, np.random.default_rng(7))  # replaced: new pixels are read, not the old ones
    with pytest.warns(UserWarning, match="is stale"):
        replaced = passes(bundle_in(root, run))
    assert len(decodes) == 27 and not all(torch.equal(a[0], b[0]) for a, b in zip(first, replaced))
    decodes.clear()
    assert passes(bundle_in(root, run)) and decodes == []  # the rebuilt file is used


@pytest.mark.parametrize("damage, why", [
    (lambda b: b[: len(b) // 2], "cut short"),
    (lambda b: b"\0" * 64 + b[64:], "bad header"),
    (lambda b: b[:4096] + b[4096:] + b"x", "padded"),
    (lambda b: b"", "bad header"),
])
def test_a_broken_cache_file_is_rebuilt_with_a_note(tmp_path, monkeypatch, decodes, damage, why):
    monkeypatch.setattr(decode_cache, "MEMORY_BUDGET", 0)
    root, run = class_folder(tmp_path / "data"), tmp_path / "run"
    first = passes(bundle_in(root, run))
    (path,) = (run / "cache").glob("decoded-*.bin")
    path.write_bytes(damage(path.read_bytes()))
    decodes.clear()
    with pytest.warns(UserWarning, match=f"decode cache .* is .*{why}.*: rebuilding it"):
        rebuilt = passes(bundle_in(root, run))
    assert len(decodes) == 27
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, rebuilt))
    assert read_ok(path)


def read_ok(path: Path) -> bool:
    return decode_cache.read_header(path)[0] is not None


def test_cache_false_decodes_every_epoch_and_true_once(tmp_path, decodes):
    root = class_folder(tmp_path / "data")
    plain = bundle_in(root, tmp_path / "a", cache=False)
    assert not isinstance(plain.train, CachedBatches)
    passes(plain, 3)
    assert len(decodes) == 3 * 24  # 27 images, batches of 4: 6 batches a pass
    decodes.clear()
    cached = bundle_in(root, tmp_path / "b")
    passes(cached, 3)
    assert len(decodes) == 27 and cached.train.memory is not None
    assert not (tmp_path / "b").exists()  # in memory: nothing written


@pytest.mark.parametrize("cache", [True, False])
def test_a_bad_image_is_the_same_data_error_with_and_without_the_cache(tmp_path, cache):
    root = class_folder(tmp_path / "data")
    bundle = bundle_in(root, tmp_path / "run", cache=cache)
    good = (root / "ant" / "1.jpg").read_bytes()
    (root / "ant" / "1.jpg").write_bytes(good[: len(good) // 2])  # cut short in its pixels, after the scan
    with pytest.raises(DataError) as info:
        passes(bundle)
    assert info.value.message.startswith("the image ant/1.jpg cannot be used"), info.value.message
    assert info.value.hint.startswith("remove the file")


def test_segmentation_cache_key_follows_the_classes(tmp_path, monkeypatch):
    """A mask value that is not a class is refused whether or not an earlier run cached the masks."""
    monkeypatch.setattr(decode_cache, "MEMORY_BUDGET", 0)
    root, run = seg_folder(tmp_path / "data"), tmp_path / "run"

    def bundle(classes: int):
        b = load_data({"dataset": "segfolder", "root": str(root), "batch_size": 4, "num_workers": 0,
                       "val_fraction": 0, "normalize": "none", "num_classes": classes}, input_shape=(1, 12, 12),
                      task="segmentation")
        keep_decoded_in(b, run)
        return b

    passes(bundle(3))
    with pytest.warns(UserWarning, match="is stale"), pytest.raises(DataError, match="has values 2, but the classes"):
        passes(bundle(2))


def test_a_pass_cut_short_does_not_decode_the_whole_split(tmp_path, decodes):
    """limit_batches (a smoke test) reads a few batches a pass: the next pass is not a full decode."""
    import itertools

    bundle = bundle_in(class_folder(tmp_path / "data"), tmp_path / "run")
    list(itertools.islice(bundle.train.epoch(0), 2))
    list(itertools.islice(bundle.train.epoch(1), 2))
    assert len(decodes) == 16 and bundle.train.memory is None
    passes(bundle, 2)  # whole passes: from the second one on, in memory
    assert bundle.train.memory is not None and len(set(decodes)) == 27


def test_a_resumed_run_reuses_its_cache_file_and_ends_the_same(tmp_path, monkeypatch):
    """Over the budget the samples live in RUN_DIR/cache: --resume reads them back instead of decoding,
    and ends with the weights of the run that was never interrupted."""
    monkeypatch.setattr(decode_cache, "MEMORY_BUDGET", 0)
    root = class_folder(tmp_path / "data")
    cfg = config("classification", root, cache=True)
    whole, _ = trained(cfg, tmp_path / "whole")
    skiptrain.train(cfg, run_dir=tmp_path / "part", epochs=1, quiet=True)
    assert len(list((tmp_path / "part" / "cache").glob("decoded-*.bin"))) == 1  # val: complete after one pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skiptrain.train(resume=tmp_path / "part", epochs=2, quiet=True)
    assert not [w for w in caught if "decode cache" in str(w.message)]  # the file was valid and read back
    resumed = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(value, resumed[name]) for name, value in whole.items())
