"""Predictions from a trained model (run directory, checkpoint) or an exported .onnx file.

Inputs are image files (resized to the model's H, W; grayscale or RGB by its channels;
scaled to 0..1), ``.npy`` arrays (one sample or a batch, in the same units: before
normalisation), ``.txt`` prompts for a language model with a tokenizer (``predict_text.py``) or
folders of them. The stored mean/std normalise every input, exactly
as training did. The model's task turns outputs into answers (``Task.predict``):
classification the top classes with probabilities, segmentation a palette PNG per input
(pixel value = class index), regression the raw outputs.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import CheckpointError, DataError, Location

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
    from .predict_onnx import open_onnx

    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"no such run directory, checkpoint or .onnx file: {path}", None,
                              "give a run directory written by `skiptrain train`, a .pt checkpoint or "
                              "a file written by `skiptrain export`")
    if path.is_file() and path.suffix.lower() in CONFIG_SUFFIXES:
        raise CheckpointError(f"{path} is a config: predict needs trained weights", None,
                              "train it first (`skiptrain train`), then give the run directory")
    model = open_onnx(path) if path.is_file() and path.suffix.lower() == ".onnx" else _torch_model(path)
    check_normalisation(model, path)
    return model


def check_normalisation(model: Model, path: Path) -> None:
    """``mean`` and ``std`` change every input: both or neither, finite numbers, one or one per channel,
    ``std`` non-zero. Anything else (``mean: "abc"`` in an .onnx file's metadata) is refused."""
    if model.mean is None and model.std is None:
        return
    channels = model.input_shape[0] if model.input_shape else None  # per channel, or per feature of a 1-D input
    for key in ("mean", "std"):
        value = getattr(model, key)
        values = value if isinstance(value, list) else [value]
        ok = (values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                             for v in values)
              and (len(values) == 1 or (channels is not None and len(values) == channels)))
        if not ok or (key == "std" and any(v == 0 for v in values)):
            shown = repr(value) if not isinstance(value, list) or len(value) < 9 else f"a list of {len(value)} values"
            raise CheckpointError(f"{path}: `{key}` is {shown[:80]}, but predict needs "
                                  f"{'a non-zero' if key == 'std' else 'a finite'} number or one per input channel"
                                  f"{f' ({channels})' if channels else ''}", None,
                                  "set both `mean` and `std` in the model's metadata correctly, or remove both "
                                  "(inputs are then used as they are)")


def _torch_model(path: Path) -> Model:
    import torch

    from .api import load_checkpoint
    from .export_tokens import sequence_context
    from .predict_text import attach

    model, _ = load_checkpoint(path)
    meta = model.meta["skiptrain"]
    data = meta.get("data") or {}
    extra = attach({"name": meta["name"]}, data.get("tokenizer"), sequence_context(model), str(path))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return Model(run, meta["input_shape"], meta["input_dtype"], meta["output_shape"],
                 data.get("task") or _guess_task(meta["input_shape"], meta["output_shape"]),
                 data.get("class_names"), data.get("mean"), data.get("std"), None, extra)


def _guess_task(input_shape, output_shape) -> str:
    """A model saved without its task: the task its shapes suggest."""
    from .tasks import guess

    return guess(input_shape, output_shape).name


def collect(inputs: Iterable[str | Path], text: tuple[str, ...] = ()) -> list[Path]:
    """The files to predict on: each file given, and the supported files in each folder given (``text``:
    the suffixes of prompts, for a model with a tokenizer).

    Only regular files are read: a device, a pipe or a socket (a `/dev/zero` link named x.npy)
    is refused by name, given or found in a folder, so no read is unbounded or blocks."""
    from .predict_text import TEXT_SUFFIXES

    files: list[Path] = []
    supported = IMAGE_SUFFIXES + ARRAY_SUFFIXES + text
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in supported and not p.is_dir())
            if not found:
                raise DataError(f"{item} holds no images or .npy files", None,
                                f"supported: {', '.join(supported)}")
            files.extend(_regular(p) for p in found)
        elif item.exists():
            if item.suffix.lower() not in supported:
                prompt = item.suffix.lower() in TEXT_SUFFIXES  # read only for a model with a tokenizer
                raise DataError(f"{item}: unsupported input file type `{item.suffix or item.name}`", None,
                                "a .txt prompt needs a language model that stores its tokenizer (a run of "
                                "`dataset: text`, or its export); give .npy arrays of token ids" if prompt else
                                f"give images ({', '.join(IMAGE_SUFFIXES)}) or .npy arrays")
            files.append(_regular(item))
        else:
            raise DataError(f"no such input file or folder: {item}")
    if not files:
        raise DataError("no inputs given")
    return files


