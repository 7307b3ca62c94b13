"""Register torchvision's building blocks (``torchvision.ops`` and its Swin blocks), derived, not copied.

Registered on demand (``layers.on_demand``: importing torchvision takes a second). Like the
``torch.nn`` registry: every one-tensor layer of ``torchvision.ops`` under a snake_case
name (``SqueezeExcitation`` -> ``squeeze_excitation``, ``StochasticDepth`` -> ``stochastic_depth``),
the class name as an alias, and torchvision's own modules, so their state-dict keys are
torchvision's (``attn.relative_position_bias_table``, ``fc1.weight``). Two things are adapted:

- arguments that take a layer class (``activation_layer``, ``norm_layer``, ``scale_activation``)
  take a layer type's name (``hardswish``), ``{type: batchnorm2d, eps: 0.001}`` (a partial), or null;
- arguments that follow from the input shape are renamed to skiptrain's inferred names where
  torchvision's name says nothing of the axis: ``dim`` (the last axis of a ``[H, W, C]`` sample)
  becomes ``embed_dim``, ``MLP``'s ``in_channels`` (it works on the last axis) ``in_features``.
"""
from __future__ import annotations

import functools
import inspect
import re
import typing
from typing import Any, Callable

import torchvision.ops
from torch import nn
from torchvision.models import convnext, swin_transformer

from ..errors import ConfigError, warn
from ..registry import LAYERS, LayerType, add, axis_of, get
from .torch_nn import alias

# Not one-tensor-in, one-tensor-out layers (boxes, dicts of feature maps, an offset input), and
# `Permute`, whose dims count the batch axis: skiptrain's `permute` counts the axes of one sample.
_EXCLUDED = {"DeformConv2d", "FeaturePyramidNetwork", "MultiScaleRoIAlign", "PSRoIAlign", "PSRoIPool",
             "RoIAlign", "RoIPool", "Permute"}
_SWIN = ("ShiftedWindowAttention", "ShiftedWindowAttentionV2", "PatchMerging", "PatchMergingV2")
# torchvision's argument name -> skiptrain's inferred one, per class
_RENAMED = {"MLP": {"in_channels": "in_features"}, **{name: {"dim": "embed_dim"} for name in _SWIN},
            "LayerNorm2d": {"normalized_shape": "num_channels"}}  # ConvNeXt's: the channels of [C, H, W]
_CLASS_ARGS = {"activation_layer", "norm_layer", "activation", "scale_activation"}
_DEFAULTS = {"StochasticDepth": {"mode": "row"}}  # torchvision's models use "row"
_ALIASES = {"StochasticDepth": ("drop_path",)}  # timm's name
# A new tensor that its own backward does not read: a skip may add into it in place. Not those that
# may return their input (stochastic depth and drop block in eval) or end in an in-place activation.
_FRESH = {"SqueezeExcitation", "FrozenBatchNorm2d", "PatchMerging", "PatchMergingV2"}


# One line each for docs/layers.md, where torchvision's first docstring line says little.
_DOCS = {
    "Conv2dNormActivation": "conv2d, then a norm (default batchnorm2d), then an activation (default relu); "
                            "padding keeps the size at stride 1; no conv bias before a norm",
    "Conv3dNormActivation": "conv3d, then a norm (default batchnorm3d), then an activation (default relu)",
    "DropBlock2d": "drop contiguous `block_size` squares of a feature map with probability `p` while training",
    "DropBlock3d": "drop contiguous `block_size` cubes of a volume with probability `p` while training",
    "FrozenBatchNorm2d": "batchnorm2d whose statistics and affine parameters are buffers, never trained",
    "LayerNorm2d": "ConvNeXt's layer norm over the channels of a `[C, H, W]` sample (layernorm between two "
                   "permutes, one module: torchvision's keys `weight`, `bias`)",
    "MLP": "linear layers of `hidden_channels` widths on the last axis, each but the last followed by "
           "a norm (optional), an activation and dropout",
    "SqueezeExcitation": "squeeze-and-excitation: scale each channel by a gate computed from the pooled input "
                         "(`squeeze_channels` wide); MobileNetV3's with `scale_activation: hardsigmoid`",
    "StochasticDepth": "drop the whole residual branch of a sample (`mode: row`) or of the batch with probability "
                       "`p` while training, scaling what is kept by 1 / (1 - p); identity in eval",
    "ShiftedWindowAttention": "Swin's attention on an `[H, W, C]` sample: shifted windows with their mask and a "
                              "relative position bias table (`relative_position_bias_table`)",
    "ShiftedWindowAttentionV2": "Swin V2's attention on an `[H, W, C]` sample: cosine attention with a "
                                "continuous position bias",
    "PatchMerging": "Swin's downsampling: `[H, W, C]` -> `[H/2, W/2, 2C]` (2x2 neighbours concatenated, "
                    "normed, reduced)",
    "PatchMergingV2": "Swin V2's downsampling: `[H, W, C]` -> `[H/2, W/2, 2C]`, normed after the reduction",
}


