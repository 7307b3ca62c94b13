"""`skiptrain schema CONFIG`: the schema of the language, plus what one config's own blocks take.

A block's arguments are declared in the config, so only a schema generated for that config can
check them: an instance's `args:` may name only its block's arguments (`{chanels: 64}` is
underlined on its key), `block:` only a defined block, and inside a block every `${...}` may use
only that block's arguments, the copy variables and the expression language's own names
(`${chanels}` is underlined where it is written). The config is read leniently (a config being
written is half-wrong): what cannot be read as blocks is left to the generic schema.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS = ("and", "or", "not", "if", "else", "True", "False")


def read_blocks(path: str | Path) -> dict[str, dict[str, Any]]:
    """Block name -> its declared `args:` (name -> default), from a config or model file
    (`model: other.yaml` followed, as the loader does)."""
    from .config import read_yaml

    path = Path(path)
    root = read_yaml(path)
    model = root.get("model", root) if isinstance(root, dict) else None
    if isinstance(model, str):
        model_path = path.parent / model
        model = read_yaml(model_path) if model_path.is_file() else None
        if isinstance(model, dict) and "model" in model:
            model = model["model"]
    blocks = model.get("blocks") if isinstance(model, dict) else None
    if not isinstance(blocks, dict):
        return {}
    return {str(name): dict(block["args"]) if isinstance(block, dict) and isinstance(block.get("args"), dict) else {}
            for name, block in blocks.items()}


def expression_names() -> list[str]:
    """Names every `${...}` in a block may use besides the block's arguments."""
    from .conditions import COPY_VARIABLES
    from .expr import BOOLEANS, FUNCTIONS, SHAPE_FUNCTIONS, SHAPE_NAMES

    return [*COPY_VARIABLES, *BOOLEANS, *SHAPE_NAMES, *SHAPE_FUNCTIONS, *FUNCTIONS, *KEYWORDS]


def scoped_text(names: list[str]) -> str:
    """A pattern for a string whose every `${...}` uses only these names (besides numbers, operators,
    quoted text). Each token has one reading, so a non-match fails fast (no backtracking blow-up)."""
    word = "(?:" + "|".join(sorted(set(names), key=lambda n: (-len(n), n))) + ")(?![A-Za-z0-9_])"
    number = r"[0-9.]+(?:[eE][-+]?[0-9]+)?(?![0-9.])"
    from .expr import SHAPE_FUNCTIONS

    reads = "(?:" + "|".join(SHAPE_FUNCTIONS) + r")\(\s*[A-Za-z0-9_.]+\s*\)"  # `channels(conv1)`: an id, not a name
    token = r"""[^}A-Za-z0-9_.'"]|'[^']*'|"[^"]*"|""" + number + "|" + reads + "|" + word
    return r"^(?:[^$]|\$(?!\{)|\$\{(?:" + token + r")*\})*$"


def scope_schema(name: str, args: list[str], ref: str) -> dict[str, Any]:
    """Every string inside block `name` (at any depth): its `${...}` read only what is in scope there."""
    listed = ", ".join(f"`{a}`" for a in args) if args else "none"
    return {"pattern": scoped_text([*args, *expression_names()]),
            "patternErrorMessage": f"`${{...}}` uses a name that block `{name}` does not have (its arguments: "
                                   f"{listed}; also repeat_index, repeat_count, block_index, block_count, in_channels)",
            "additionalProperties": {"$ref": ref}, "items": {"$ref": ref}}


def arguments_schema(name: str, declared: dict[str, Any]) -> dict[str, Any]:
    """An instance's `args:` (or `first_args:`) for block `name`: only its declared arguments."""
    listed = ", ".join(f"`{a}`" for a in declared) or "none (declare them in `args:`)"
    props = {arg: {"description": f"argument of block `{name}`; "
                                  + ("required" if default is None else f"default {default!r}")}
             for arg, default in declared.items()}
    # the message is the editor's for any error of the inner schema: only unknown names can fail there
    return {"type": "object", "title": f"arguments of block {name}",
            "allOf": [{"properties": props, "additionalProperties": False,
                       "errorMessage": f"not an argument of block `{name}`: it takes {listed}"}]}


def specialise(schema: dict[str, Any], blocks: dict[str, dict[str, Any]]) -> None:
    """Add the checks of these blocks to a generic schema, in place."""
    if not blocks:
        return
    from .schema import EXPR

    defs = schema["$defs"]
    names = list(blocks)
    # the description on the enum itself: on the anyOf, the editor's hover joins both alternatives' texts
    defs["block_name"] = {"anyOf": [{"enum": names, "description": "a block defined in `blocks:`"}, EXPR]}
    defs["instance"]["allOf"] = [
        {"if": {"properties": {"block": {"const": name}}, "required": ["block"]},
         "then": {"properties": {"args": arguments_schema(name, declared), "first_args": arguments_schema(name, declared)}}}
        for name, declared in blocks.items()]
    per_block = {}
    for index, (name, declared) in enumerate(blocks.items()):
        ref = f"#/$defs/scope_{index}"
        args = [arg for arg in declared if IDENTIFIER.fullmatch(str(arg))]
        defs[f"scope_{index}"] = scope_schema(name, args, ref)
        per_block[name] = {"allOf": [{"$ref": "#/$defs/block"},
                                     {"properties": {key: {"$ref": ref} for key in ("layers", "skips", "output", "projection")}}]}
    defs["model"]["properties"]["blocks"] = {**defs["model"]["properties"]["blocks"], "properties": per_block}
