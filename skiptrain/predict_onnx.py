"""An ``.onnx`` file from anywhere, opened for ``predict``: the graph is the truth, metadata a hint.

A file written by ``skiptrain export`` carries its input shape, task, class names and normalisation
in ``metadata_props``; a file from elsewhere may carry none of them, or values of any kind. The
input's rank, fixed sizes and element type come from the graph itself; metadata fills only what the
graph leaves open (symbolic sizes), and only when it is well formed. Ill-formed metadata that merely
labels results (task, class names, shapes, name) is ignored with a warning; ill-formed ``mean`` or
``std``, which would change every number, is refused (``predict.check_normalisation``). A token model's
``context`` keeps its sequence axis open (any length up to it) and its ``tokenizer`` reads ``.txt`` prompts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError, warn
from .predict_text import attach

# onnxruntime's element types that predict can feed, as numpy dtype names
ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(int32)": "int32"}
MAX_METADATA_CHARS = 10_000_000  # a metadata value longer than this is not read at all


def open_onnx(path: Path):
    """A ``predict.Model`` for an .onnx file: one input, its shape and type from the graph."""
    from .export import session
    from .predict import Model

    sess = session(path)
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(f"`{i.name}`" for i in inputs[:8]) + (", ..." if len(inputs) > 8 else "")
        raise CheckpointError(f"{path} takes {len(inputs)} inputs ({names}); predict feeds one array", None,
                              "export a model with a single input (skiptrain export writes one, `input`)")
    model_input = inputs[0]
    dtype = ONNX_DTYPES.get(model_input.type)
    if dtype is None:
        raise CheckpointError(f"{path} takes `{model_input.type}` input; predict feeds numbers", None,
                              f"supported input types: {', '.join(ONNX_DTYPES)}")
    dims = [_fixed(d) for d in model_input.shape]
    if not dims:
        raise CheckpointError(f"{path} takes a scalar input, with no batch axis", None,
                              "predict needs a model whose first input axis is the batch")
    props = metadata(sess, path)
    context = _context(props.get("context"), dims[1:])
    input_shape = dims[1:] if context else _sample_shape(dims[1:], props.get("input_shape"), path, "input_shape")
    out_dims = [_fixed(d) for d in sess.get_outputs()[0].shape[1:]]
    output_shape = _sample_shape(out_dims, props.get("output_shape"), path, "output_shape")
    name = model_input.name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {name: x})[0])

    known = [d if d is not None else -1 for d in input_shape], [d if d is not None else -1 for d in output_shape]
    return Model(run, input_shape, dtype, [d if d is not None else -1 for d in output_shape],
                 _task(props.get("task"), path) or _guess_task(*known), _class_names(props.get("class_names"), path),
                 props.get("mean"), props.get("std"), dims[0],
                 attach({"name": str(props.get("model_name", path.stem))[:200]}, props.get("tokenizer"), context,
                        f"{path}'s metadata"))


def metadata(sess, path: Path) -> dict[str, Any]:
    """``metadata_props`` with JSON values decoded; a value that is not JSON stays text."""
    props = {}
    for key, value in sess.get_modelmeta().custom_metadata_map.items():
        if len(value) > MAX_METADATA_CHARS:
            warn(f"{path}: metadata `{key}` is {len(value):,} characters long; ignored")
            continue
        props[key] = _decode(value)
    return props


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
        return value


def _context(value: Any, dims: list[int | None]) -> int | None:
    """Metadata ``context`` (export_tokens): a token model's longest sequence, when the graph leaves that axis
    open (``[batch, sequence]`` token ids); anything else is not a context."""
    return value if _fixed(value) is not None and len(dims) == 1 and dims[0] is None else None


def _fixed(dim: Any) -> int | None:
    """A graph dimension: a positive size, or None for a symbolic or unknown one."""
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


def _sample_shape(dims: list[int | None], meta: Any, path: Path, key: str) -> list[int | None]:
    """The graph's sample dims, symbolic ones filled from metadata ``key`` when it is a list of
    positive sizes of the same rank that agrees with every fixed dim; otherwise left open (None)."""
    if meta is None or None not in dims:
        return list(dims)
    valid = (isinstance(meta, list) and len(meta) == len(dims)
             and all(_fixed(m) is not None and (d is None or d == m) for m, d in zip(meta, dims)))
    if not valid:
        warn(f"{path}: metadata `{key}` {_short(meta)} does not fit the graph's {_dims_text(dims)}; "
             "ignored, the sizes are taken from the inputs")
        return list(dims)
    return list(meta)


def _task(task: Any, path: Path) -> str | None:
    from .tasks import TASKS

    if task is None:
        return None
    if isinstance(task, str) and task in TASKS:
        return TASKS.get(task).name
    warn(f"{path}: metadata `task` {_short(task)} is not a known task; guessed from the shapes instead")
    return None


def _guess_task(input_shape, output_shape) -> str:
    """A model saved without its task (an .onnx file from elsewhere): the task its shapes suggest."""
    from .tasks import guess

    return guess(input_shape, output_shape).name


def _class_names(names: Any, path: Path) -> list[str] | None:
    """A list of names (numbers allowed, shown as text); anything else is ignored with a warning."""
    if names is None:
        return None
    if isinstance(names, list) and all(isinstance(n, (str, int, float)) and not isinstance(n, bool) for n in names):
        return [str(n) for n in names]
    warn(f"{path}: metadata `class_names` {_short(names)} is not a list of names; classes are shown as numbers")
    return None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dims_text(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
