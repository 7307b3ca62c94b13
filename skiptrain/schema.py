"""A JSON Schema (draft 2020-12) of the config language, for editors and CI.

Generated from the definitions the loader checks with: the key tuples of ``spec.py``,
the layer registry (each type's constructor arguments), and the pydantic declarations of
the data options and the train settings. Nothing here is listed twice: a new layer type,
dataset or train key appears in the schema by itself. The schema is a convenience:
``skiptrain validate`` stays the authority (shapes, ids and skips are beyond what a
schema can check).

    # yaml-language-server: $schema=./skiptrain.schema.json

Its shape is chosen for what yaml-language-server does with it (``tests/test_schema_lsp.py``
runs the real server): titles name snippets and hovers, a layer's `type:` lives in
``schema_types.py``, and ``schema_blocks.py`` adds a config's own blocks (``skiptrain schema CONFIG``).
"""
from __future__ import annotations

import copy
import functools
import inspect
import types
import typing
from typing import Any

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://skiptrain.dev/skiptrain.schema.json"
EXPR = {"$ref": "#/$defs/expr"}
WHEN = {"anyOf": [{"type": "boolean"}, EXPR], "default": True,
        "description": "the item exists only when this is true: `${stride == 1 and expand_ratio != 1}`"}
TIE = {"description": "share a parameter with another layer: `tie: wte` (this layer's `weight` is `wte.weight`) "
                      "or `{weight: wte.weight}`",
       "anyOf": [{"type": "string"}, {"type": "object", "additionalProperties": {"type": "string"}}]}
_ID_PATTERN = r"^([A-Za-z_][A-Za-z0-9_-]*|0|[1-9][0-9]*)$"  # a name, or an index such as torchvision's `features.3`
# an id as written: a name or index, YAML's integer index, or `${...}` computed from block arguments
ID = {"anyOf": [{"type": "string", "pattern": _ID_PATTERN, "not": {"const": "input"}},
                {"type": "integer", "minimum": 0}, EXPR]}


def config_schema(config: Any = None) -> dict[str, Any]:
    """The whole schema: a full config (model, data, train) or a model-only file; with a config's path,
    also what its own blocks take (their arguments, the names their `${...}` may use)."""
    from .config import SECTIONS

    sections = {"model": {"description": "the network: a mapping, or the path of a model file",
                          "if": {"type": "object"}, "then": {"$ref": "#/$defs/model"}, "else": {"type": "string"}},
                "data": {"$ref": "#/$defs/data"}, "train": {"$ref": "#/$defs/train"}}
    # `model:` is required only once every key is a section, so a misspelled `modle:` is one error, on its line
    full = {"title": "skiptrain config", "type": "object", "additionalProperties": False,
            "properties": {name: sections[name] for name in SECTIONS},
            "if": {"propertyNames": {"pattern": "^(?:" + "|".join(SECTIONS) + ")$"}}, "then": {"required": ["model"]}}
    # a model-only file is told apart as the loader does (`layers:` or `input:` at the top, no `model:`):
    # an empty or misspelled file is read as a full config, and offered `model`, `data`, `train`
    model_only = {"not": {"required": ["model"]}, "anyOf": [{"required": ["layers"]}, {"required": ["input"]}]}
    schema = {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "skiptrain config",
        "description": "A skiptrain config (model, data, train), or a model-only file. "
                       "`skiptrain validate` checks what a schema cannot: shapes, ids, skips.",
        "if": model_only,
        "then": {"$ref": "#/$defs/model"},
        "else": full,
        "$defs": {"expr": {"type": "string", "pattern": r"\$\{[^}]*\}",
                           "description": "`${expr}`: a block argument or integer arithmetic"},
                  "model": model_schema(), "block": block_schema(), "instance": instance_schema(),
                  "block_name": {"type": "string", "description": "the name of a block in `blocks:`"},
                  # a new entry (neither key yet) is offered both `type:` and `block:`
                  "entry": {"if": {"type": "object", "required": ["block"]}, "then": {"$ref": "#/$defs/instance"},
                            "else": {"if": {"type": "object", "required": ["type"]}, "then": {"$ref": "#/$defs/layer"},
                                     "else": new_entry_schema()}},
                  "layers": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/entry"}},
                  "skip": skip_schema(), "skips": {"type": "array", "items": {"$ref": "#/$defs/skip"}},
                  "ref": {"type": ["string", "integer"], "minimum": 0,
                          "description": "an id in this scope (dotted paths allowed) or `input`"},
                  **_layer_defs(), "data": data_schema(), "train": train_schema()},
    }
    if config is not None:
        from .schema_blocks import read_blocks, specialise

        specialise(schema, read_blocks(config))
    return schema


def _layer_defs() -> dict[str, Any]:
    """`type` and `layer`, the bulk of the schema: built once per set of registered layer and merge names
    (a plugin, or a test's scoped registry, changes them), copied for each caller."""
    from . import registry
    from .merges import MERGES

    return copy.deepcopy(_built_layer_defs(tuple(registry.names()), tuple(MERGES.names())))


