"""Register ``torch.nn``'s single-tensor layers under lower-case aliases, derived, not listed.

``Conv2d`` becomes ``conv2d``, ``ConvTranspose2d`` ``conv_transpose2d``,
``AdaptiveAvgPool2d`` ``adaptive_avgpool2d``; the exact class names work too.
"""
from __future__ import annotations

import re

from torch import nn

from ..registry import LayerType, add, axis_of

# Classes that are not one-tensor-in, one-tensor-out layers, or need objects as arguments.
_EXCLUDED = {
    "Module", "Container", "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict",
    "DataParallel", "MultiheadAttention", "Transformer", "TransformerEncoder", "TransformerDecoder",
    "TransformerDecoderLayer", "Bilinear", "CosineSimilarity", "PairwiseDistance", "SyncBatchNorm",
    "RNNBase", "RNN", "LSTM", "GRU", "RNNCellBase", "RNNCell", "LSTMCell", "GRUCell",
    "AdaptiveLogSoftmaxWithLoss", "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d", "CrossMapLRN2d",
}
# skiptrain's defaults where torch's would surprise a user of per-sample shapes.
_DEFAULTS = {"TransformerEncoderLayer": {"batch_first": True}}
# Activations whose backward reads only their result, so running in place on a fresh value is safe.
_INPLACE_SAFE = {"ReLU", "ReLU6", "LeakyReLU"}
_PREFIXES = (("ConvTranspose", "conv_transpose"), ("AdaptiveAvg", "adaptive_avg"),
             ("AdaptiveMax", "adaptive_max"), ("FractionalMax", "fractional_max"),
             ("TransformerEncoderLayer", "transformer_encoder_layer"))


def alias(class_name: str) -> str:
    """The contract's lower-case name of a torch.nn class."""
    for prefix, replacement in _PREFIXES:
        if class_name.startswith(prefix):
            return replacement + class_name[len(prefix):].lower()
    return class_name.lower()


def _aliases(class_name: str, primary: str) -> tuple[str, ...]:
    names = {class_name, class_name.lower()}
    if not re.search(r"[A-Z]{2}", class_name):  # snake_case where it reads well: batch_norm2d
        names.add(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", class_name).lower())
    return tuple(sorted(names - {primary}))


def _register_torch_nn() -> None:
    for class_name in sorted(dir(nn)):
        cls = getattr(nn, class_name)
        if (not isinstance(cls, type) or not issubclass(cls, nn.Module) or class_name in _EXCLUDED
                or issubclass(cls, nn.modules.loss._Loss) or class_name.startswith("Lazy")):
            continue
        primary = alias(class_name)
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        axis = axis_of(cls)
        # layers that infer a width (conv, linear, norms, attention) or pool compute a new tensor
        # and their backward reads only their input: the skip may add into their output in place
        add(LayerType(primary, cls, axis=axis, aliases=_aliases(class_name, primary),
                      defaults=_DEFAULTS.get(class_name, {}), doc=doc, fresh_output=axis != "inherit",
                      may_run_inplace=class_name in _INPLACE_SAFE))


_register_torch_nn()
