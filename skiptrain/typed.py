"""Sections checked by their pydantic model: one declaration gives the check, the error and the schema.

``check`` validates a config mapping against a model and turns the first problem into
skiptrain's typed error, located at the key or value that caused it (``file:line:col``),
worded from the model's JSON Schema (what the key takes, its did-you-mean) and with the
key's description as the hint. ``json_schema`` is that schema, self-contained, as
``skiptrain schema`` prints it.
"""
from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .config import LocatedDict, where
from .errors import SkiptrainError, choices_hint, did_you_mean

M = TypeVar("M", bound=BaseModel)


def check(model: type[M], mapping: dict, error: type[SkiptrainError], section: str, qualified: bool,
          context: dict | None = None) -> M:
    """``model`` validated from ``mapping`` (the ``section:`` of a config), or ``error`` for its first problem.

    ``qualified``: name keys ``train.epochs`` (rather than ``epochs``, then ``in `data:```).
    """
    try:
        return model.model_validate(mapping, context=context)
    except ValidationError as exc:
        raise convert(exc, model, mapping, error, section, qualified) from None


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema with its ``$defs`` inlined and pydantic's generated titles dropped."""
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {}
        if "$ref" in node:
            out.update(inline(defs[node["$ref"].rsplit("/", 1)[-1]]))
        for key, value in node.items():
            if key == "$ref" or key == "title":
                continue
            out[key] = {name: inline(sub) for name, sub in value.items()} if key == "properties" else inline(value)
        return out
    return inline(raw)


# -- the first problem, as a located message -------------------------------------------------
def convert(exc: ValidationError, model: type[BaseModel], mapping: Any, error: type[SkiptrainError],
            section: str, qualified: bool) -> SkiptrainError:
    problems = exc.errors(include_url=False)
    walks = [_walk(mapping, problem["loc"]) for problem in problems]
    # the most specific: deepest in the input, then from a union's member that took the value's kind, then the first
    deepest = max(range(len(problems)), key=lambda i: (len(walks[i][0]), not _kind_error(problems[i]["type"]), -i))
    problem, (path, parents, value) = problems[deepest], walks[deepest]
    schema = json_schema(model)

    def name(keys: list) -> str:
        text = "".join(f"[{k}]" if isinstance(parent, list) else f".{k}" for k, parent in zip(keys, parents))
        return f"{section}{text}" if qualified or not text else text[1:] if text[0] == "." else text

    kind = problem["type"]
    if kind in ("extra_forbidden", "invalid_key") and path:
        key, parent = path[-1], parents[-1]
        keys = _keys(_at(schema, path[:-1]))
        shown = name(path) if qualified else f"{name(path)}` in `{section}:"
        loc = parent.where(key, of_key=True) if isinstance(parent, LocatedDict) else where(parent, key)
        owner = name(path[:-1]) if len(path) > 1 else section
        return error(f"unknown key `{shown}`", loc, choices_hint(str(key), keys, f"{owner} keys"))
    if kind == "missing":
        key = problem["loc"][-1]
        owner = f"{name(path)}" if path else f"{section}:"
        return error(f"`{owner}` has no `{key}:`", where(value), _at(schema, [*path, key]).get("description"))
    loc = where(parents[-1], path[-1]) if path else where(mapping)
    if kind in ("value_error", "assertion_error"):  # a validator's own words: "message\nhint: hint"
        message, _, hint = str(problem["ctx"]["error"]).partition("\nhint: ")
        return error(message, loc, hint or None)
    field = _at(schema, path)
    described = next((d for d in (_at(schema, path[:n]).get("description") for n in range(len(path), 0, -1)) if d),
                     None)  # a list item's, else its list's
    return error(f"`{name(path)}` must be {describe(field)}, not {_shown(value)}", loc, _hint(field, value, described))


def _kind_error(kind: str) -> bool:
    """The value is of the wrong kind altogether (a mapping where a name goes), not wrong in its details."""
    return kind.endswith("_type") or kind in ("literal_error", "model_attributes_type")


