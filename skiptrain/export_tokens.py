"""Token models in ONNX: a dynamic sequence axis up to the context, and the tokenizer in the metadata.

A language model takes ``[batch, T]`` token ids and answers at every position, and generation feeds it
prompts of any length up to its context. So its export keeps the sequence axis open (``sequence``,
1..context) beside the batch, is verified at several lengths, and records ``context`` and the run's
``tokenizer`` (its plain-types form, as JSON) so that ``predict`` can read a text prompt from the
``.onnx`` file alone. One rule decides, from the model itself rather than a task's name: token ids in
(an integer ``[T]`` sample), and an output whose first axis follows a shorter input's length.
"""
from __future__ import annotations

import json
from typing import Any

import torch

SEQUENCE = "sequence"  # the name of the dynamic sequence axis in the graph


def sequence_context(model: torch.nn.Module) -> int | None:
    """The context T when the model takes ``[T]`` token ids and runs on fewer (its output then keeps the
    shorter length first); None for every other model, whose sample shape stays fixed."""
    meta = model.meta["skiptrain"]
    shape, out = meta["input_shape"], meta["output_shape"]
    if not meta["input_dtype"].startswith("int") or len(shape) != 1 or not out or out[0] != shape[0]:
        return None
    context = int(shape[0])
    if context < 2:
        return None
    shorter = max(1, context // 2)
    try:
        with torch.inference_mode():
            got = model(torch.zeros((1, shorter), dtype=getattr(torch, meta["input_dtype"])))
    except Exception:  # a layer that needs the full length (a fixed table): the sequence stays fixed
        return None
    got = got if isinstance(got, torch.Tensor) else got[0]
    return context if got.dim() >= 2 and got.shape[1] == shorter else None


def lengths(context: int | None) -> tuple[int | None, ...]:
    """The sequence lengths a verification runs: 1, half the context and the context (None: the model's
    fixed sample shape)."""
    return (None,) if context is None else tuple(sorted({1, max(1, context // 2), context}))


def dynamic_shapes(batch: bool, context: int | None) -> tuple[dict[int, Any]] | None:
    """The dynamo exporter's ``dynamic_shapes`` for the one input."""
    dims: dict[int, Any] = {0: "batch"} if batch else {}
    if context is not None:
        dims[1] = torch.export.Dim(SEQUENCE, min=1, max=context)
    return (dims,) if dims else None


def dynamic_axes(names: tuple[str, str], batch: bool, context: int | None) -> dict[str, dict[int, str]] | None:
    """The TorchScript exporter's ``dynamic_axes`` for the input and the output."""
    axes = ({0: "batch"} if batch else {}) | ({1: SEQUENCE} if context is not None else {})
    return {name: dict(axes) for name in names} if axes else None


def token_metadata(data: dict[str, Any], context: int | None) -> dict[str, str]:
    """``context`` (the longest sequence the file takes) and the run's ``tokenizer``, where known."""
    props = {}
    if context is not None:
        props["context"] = str(context)
    tokenizer = data.get("tokenizer")
    if isinstance(tokenizer, dict):
        props["tokenizer"] = json.dumps(tokenizer, ensure_ascii=False)
    return props