@functools.lru_cache(maxsize=2)
def _built_layer_defs(*registered: tuple[str, ...]) -> dict[str, Any]:
    from .schema_types import type_schema

    return {"type": type_schema(_summaries(), EXPR), "layer": layer_schema()}


def new_entry_schema() -> dict[str, Any]:
    """A `layers` entry being written: `type:` (a layer) or `block:` (an instance of a block)."""
    return {"title": "layer", "type": "object", "required": ["type"],
            "description": "a layer (`type:`) or a block instance (`block:`)",
            "properties": {"type": {"$ref": "#/$defs/type"}, "block": {"$ref": "#/$defs/block_name"}, "id": ID}}


# -- model ---------------------------------------------------------------------------------
def _policy(expr: bool = True) -> dict[str, Any]:
    from .spec import POLICIES

    choice = {"enum": list(POLICIES), "description": "projection policy for mismatched skips"}
    return {"anyOf": [choice, EXPR]} if expr else choice


def model_schema() -> dict[str, Any]:
    from .spec import DTYPES, MODEL_KEYS

    positive = {"type": "integer", "minimum": 1, "maximum": 2**31}
    props = {
        "name": {"type": "string", "description": "the model's name (also its class name)"},
        "input": {"description": "shape of one sample, batch excluded: [3, 32, 32]",
                  "anyOf": [positive, {"type": "array", "items": positive, "minItems": 1, "maxItems": 5}]},
        "input_dtype": {"enum": list(DTYPES), "default": "float32"},
        "projection": {**_policy(expr=False), "default": "auto"},
        "blocks": {"type": "object", "description": "block name -> definition",
                   "additionalProperties": {"$ref": "#/$defs/block"}},
        "layers": {"$ref": "#/$defs/layers"},
        "skips": {"$ref": "#/$defs/skips"},
        "output": {"$ref": "#/$defs/ref"},
        "width_multiplier": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000, "default": 1.0},
        "depth_multiplier": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000, "default": 1.0},
    }
    assert set(props) == set(MODEL_KEYS), "model_schema is out of step with spec.MODEL_KEYS"
    return {"title": "model", "type": "object", "required": ["input", "layers"], "additionalProperties": False,
            "properties": {key: props[key] for key in MODEL_KEYS}}


def block_schema() -> dict[str, Any]:
    from .spec import BLOCK_KEYS

    props = {"args": {"type": "object", "description": "argument name -> default (null: required)"},
             "layers": {"$ref": "#/$defs/layers"}, "skips": {"$ref": "#/$defs/skips"},
             "projection": _policy(), "output": {"$ref": "#/$defs/ref"}}
    return {"title": "block", "type": "object", "required": ["layers"], "additionalProperties": False,
            "properties": {key: props[key] for key in BLOCK_KEYS}}


def instance_schema() -> dict[str, Any]:
    from .spec import INSTANCE_KEYS

    props = {"id": ID, "block": {"$ref": "#/$defs/block_name"},
             "args": {"type": "object"}, "first_args": {"type": "object", "description": "args of the first copy"},
             "repeat": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 100_000}, EXPR]},
             "copy_id": {"type": "string",
                         "description": "each copy's id, from ${repeat_index}: denselayer${repeat_index + 1}"},
             "input": {"$ref": "#/$defs/ref"}, "projection": _policy(), "when": WHEN}
    return {"title": "block instance", "type": "object", "required": ["block"], "additionalProperties": False,
            "description": "a block instance", "properties": {key: props[key] for key in INSTANCE_KEYS}}


def skip_schema() -> dict[str, Any]:
    from .merges import DEFAULT, MERGES, ORDERS, TO_FIRST
    from .spec import SKIP_KEYS

    ref = {"anyOf": [{"$ref": "#/$defs/ref"}, EXPR]}
    props = {"from": ref, "to": ref, "merge": {"anyOf": [{"enum": list(MERGES)}, EXPR], "default": DEFAULT},
             "projection": _policy(), "axis": {"anyOf": [{"type": "integer"}, EXPR]},
             "id": {**ID, "description": "the name of this skip's projection module in its scope (`downsample`)"},
             "order": {"anyOf": [{"enum": list(ORDERS)}, EXPR], "default": TO_FIRST,
                       "description": "concat's operands: `to_first` cat([to, from]), `from_first` cat([from, to])"},
             "when": WHEN}
    return {"title": "skip", "type": "object", "required": ["from", "to"], "additionalProperties": False,
            "properties": {key: props[key] for key in SKIP_KEYS}}