def _walk(root: Any, loc: tuple) -> tuple[list, list, Any]:
    """Follow pydantic's ``loc`` through the input: the keys that exist there (skipping the tags
    pydantic adds for a union's members), the containers passed on the way, and the value reached."""
    path, parents, node = [], [], root
    for part in loc:
        if isinstance(node, dict) and _has(node, part):
            parents.append(node)
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and not isinstance(part, bool) and 0 <= part < len(node):
            parents.append(node)
            path.append(part)
            node = node[part]
    return path, parents, node


def _has(mapping: dict, key: Any) -> bool:
    try:
        return key in mapping
    except TypeError:
        return False


def _at(schema: dict[str, Any], path: list) -> dict[str, Any]:
    """The part of ``schema`` that describes the value at ``path`` (``{}`` where it says nothing)."""
    for part in path:
        branches = [schema, *schema.get("anyOf", [])]
        if isinstance(part, int) and not isinstance(part, bool):
            found = [b["items"] for b in branches if isinstance(b.get("items"), dict)]
        else:
            found = [b["properties"][part] for b in branches if part in b.get("properties", {})]
        if not found:
            return {}
        schema = found[0]
    return schema


def _keys(schema: dict[str, Any]) -> list[str]:
    """The keys a mapping described by ``schema`` may hold (in any of its forms)."""
    return [*schema.get("properties", {}), *(key for branch in schema.get("anyOf", []) for key in _keys(branch))]


def describe(schema: dict[str, Any]) -> str:
    """What a schema accepts, in words: ``an integer >= 1 or null``, ``auto, true or false``."""
    phrases = _phrases(schema)
    if not phrases:
        return "a valid value"
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _phrases(schema: dict[str, Any]) -> list[str]:
    if "anyOf" in schema:
        return [p for branch in schema["anyOf"] for p in _phrases(branch) if p]
    if "enum" in schema:
        return [_yaml(v) for v in schema["enum"]]
    if "const" in schema:
        return [_yaml(schema["const"])]
    kind = schema.get("type")
    if kind == "boolean":
        return ["true", "false"]
    if kind == "null":
        return ["null"]
    if kind in ("integer", "number"):
        return [("an integer" if kind == "integer" else "a number") + _bounds(schema)]
    if kind == "string":
        if "examples" in schema:
            return [str(e) for e in schema["examples"]]
        return ["a non-empty string" if schema.get("minLength") else "a string"]
    if kind == "array":
        count = schema.get("minItems")
        items = {"number": "numbers", "integer": "integers"}.get(schema.get("items", {}).get("type"), "values")
        size = f"{count} " if count is not None and count == schema.get("maxItems") else ""
        return [f"a list of {size}{items}"]
    if kind == "object":
        return ["a mapping"]
    return []


def _bounds(schema: dict[str, Any]) -> str:
    words = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    bounds = [f"{sign} {schema[key]:g}" for key, sign in words.items() if key in schema]
    return " " + " and ".join(bounds) if bounds else ""


def _yaml(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def _shown(value: Any) -> str:
    text = _yaml(value) if value is None or isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _choices(schema: dict[str, Any]) -> list[str]:
    found = [v for v in schema.get("enum", []) if isinstance(v, str)]
    found += [schema["const"]] if isinstance(schema.get("const"), str) else []
    return found + [c for branch in schema.get("anyOf", []) for c in _choices(branch)]


def _hint(schema: dict[str, Any], value: Any, description: str | None) -> str | None:
    """A did-you-mean; else, for a quoted ``"false"``, to drop the quotes; else the key's description."""
    if isinstance(value, str):
        close = did_you_mean(value, _choices(schema))
        if close:
            return close
        try:
            unquoted = yaml.safe_load(value)
        except yaml.YAMLError:
            unquoted = value
        if not isinstance(unquoted, str) and unquoted is not None:
            return f"write {value} without quotes: in quotes it is a string"
    return description
