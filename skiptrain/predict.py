"""Predictions from a trained model (run directory, checkpoint) or an exported .onnx file.

Inputs are image files (resized to the model's H, W; grayscale or RGB by its channels;
scaled to 0..1), ``.npy`` arrays (one sample or a batch, in the same units: before
normalisation) or folders of them. The stored mean/std normalise every input, exactly
as training did. The model's task turns outputs into answers (``Task.predict``):
classification the top classes with probabilities, segmentation a palette PNG per input
(pixel value = class index), regression the raw outputs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import CheckpointError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy",)
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
CHUNK = 64  # samples per forward


@dataclass
class Model:
    """A forward function on numpy batches plus what it takes and what its outputs mean."""

    run: Callable[[np.ndarray], np.ndarray]
    input_shape: list[int]
    input_dtype: str
    output_shape: list[int]
    task: str  # a name in skiptrain.tasks.TASKS
    class_names: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    fixed_batch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def open_model(source: str | Path) -> Model:
    """An .onnx file (onnxruntime), or a run directory / checkpoint (PyTorch, CPU, eval mode)."""
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"no such run directory, checkpoint or .onnx file: {path}", None,
                              "give a run directory written by `skiptrain train`, a .pt checkpoint or "
                              "a file written by `skiptrain export`")
    if path.is_file() and path.suffix.lower() in CONFIG_SUFFIXES:
        raise CheckpointError(f"{path} is a config: predict needs trained weights", None,
                              "train it first (`skiptrain train`), then give the run directory")
    if path.is_file() and path.suffix.lower() == ".onnx":
        return _onnx_model(path)
    return _torch_model(path)


def _onnx_model(path: Path) -> Model:
    from .export import session

    sess = session(path)
    props = {k: _decode(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
    model_input = sess.get_inputs()[0]
    dims = list(model_input.shape)
    input_shape = props.get("input_shape") or [int(d) for d in dims[1:]]
    output_shape = props.get("output_shape") or [d if isinstance(d, int) else -1 for d in sess.get_outputs()[0].shape[1:]]
    dtype = props.get("input_dtype") or ("int64" if "int64" in model_input.type else "float32")
    name = model_input.name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {name: x})[0])

    fixed = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    return Model(run, list(input_shape), dtype, list(output_shape),
                 props.get("task") or _guess_task(input_shape, output_shape), props.get("class_names"),
                 props.get("mean"), props.get("std"), fixed, {"name": props.get("model_name", path.stem)})


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _torch_model(path: Path) -> Model:
    import torch

    from .api import load_checkpoint

    model, _ = load_checkpoint(path)
    meta = model.meta["skiptrain"]
    data = meta.get("data") or {}

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return Model(run, meta["input_shape"], meta["input_dtype"], meta["output_shape"],
                 data.get("task") or _guess_task(meta["input_shape"], meta["output_shape"]),
                 data.get("class_names"), data.get("mean"), data.get("std"), None, {"name": meta["name"]})


def _guess_task(input_shape, output_shape) -> str:
    """A model saved without its task (an .onnx file from elsewhere): the task its shapes suggest."""
    from .tasks import guess

    return guess(input_shape, output_shape).name


def collect(inputs: Iterable[str | Path]) -> list[Path]:
    """The files to predict on: each file given, and the supported files in each folder given."""
    files: list[Path] = []
    supported = IMAGE_SUFFIXES + ARRAY_SUFFIXES
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in supported)
            if not found:
                raise DataError(f"{item} holds no images or .npy files", None,
                                f"supported: {', '.join(supported)}")
            files.extend(found)
        elif item.is_file():
            if item.suffix.lower() not in supported:
                raise DataError(f"{item}: unsupported input file type `{item.suffix or item.name}`", None,
                                f"give images ({', '.join(IMAGE_SUFFIXES)}) or .npy arrays")
            files.append(item)
        else:
            raise DataError(f"no such input file or folder: {item}")
    if not files:
        raise DataError("no inputs given")
    return files


def load_samples(path: Path, model: Model) -> np.ndarray:
    """``[n, *input_shape]`` model inputs from one file, normalised as in training."""
    shape = tuple(model.input_shape)
    if path.suffix.lower() in ARRAY_SUFFIXES:
        x = _read_array(path, shape)
        if model.input_dtype != "float32":
            return x.astype(model.input_dtype)
        x = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
    else:
        x = _read_image(path, shape)[None]
    return _normalise(x, model.mean, model.std)


def _read_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path} is not a readable .npy array ({type(exc).__name__}: {exc})") from None
    size = math.prod(shape)
    if tuple(x.shape) == shape:
        return x[None]
    if tuple(x.shape[1:]) == shape:
        return x
    if x.size == size:
        return x.reshape(1, *shape)
    if x.ndim >= 2 and x.size == x.shape[0] * size:
        return x.reshape(x.shape[0], *shape)
    raise DataError(f"{path} holds an array of shape {list(x.shape)}, but the model takes samples of "
                    f"shape {list(shape)}", None, f"save one sample as {list(shape)} or a batch as [N, {', '.join(map(str, shape))}]")


def _read_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"{path} is an image, but the model takes inputs of shape {list(shape)}", None,
                        "images need a model input of [1, H, W] or [3, H, W]; give .npy arrays instead")
    channels, height, width = shape
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable image ({type(exc).__name__}: {str(exc)[:200]})", None,
                        "give PNG or JPEG files, or .npy arrays") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _normalise(x: np.ndarray, mean, std) -> np.ndarray:
    if mean is None or std is None:
        return np.ascontiguousarray(x, dtype=np.float32)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean.size > 1:
        view = (1, -1) + (1,) * (x.ndim - 2)
        mean, std = mean.reshape(view), std.reshape(view)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _forward(model: Model, x: np.ndarray) -> np.ndarray:
    outputs = []
    step = model.fixed_batch or CHUNK
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        if model.fixed_batch and n < model.fixed_batch:  # a fixed-batch export: pad the last chunk
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], model.fixed_batch - n, axis=0)])
        outputs.append(model.run(chunk)[:n])
    return np.concatenate(outputs)


def predict(source: str | Path, inputs: Iterable[str | Path], top: int = 5,
            output_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One dict per sample: ``input``, and ``top`` classes, a ``mask`` PNG path or ``output`` values."""
    return predict_model(open_model(source), inputs, top, output_dir)


def predict_model(model: Model, inputs: Iterable[str | Path], top: int = 5,
                  output_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """``predict`` on a model already opened: its task turns the outputs into answers."""
    from .tasks import TASKS

    files = collect(inputs)
    labels, batches = [], []
    for path in files:
        x = load_samples(path, model)
        batches.append(x)
        labels.extend([str(path)] if len(x) == 1 else [f"{path}[{i}]" for i in range(len(x))])
    outputs = _forward(model, np.concatenate(batches))
    return TASKS.get(model.task).predict(outputs, labels, class_names=model.class_names, top=top,
                                         output_dir=output_dir)
