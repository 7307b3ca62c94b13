"""A layer's `type:` in the schema, shaped for what yaml-language-server does with it.

The server shows the first description it meets on hover, lists every value of an `enum` it
meets, and for a value that fits no alternative of an `anyOf` joins every `const` and `enum` into
one message (4,000 characters for 300 type names). So each type is a `const` carrying its own
description (hover shows that type's alone), the branch conditions test names by `pattern` (which
hover never lists), and the first alternative is a chain that passes known names and `${...}` and
fails an unknown name with ONE short message: the name it is one edit away from, found by a
pattern of that name's one-edit misspellings, or a pointer to the list.
"""
from __future__ import annotations

import re
from typing import Any

UNKNOWN = "unknown layer type (docs/layers.md lists them all; `${...}` is substituted from block arguments)"


def failing(message: str) -> dict[str, Any]:
    """A branch that always fails with `message`: the editor shows `patternErrorMessage`; other validators
    (jsonschema, check-jsonschema in CI) print the pattern, so it reads as the message too."""
    escaped = re.sub(r"([\\^$.*+?()\[\]{}|/])", r"\\\1", message)  # escapes valid in Python and JS `u` regexes
    return {"pattern": "(?!)" + escaped, "patternErrorMessage": message}


def type_names() -> tuple[list[str], dict[str, str]]:
    """Registered names, then aliases (PyTorch's class names and other spellings) -> their name."""
    from . import registry

    names = list(registry.names())
    aliases = {alias: name for name in names for alias in registry.get(name).aliases}
    return names, aliases


def exact(names: list[str]) -> str:
    """A pattern matching exactly these names (they are identifiers: nothing to escape)."""
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", n) for n in names), "a type name needs escaping"
    return "^(?:" + "|".join(names) + ")$"


def one_edit(name: str) -> str:
    """A pattern matching every string one substitution, deletion, insertion or swap away from `name`
    (factored along the name: the common prefix once, not once per alternative)."""
    def rest(i: int) -> str:
        if i == len(name):
            return "."  # an insertion at the end
        alternatives = [".?" + name[i + 1:], "." + name[i:]]  # substitution or deletion here; an insertion before
        if i + 1 < len(name):
            alternatives.append(name[i + 1] + name[i] + name[i + 2:])  # a swap
        alternatives.append(name[i] + "(?:" + rest(i + 1) + ")")  # this letter right: the edit comes later
        return "|".join(alternatives)

    return "^(?:" + rest(0) + ")$"


def type_schema(summaries: dict[str, str], expr: dict[str, Any]) -> dict[str, Any]:
    """`type:`: a did-you-mean chain first (see the module docstring), `${...}`, then one const per name."""
    names, aliases = type_names()
    everything = names + list(aliases)
    chain: dict[str, Any] = failing(UNKNOWN)
    # first match wins: a chain over first letters, each a chain of names (not one chain 300 deep); a typo
    # in the first letter gets the pointer to the list instead of a guess
    initials = sorted({name[0].lower() for name in everything}, reverse=True)
    for initial in initials:
        inner: dict[str, Any] = failing(UNKNOWN)
        for name in reversed([n for n in everything if n[0].lower() == initial]):
            inner = {"if": {"pattern": one_edit(name)},
                     "then": failing(f"unknown layer type: did you mean `{name}`?"),
                     "else": inner}
        chain = {"if": {"pattern": f"^[{initial}{initial.upper()}]"}, "then": inner, "else": chain}
    guard = {"if": {"pattern": exact(everything) + r"|\$\{"}, "then": True, "else": chain}
    consts = [{"const": name, "description": f"`{name}`: {summaries[name]}"} for name in names]
    consts += [{"const": alias, "description": f"`{alias}` (`{name}`): {summaries[name]}"}
               for alias, name in aliases.items()]
    return {"title": "layer type", "anyOf": [guard, expr, *consts]}


def known_type(names: list[str]) -> dict[str, Any]:
    """The condition of one type's branch: `type:` is one of these names (a pattern: hover lists no enum)."""
    return {"properties": {"type": {"pattern": exact(names)}}, "required": ["type"]}


def unknown_type() -> dict[str, Any]:
    """A `type:` no branch knows (`${...}`, or a typo already flagged once on its own line): any arguments."""
    names, aliases = type_names()
    return {"if": {"properties": {"type": {"not": {"pattern": exact(names + list(aliases))}}}, "required": ["type"]},
            "then": {"additionalProperties": True}}