def _regular(path: Path) -> Path:
    """``path`` when it is (a link to) a regular file; a DataError naming what it is otherwise."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise DataError(f"{path} is {kind}, not a regular file", None, "give image files or .npy files")
    return path


def _open(path: Path):
    """``path`` opened for reading, checked again on the open descriptor (never blocks on a pipe)."""
    from .files import open_regular

    return open_regular(path, "input", DataError, "give image files or .npy files")


def load_samples(path: Path, model: Model) -> np.ndarray:
    """``[n, *input_shape]`` model inputs from one file, normalised as in training.

    Sizes the model leaves open (symbolic dims of an .onnx file) are fixed by the first file."""
    if path.suffix.lower() in ARRAY_SUFFIXES:
        x = _read_array(path, model)
        if np.issubdtype(np.dtype(model.input_dtype), np.integer):
            return x.astype(model.input_dtype)
        x = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
        _check_finite(path, x)
    else:
        if np.issubdtype(np.dtype(model.input_dtype), np.integer):
            raise DataError(f"{path} is an image, but the model takes {model.input_dtype} inputs (token ids)",
                            None, "give .npy arrays of integers")
        x = _read_image(path, model)[None]
    return _normalise(x, model.mean, model.std).astype(model.input_dtype, copy=False)


def _read_array(path: Path, model: Model) -> np.ndarray:
    """The array in a .npy file, its header checked before any data is read: numbers only (never
    objects: ``allow_pickle=False``), as many bytes as the header promises, at least one sample."""
    with _open(path) as f:
        try:
            version = np.lib.format.read_magic(f)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = header(f)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
            raise DataError(f"{path} is not a .npy array ({str(exc)[:200]})", None,
                            "save arrays with numpy.save") from None
        integer = np.issubdtype(np.dtype(model.input_dtype), np.integer)
        if dtype.kind not in ("iu" if integer else "iuf"):
            raise DataError(f"{path} holds {_describe_dtype(dtype)}, but the model takes "
                            f"{'integers (token ids)' if integer else 'numbers (integers or floats)'}", None,
                            f"save a numeric array, e.g. numpy.save(path, x.astype('{model.input_dtype}'))")
        size = math.prod(shape) * dtype.itemsize
        left = os.fstat(f.fileno()).st_size - f.tell()
        if left < size:
            raise DataError(f"{path} is truncated: its header promises {list(shape)} {dtype.name} "
                            f"({size:,} bytes) but {max(left, 0):,} bytes follow", None, "save the array again")
        if math.prod(shape) == 0:
            raise DataError(f"{path} holds no samples (shape {list(shape)})", None,
                            "save at least one sample")
        _check_room(path, size + math.prod(shape) * 4)  # the array and its float32 copy
        f.seek(0)
        try:
            x = np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path} is not a readable .npy array ({str(exc)[:200]})") from None
    return _as_samples(path, x, model)


def _check_room(path: Path, needed: int) -> None:
    """Refuse, before reading, an array whose values and their float32 copy cannot fit in memory."""
    import torch

    from .training.setup import available_memory, human_bytes

    available = available_memory(torch.device("cpu"))
    if available is not None and needed > available:
        raise DataError(f"{path} needs {human_bytes(needed)} of memory to read, but {human_bytes(available)} "
                        "is available", None, "split the array into smaller files")


def _describe_dtype(dtype: np.dtype) -> str:
    kinds = {"b": "booleans", "c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects",
             "M": "dates", "m": "time spans", "f": "floats"}
    return "records (a structured dtype)" if dtype.names else kinds.get(dtype.kind, f"`{dtype}` values")


def _as_samples(path: Path, x: np.ndarray, model: Model) -> np.ndarray:
    """``x`` as a batch of samples of the model's shape (one sample, a batch, or the same values flat)."""
    if None in model.input_shape:  # open sizes: this file's fix them for every later input
        sample = x.shape if x.ndim == len(model.input_shape) else x.shape[1:]
        if len(sample) == len(model.input_shape) and all(d in (None, s) for d, s in zip(model.input_shape, sample)):
            model.input_shape = list(sample)
    shape = tuple(model.input_shape)
    if None not in shape:
        size = math.prod(shape)
        if tuple(x.shape) == shape:
            return x[None]
        if tuple(x.shape[1:]) == shape:
            return x
        if x.size == size:
            return x.reshape(1, *shape)
        if x.ndim >= 2 and x.size == x.shape[0] * size:
            return x.reshape(x.shape[0], *shape)
    shown = ", ".join("?" if d is None else str(d) for d in shape)
    raise DataError(f"{path} holds an array of shape {list(x.shape)}, but the model takes samples of "
                    f"shape [{shown}]", None, f"save one sample as [{shown}] or a batch as [N, {shown}]")


def _check_finite(path: Path, x: np.ndarray) -> None:
    """NaN or infinite inputs give meaningless answers (and invalid JSON): refused with the sample."""
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise DataError(f"{path} holds NaN or infinite values (sample {first}"
                        f"{f' and {int((~finite).sum()) - 1} more' if (~finite).sum() > 1 else ''})", None,
                        "predict takes finite numbers; clean the array first (numpy.nan_to_num)")