def snake(class_name: str) -> str:
    """``Conv2dNormActivation`` -> ``conv2d_norm_activation``, ``MLP`` -> ``mlp``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", class_name).lower()


def layer_class(value: Any, name: str) -> Callable[..., nn.Module] | None:
    """A layer type's name, ``{type: ..., **arguments}`` or null, as the class torchvision's argument takes."""
    if value is None:
        return None
    if isinstance(value, dict):
        kwargs = dict(value)
        kind = kwargs.pop("type", None)
        if not isinstance(kind, str):
            raise ValueError(f"`{name}: {value}` needs a `type:` naming a layer type, e.g. {{type: batchnorm2d}}")
        return functools.partial(layer_class(kind, name), **kwargs)
    if not isinstance(value, str):
        raise ValueError(f"`{name}` takes a layer type's name (such as `relu`), {{type: ..., ...}} or null, "
                         f"not {value!r}")
    try:
        layer = get(value)
    except ConfigError as error:  # raised inside a build: keep the did-you-mean in the message
        raise ValueError(f"`{name}`: {error.message}; {error.hint}") from None
    if layer.passthrough or layer.tensor or not isinstance(layer.factory, type):
        raise ValueError(f"`{name}: {value}` must name a layer type that is a module class, such as `relu` or "
                         "`batchnorm2d`")
    return layer.factory


def _default(value: Any) -> Any:
    """A class default as a config writes it: ``nn.ReLU`` -> ``relu``, ``nn.BatchNorm2d`` -> ``batchnorm2d``."""
    return alias(value.__name__) if isinstance(value, type) and issubclass(value, nn.Module) else value


def adapt(cls: type[nn.Module], renamed: dict[str, str]) -> Callable[..., nn.Module]:
    """A factory over ``cls`` that takes skiptrain's argument names and layer type names for classes."""
    signature = inspect.signature(cls)
    params, annotations = [], {}
    for name, param in signature.parameters.items():
        new = renamed.get(name, name)
        if name in _CLASS_ARGS:
            param = param.replace(default=_default(param.default), annotation=str | dict | None)
        params.append(param.replace(name=new))
        annotations[new] = param.annotation
    back = {new: old for old, new in renamed.items()}
    lists = {name for name, p in signature.parameters.items() if typing.get_origin(p.annotation) is list}

    def factory(**kwargs: Any) -> nn.Module:
        kwargs = {back.get(k, k): v for k, v in kwargs.items()}
        kwargs = {k: layer_class(v, k) if k in _CLASS_ARGS else list(v) if k in lists and isinstance(v, tuple) else v
                  for k, v in kwargs.items()}  # torchvision copies its lists (`window_size.copy()`)
        for name in _CLASS_ARGS & set(signature.parameters):
            if name not in kwargs and isinstance(signature.parameters[name].default, str):
                kwargs[name] = layer_class(signature.parameters[name].default, name)
        return cls(**kwargs)

    factory.__signature__ = signature.replace(parameters=params, return_annotation=nn.Module)
    factory.__annotations__ = annotations
    factory.__name__ = factory.__qualname__ = cls.__name__
    factory.__doc__ = cls.__doc__
    factory.__wrapped_class__ = cls
    return factory


def _register(cls: type[nn.Module]) -> None:
    name = snake(cls.__name__)
    if name in LAYERS:  # registered already (on_demand runs again after a test's scoped registry), or a plugin's
        taken = LAYERS.get(name)
        if getattr(taken.factory, "__wrapped_class__", None) is not cls:
            warn(f"layer type `{name}` is registered by {LAYERS.origin(taken.name)} (a plugin); torchvision's "
                 f"{cls.__name__} is not registered under that name")
        return
    factory = adapt(cls, _RENAMED.get(cls.__name__, {}))
    doc = _DOCS.get(cls.__name__) or (cls.__doc__ or "").strip().split("\n")[0]
    aliases = tuple(sorted({cls.__name__, cls.__name__.lower(), *_ALIASES.get(cls.__name__, ())} - {name}))
    add(LayerType(name, factory, axis=axis_of(factory), aliases=aliases, doc=f"torchvision's {cls.__name__}: {doc}",
                  defaults=_DEFAULTS.get(cls.__name__, {}), fresh_output=cls.__name__ in _FRESH))


def register_all() -> None:
    """Every one-tensor module of torchvision.ops, Swin's blocks and ConvNeXt's LayerNorm2d (skipping names
    already registered)."""
    for class_name in sorted(dir(torchvision.ops)):
        cls = getattr(torchvision.ops, class_name)
        if isinstance(cls, type) and issubclass(cls, nn.Module) and class_name not in _EXCLUDED:
            _register(cls)
    for class_name in _SWIN:
        _register(getattr(swin_transformer, class_name))
    _register(convnext.LayerNorm2d)