# -- layers --------------------------------------------------------------------------------
def layer_schema() -> dict[str, Any]:
    """Meta keys, `type` (see schema_types), and one if-then per type for its arguments, titled by the
    type: the editor labels the snippet of a type's required arguments "conv2d layer"."""
    from . import registry
    from .schema_types import known_type, unknown_type
    from .spec import LAYER_META_KEYS

    branches = []
    for name in registry.names():
        layer_type = registry.get(name)
        branches.append({"if": known_type([name, *layer_type.aliases]),
                         "then": {"title": f"{name} layer", **layer_arguments(layer_type)}})
    branches.append(unknown_type())  # `${...}`, known only after substitution, or a typo flagged on `type:`
    meta = {"id": ID,
            "type": {"$ref": "#/$defs/type"},
            "input": {"anyOf": [{"$ref": "#/$defs/ref"}, {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/ref"}}]},
            "scale": {"type": "boolean", "default": True,
                      "description": "false: exempt from width_multiplier"},
            "when": WHEN, "tie": TIE}
    return {"title": "layer", "type": "object", "required": ["type"],
            "properties": {key: meta[key] for key in LAYER_META_KEYS}, "allOf": branches, "unevaluatedProperties": False}


def _summaries() -> dict[str, str]:
    """Each registered type's one-line description."""
    from . import registry

    return {name: layer_summary(registry.get(name)) for name in registry.names()}


def layer_arguments(layer_type: Any) -> dict[str, Any]:
    """The `then` of one type: its arguments, typed from the constructor; the required ones."""
    from .merges import MERGES
    from .registry import INFERRED

    if layer_type.name in MERGES:  # a merge layer: `input:` and the merge's own keys
        return {"properties": MERGES.get(layer_type.name).schema()}
    hints = _hints(layer_type.factory)
    props, required = {}, []
    for name, param in layer_type.parameters.items():
        default = layer_type.defaults.get(name, param.default)
        prop = argument_schema(hints.get(name, param.annotation), default)
        if name in INFERRED:
            prop["description"] = "inferred from the input shape"
        elif default is param.empty:
            required.append(name)
        elif _jsonable(default):
            prop["default"] = list(default) if isinstance(default, tuple) else default
        props[name] = prop
    return {"properties": props, **({"required": required} if required else {})}


def argument_schema(annotation: Any, default: Any = inspect.Parameter.empty) -> dict[str, Any]:
    """A constructor argument's schema from its type hint; `${...}` is always allowed."""
    typed = _from_hint(annotation)
    if typed is None and annotation is inspect.Parameter.empty:
        typed = _from_default(default)
    if typed is None:
        return {}
    if default is None:
        typed.append({"type": "null"})
    return {"anyOf": [*typed, EXPR]}


_SIMPLE = {int: "integer", float: "number", bool: "boolean", str: "string", type(None): "null"}


def _from_hint(hint: Any) -> list[dict[str, Any]] | None:
    """JSON types for a hint, or None where it is unknown (anything goes)."""
    if hint in _SIMPLE:
        return [{"type": _SIMPLE[hint]}]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [_from_hint(arg) for arg in args]
        return None if any(m is None for m in members) else [s for m in members for s in m]
    if origin is typing.Literal:
        return [{"enum": list(args)}]
    if origin in (list, tuple):
        inner = [_from_hint(arg) for arg in args if arg is not Ellipsis]
        if not inner or any(i is None for i in inner):
            return [{"type": "array"}]
        items = [s for i in inner for s in i] + [EXPR]
        array: dict[str, Any] = {"type": "array", "items": {"anyOf": items}}
        if origin is tuple and Ellipsis not in args:
            array.update(minItems=len(args), maxItems=len(args))
        return [array]
    return None


def _from_default(default: Any) -> list[dict[str, Any]] | None:
    if isinstance(default, bool):
        return [{"type": "boolean"}]
    if isinstance(default, (int, float)):
        return [{"type": "number"}]
    if isinstance(default, str):
        return [{"type": "string"}]
    return None


def _hints(factory: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # a hint naming what its module cannot resolve: fall back to the raw annotations
        return {}


def _jsonable(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def layer_summary(layer_type: Any) -> str:
    """A layer type's one-line description; the class docstring where the registry kept a cut line."""
    doc = layer_type.doc or ""
    full = inspect.getdoc(layer_type.factory) or "" if isinstance(layer_type.factory, type) else ""
    return summary(full if doc and full.strip().startswith(doc.strip()) else doc)


def summary(doc: str) -> str:
    """A docstring's first sentence, on one line (torch wraps its first sentences)."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    sentence, dot, _ = paragraph.partition(". ")
    return sentence + dot.strip()


# -- data and train ------------------------------------------------------------------------
def data_schema() -> dict[str, Any]:
    """`data:`, from the pydantic declaration that ``data.options.parse_options`` checks with."""
    from .data.options import DataOptions
    from .typed import json_schema

    return json_schema(DataOptions)


def train_schema() -> dict[str, Any]:
    """`train:`, from the pydantic declaration that ``settings.parse_settings`` checks with."""
    from .settings import TrainSettings
    from .typed import json_schema

    return json_schema(TrainSettings)


def schema_text(config: Any = None) -> str:
    """The schema as the JSON file editors read (stable key order, one trailing newline)."""
    import json

    return json.dumps(config_schema(config), indent=1) + "\n"