def _read_image(path: Path, model: Model) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    shape = model.input_shape
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"{path} is an image, but the model takes inputs of shape {list(shape)}", None,
                        "images need a model input of [1, H, W] or [3, H, W]; give .npy arrays instead")
    channels = shape[0]
    try:
        with _open(path) as f, Image.open(f) as image:
            if None in shape:  # open sizes: the first image's fix them
                model.input_shape = [channels, shape[1] or image.size[1], shape[2] or image.size[0]]
            height, width = model.input_shape[1:]
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
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


def _forward(model: Model, x: np.ndarray, labels: list[str]) -> np.ndarray:
    """The model's outputs for every sample, in chunks; a failure or a non-finite output names its inputs."""
    outputs = []
    step = model.fixed_batch or CHUNK
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        if model.fixed_batch and n < model.fixed_batch:  # a fixed-batch export: pad the last chunk
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], model.fixed_batch - n, axis=0)])
        names = _names(labels[start:start + n])
        try:
            out = model.run(chunk)
        except MemoryError:
            raise DataError(f"not enough memory for a forward of {len(chunk)} samples ({names})") from None
        except Exception as exc:  # onnxruntime and torch raise many kinds for inputs a model cannot take
            raise DataError(f"the model cannot run on {names}: {_first_line(exc)}", None,
                            "check the inputs' shape, type and values against the model") from None
        if out.dtype.kind not in "biuf" or out.ndim < 1 or out.shape[0] != len(chunk):
            raise DataError(f"the model's output for {names} is {out.dtype} of shape {list(out.shape)}; "
                            f"predict needs numbers with the batch ({len(chunk)}) first")
        outputs.append(out[:n])
    result = np.concatenate(outputs)
    finite = np.isfinite(result.reshape(len(result), -1)).all(axis=1)
    if not finite.all():
        raise DataError(f"the model's outputs for {_names([l for l, ok in zip(labels, finite) if not ok])} are NaN "
                        "or infinite", None, "the inputs are probably far outside the range the model was "
                                             "trained on (or the weights are not finite)")
    return result


def _names(labels: list[str]) -> str:
    return ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def check_output_dir(output_dir: Path) -> Path:
    """``--output-dir``, checked before any work: a folder (or one that can be made) that is writable."""
    from .outputs import OutputError, nearest_existing

    loc = Location("--output-dir")
    existing = nearest_existing(output_dir)
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"{existing} is a file, not a folder", loc, "give a folder for the predictions")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"the folder {existing} is not writable", loc, "choose a folder you can write to")
    return output_dir


def predict(source: str | Path, inputs: Iterable[str | Path], top: int = 5,
            output_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One dict per sample: ``input``, and ``top`` classes, a ``mask`` PNG path or ``output`` values."""
    if output_dir is not None:
        check_output_dir(Path(output_dir))
    return predict_model(open_model(source), inputs, top, output_dir)


def predict_model(model: Model, inputs: Iterable[str | Path], top: int = 5,
                  output_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """``predict`` on a model already opened: its task turns the outputs into answers.

    Every answer is finite (non-finite inputs and outputs are refused), so ``--json`` is valid JSON.
    A model with a tokenizer also reads ``.txt`` prompts (``predict_text``); each file then runs at its own
    length, and each predicted token carries its text."""
    from .outputs import OutputError
    from .predict_text import TEXT_SUFFIXES, add_text, prompt_ids
    from .tasks import TASKS

    if output_dir is not None:
        check_output_dir(Path(output_dir))
    tokenizer = model.extra.get("tokenizer")
    files = collect(inputs, TEXT_SUFFIXES if tokenizer is not None else ())
    labels, batches = [], []
    for path in files:
        x = prompt_ids(path, model) if path.suffix.lower() in TEXT_SUFFIXES else load_samples(path, model)
        batches.append(x)
        labels.extend([str(path)] if len(x) == 1 else [f"{path}[{i}]" for i in range(len(x))])
    if tokenizer is None:
        outputs = _forward(model, np.concatenate(batches), labels)
    else:  # prompts of any length: a forward per file; the answer is read at the last position
        firsts = np.cumsum([0] + [len(x) for x in batches])
        outputs = np.concatenate([_forward(model, x, labels[i:i + len(x)])[:, -1:] for i, x in zip(firsts, batches)])
    task = TASKS.get(model.task)
    try:
        answers = task.predict(outputs, labels, class_names=model.class_names, top=top, output_dir=output_dir)
        return answers if tokenizer is None else add_text(answers, tokenizer, task.answer_key)
    except OSError as exc:  # a task that writes files (masks) into a folder that refuses them
        raise OutputError(f"could not write the predictions: {exc.strerror or exc}"
                          f"{f' ({exc.filename})' if exc.filename else ''}", Location("--output-dir"),
                          "give a writable --output-dir") from None
