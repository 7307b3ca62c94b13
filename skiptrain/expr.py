"""``${...}`` substitution: block arguments and integer arithmetic, never ``eval``.

The expression is parsed by ``ast.parse`` (which runs nothing) and walked here; only
integers, argument names, ``+ - * //``, unary minus and parentheses are accepted.
"""
from __future__ import annotations

import ast
import operator
import re
from typing import Any, Mapping

from .errors import ConfigError, Location, choices_hint

_PATTERN = re.compile(r"\$\{([^{}]*)\}")
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}
_LIMIT = 2**62  # keeps a hostile expression from building a huge integer


def evaluate(expression: str, env: Mapping[str, Any], loc: Location | None) -> Any:
    """Value of one ``${expression}`` given the block arguments in ``env``."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # ValueError: a NUL; the others: too deep
        raise ConfigError(f"cannot parse `${{{expression}}}`", loc,
                          "only integers, argument names, + - * // and parentheses are allowed") from None
    try:
        return _eval(tree.body, expression, env, loc)
    except RecursionError:
        raise ConfigError(f"`${{{expression}}}` is nested too deeply", loc,
                          "write a short expression such as `${channels * 4}`") from None


def _eval(node: ast.AST, text: str, env: Mapping[str, Any], loc: Location | None) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise ConfigError(f"`${{{text}}}` uses `{node.id}`, which is not an argument here", loc,
                              choices_hint(node.id, env, "arguments") if env else "this block declares no `args:`")
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _integer(_eval(node.operand, text, env, loc), text, loc)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _integer(_eval(node.left, text, env, loc), text, loc)
        right = _integer(_eval(node.right, text, env, loc), text, loc)
        if isinstance(node.op, ast.FloorDiv) and right == 0:
            raise ConfigError(f"`${{{text}}}` divides by zero", loc)
        result = _BINARY[type(node.op)](left, right)
        if abs(result) > _LIMIT:
            raise ConfigError(f"`${{{text}}}` is too large (more than 2**62)", loc)
        return result
    raise ConfigError(f"`${{{text}}}` is not allowed: only integer arithmetic with + - * // "
                      "and parentheses on argument names", loc,
                      "write a plain integer expression such as `${channels * 4}`")


def _integer(value: Any, text: str, loc: Location | None) -> int:
    if type(value) is not int:
        raise ConfigError(f"`${{{text}}}` does arithmetic on {value!r}, which is not an integer", loc)
    return value


def substitute(value: Any, env: Mapping[str, Any], loc: Location | None) -> Any:
    """Replace ``${...}`` in strings (recursively in lists and dicts).

    A string that is exactly one ``${...}`` takes the value's own type (``"${channels}"``
    is an int); ``${...}`` inside longer text is formatted into it.
    """
    if isinstance(value, str):
        match = _PATTERN.fullmatch(value.strip())
        if match:
            return evaluate(match.group(1), env, loc)
        if "${" in value:
            return _PATTERN.sub(lambda m: str(evaluate(m.group(1), env, loc)), value)
        return value
    if isinstance(value, list):
        return [substitute(v, env, loc) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, env, loc) for k, v in value.items()}
    return value
