"""``${...}`` substitution: arithmetic, comparisons and conditions on block arguments, never ``eval``.

The expression is parsed by ``ast.parse`` (which runs nothing) and walked here. Accepted:
int, float, string and boolean literals (``true``/``false`` as in YAML, or ``True``/``False``),
argument names, ``+ - * / // %``, unary ``- +``, comparisons ``== != < <= > >=`` (chained),
``and``/``or``/``not`` on booleans, ``a if cond else b``, an integer index into a shape
(``in_shape[1]``), and the pure functions in ``FUNCTIONS``. Nothing else: no attributes, no
other calls, no comprehensions, no ``**``.

An expression may read a shape: ``in_shape``/``in_channels``/``in_features`` (the incoming
shape of the layer, or of the block instance, whose argument it is) and ``shape(id)`` /
``channels(id)`` (an earlier node in scope). Shapes are known only in the shape pass, so
such an expression stays a ``Deferred`` value in the graph, its references already bound to
node ids, and ``shapes.infer`` resolves it with the node's input shape.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from .errors import ConfigError, Location, choices_hint

_PATTERN = re.compile(r"\$\{([^{}]*)\}")
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Div: operator.truediv}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_LIMIT = 2**62  # keeps a hostile expression from building a huge integer
BOOLEANS = {"true": True, "false": False}  # YAML's spelling; Python's True/False are literals too
SHAPE_NAMES = {"in_shape": lambda s: s, "in_channels": lambda s: s[0], "in_features": lambda s: s[-1]}
SHAPE_FUNCTIONS = {"shape": lambda s: s, "channels": lambda s: s[0]}
_ALLOWED = ("integers, decimals, true/false, 'text', argument names, + - * / // %, comparisons, "
            "and/or/not, `a if cond else b`, shape[i] and the functions " )


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: the nearest multiple of ``divisor``, at least ``min_value``
    (default ``divisor``), never more than 10% below ``value`` (MobileNet and EfficientNet widths)."""
    if type(divisor) is not int or divisor < 1:
        raise ValueError(f"make_divisible's divisor must be a positive integer, not {divisor!r}")
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def _round(value: float) -> int:
    return round(value)


# name -> (function, least and most arguments); all pure, on numbers (min/max also on one shape)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "min": (min, 1, 16), "max": (max, 1, 16), "abs": (abs, 1, 1), "round": (_round, 1, 1),
    "floor": (math.floor, 1, 1), "ceil": (math.ceil, 1, 1), "int": (int, 1, 1),
    "make_divisible": (make_divisible, 1, 3),
}
_ALLOWED += ", ".join(f"{name}()" for name in (*FUNCTIONS, *SHAPE_FUNCTIONS))


_REFUSED = {"Attribute": "attribute access", "List": "a list", "Tuple": "a tuple", "Dict": "a mapping",
            "Set": "a set", "Lambda": "a lambda", "ListComp": "a comprehension", "SetComp": "a comprehension",
            "DictComp": "a comprehension", "GeneratorExp": "a comprehension", "JoinedStr": "an f-string",
            "NamedExpr": "`:=`", "Starred": "`*`", "Await": "`await`", "Yield": "`yield`"}


class Shapes(Protocol):
    """What the expander offers an expression that reads shapes: the node whose shape ``in_*``
    names read (None where there is none) and a resolver of ids in scope to node ids."""

    own: str | None

    def resolve(self, ref: Any, loc: Location | None) -> str: ...


@dataclass(eq=False)
class Deferred:
    """An expression that reads shapes: resolved by ``resolve`` once those shapes are known."""

    text: str
    env: Mapping[str, Any]
    loc: Location | None
    bound: dict[str, str] = field(default_factory=dict)  # "" -> the node in_* read; a ref -> its node id

    def __repr__(self) -> str:
        return f"${{{self.text}}}"

    def resolve(self, shape_of: Callable[[str], tuple[int, ...]]) -> Any:
        return _Walker(self.text, self.env, self.loc, self, shape_of).run(_parse(self.text, self.loc))


class _NeedsShape(Exception):
    """Raised while expanding when an expression reads a shape that is not known yet."""


def _parse(expression: str, loc: Location | None) -> ast.AST:
    try:
        return ast.parse(expression.strip(), mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # ValueError: a NUL; the others: too deep
        raise ConfigError(f"cannot parse `${{{expression}}}`", loc, f"allowed: {_ALLOWED}") from None


def evaluate(expression: str, env: Mapping[str, Any], loc: Location | None, shapes: Shapes | None = None) -> Any:
    """Value of one ``${expression}`` given the block arguments in ``env``; a ``Deferred`` when it
    reads a shape and ``shapes`` says where (else reading a shape is an error)."""
    tree = _parse(expression, loc)
    try:
        return _Walker(expression, env, loc).run(tree)
    except _NeedsShape as need:
        if shapes is None:
            raise ConfigError(f"`${{{expression}}}` reads a shape ({need}), which is known only in a layer's "
                              "or a block instance's arguments and a skip's `when:`", loc,
                              "write this value with block arguments, or move the shape-dependent "
                              "value into a layer argument such as `out_channels`") from None
        return Deferred(expression.strip(), dict(env), loc, _bind(tree, expression, env, loc, shapes))


def _bind(tree: ast.AST, text: str, env: Mapping[str, Any], loc: Location | None, shapes: Shapes) -> dict[str, str]:
    """Node ids of every shape that the expression may read, resolved now in the scope it is written in."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in SHAPE_NAMES and node.id not in env:
            if shapes.own is None:
                raise ConfigError(f"`${{{text}}}` reads `{node.id}`, but a skip has no single incoming shape", loc,
                                  "name the node: `shape(input)`, `channels(conv1)`")
            bound[""] = shapes.own
        elif _shape_call(node, env):
            ref = _ref_of(node, text, loc)
            bound[ref] = shapes.resolve(ref, loc)
    return bound


def _shape_call(node: ast.AST, env: Mapping[str, Any]) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SHAPE_FUNCTIONS
            and node.func.id not in env)


def _ref_of(node: ast.Call, text: str, loc: Location | None) -> str:
    """The id that ``shape(conv1)``, ``shape('stage.0.conv')`` or ``shape(3)`` names."""
    arg = node.args[0] if len(node.args) == 1 and not node.keywords else None
    if isinstance(arg, ast.Name):
        return arg.id
    if isinstance(arg, ast.Constant) and type(arg.value) in (str, int):
        return str(arg.value)
    raise ConfigError(f"`${{{text}}}`: `{node.func.id}()` takes one id, such as `{node.func.id}(input)`", loc,  # type: ignore[attr-defined]
                      "a dotted path is written as text: `shape('stage1.0.conv')`")


class _Walker:
    def __init__(self, text: str, env: Mapping[str, Any], loc: Location | None,
                 deferred: Deferred | None = None, shape_of: Callable[[str], tuple[int, ...]] | None = None):
        self.text, self.env, self.loc = text, env, loc
        self.deferred, self.shape_of = deferred, shape_of

    def run(self, tree: ast.AST) -> Any:
        try:
            return self.eval(tree)
        except RecursionError:
            raise self.error("is nested too deeply", "write a short expression such as `${channels * 4}`") from None

    def error(self, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"`${{{self.text}}}` {message}", self.loc, hint)

    def shape(self, key: str, what: str) -> tuple[int, ...]:
        if self.shape_of is None or self.deferred is None:
            raise _NeedsShape(what)
        return tuple(self.shape_of(self.deferred.bound[key]))

    def eval(self, node: ast.AST) -> Any:
        method = getattr(self, "eval_" + type(node).__name__, None)
        if method is None:
            what = _REFUSED.get(type(node).__name__, f"`{type(node).__name__}`")
            raise self.error(f"is not allowed: {what} is not part of the language", f"allowed: {_ALLOWED}")
        return method(node)

    def eval_Constant(self, node: ast.Constant) -> Any:
        if type(node.value) in (int, float, bool, str):
            return self.checked(node.value)
        raise self.error(f"is not allowed: `{node.value!r}` is not a number, text or true/false", f"allowed: {_ALLOWED}")

    def eval_Name(self, node: ast.Name) -> Any:
        if node.id in self.env:
            value = self.env[node.id]
            if isinstance(value, Deferred):  # an argument computed from a shape by the enclosing scope
                if self.shape_of is None:
                    raise _NeedsShape(f"argument `{node.id}` = {value!r}")
                return value.resolve(self.shape_of)
            return value
        if node.id in BOOLEANS:
            return BOOLEANS[node.id]
        if node.id in SHAPE_NAMES:
            return SHAPE_NAMES[node.id](self.shape("", f"`{node.id}`"))
        raise self.error(f"uses `{node.id}`, which is not an argument here",
                         choices_hint(node.id, self.env, "arguments") if self.env else "this block declares no `args:`")

    def eval_UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.eval(node.operand)
        if isinstance(node.op, ast.Not):
            return not self.boolean(value, "not")
        if isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.number(value)
            return -value if isinstance(node.op, ast.USub) else value
        raise self.error("is not allowed", f"allowed: {_ALLOWED}")

    def eval_BinOp(self, node: ast.BinOp) -> Any:
        if type(node.op) not in _ARITHMETIC:
            raise self.error("is not allowed: `**`, bit operations and `@` are not part of the language",
                             f"allowed: {_ALLOWED}")
        left, right = self.number(self.eval(node.left)), self.number(self.eval(node.right))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise self.error("divides by zero")
        try:
            return self.checked(_ARITHMETIC[type(node.op)](left, right))
        except OverflowError:
            raise self.error("is too large") from None

    def eval_Compare(self, node: ast.Compare) -> bool:
        left = self.eval(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            if type(op) not in _COMPARE:
                raise self.error("is not allowed: `in` and `is` are not part of the language",
                                 "compare with == != < <= > >=")
            right = self.eval(right_node)
            if isinstance(op, _ORDERING) and not (self.is_number(left) and self.is_number(right)
                                                  or type(left) is type(right) is str):
                raise self.error(f"orders {left!r} and {right!r}, which are not two numbers or two texts")
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True

    def eval_BoolOp(self, node: ast.BoolOp) -> bool:
        word = "and" if isinstance(node.op, ast.And) else "or"
        for value_node in node.values:  # short-circuit, as Python does
            value = self.boolean(self.eval(value_node), word)
            if value is (word == "or"):
                return value
        return word == "and"

    def eval_IfExp(self, node: ast.IfExp) -> Any:
        return self.eval(node.body if self.boolean(self.eval(node.test), "if") else node.orelse)

    def eval_Subscript(self, node: ast.Subscript) -> Any:
        value, index = self.eval(node.value), node.slice
        if isinstance(index, ast.Slice) or not isinstance(value, tuple):
            raise self.error("is not allowed: only one axis of a shape can be indexed, as in `in_shape[1]`")
        i = self.eval(index)
        if type(i) is not int or not -len(value) <= i < len(value):
            raise self.error(f"indexes the shape {list(value)} with {i!r}",
                             f"an axis from 0 to {len(value) - 1} (or negative, from the end)")
        return value[i]

    def eval_Call(self, node: ast.Call) -> Any:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name in SHAPE_FUNCTIONS and name not in self.env:
            ref = _ref_of(node, self.text, self.loc)
            return SHAPE_FUNCTIONS[name](self.shape(ref, f"`{name}({ref})`"))
        if name not in FUNCTIONS or node.keywords:
            raise self.error(f"calls {f'`{name}`' if name else 'something'}, which is not allowed" +
                             (" with keywords" if name in FUNCTIONS else ""),
                             f"the functions are {', '.join(f'{n}()' for n in (*FUNCTIONS, *SHAPE_FUNCTIONS))}, "
                             "with positional arguments")
        function, least, most = FUNCTIONS[name]
        if not least <= len(node.args) <= most:
            raise self.error(f"gives `{name}` {len(node.args)} arguments",
                             f"`{name}` takes {least}" + (f" to {most}" if most > least else ""))
        args = [self.eval(a) for a in node.args]
        if name in ("min", "max") and len(args) == 1:
            if not isinstance(args[0], (tuple, list)) or not args[0]:
                raise self.error(f"gives `{name}` one number", f"`{name}` takes two or more numbers, or a shape "
                                                               "such as `in_shape`")
            args = list(args[0])  # max(in_shape)
            if len(args) == 1:  # the shape of a rank-1 sample
                return self.checked(self.number(args[0]))
        try:
            return self.checked(function(*(self.number(a) for a in args)))
        except (OverflowError, ValueError, ZeroDivisionError) as exc:  # int(inf), float overflow, a bad divisor
            raise self.error(f"cannot compute `{name}` of {args}", str(exc) or None) from None

    def checked(self, value: Any) -> Any:
        if type(value) is int and abs(value) > _LIMIT:
            raise self.error("is too large (more than 2**62)")
        if type(value) is float and not math.isfinite(value):
            raise self.error(f"gives {value}, which is not a finite number")
        return value

    @staticmethod
    def is_number(value: Any) -> bool:
        return type(value) in (int, float)

    def number(self, value: Any) -> int | float:
        if not self.is_number(value):
            raise self.error(f"does arithmetic on {value!r}, which is not a number")
        return value

    def boolean(self, value: Any, word: str) -> bool:
        if type(value) is not bool:
            raise self.error(f"uses {value!r} with `{word}`, which takes true or false",
                             "compare first: `stride == 1`, `expand_ratio != 1`")
        return value


def substitute(value: Any, env: Mapping[str, Any], loc: Location | None, shapes: Shapes | None = None) -> Any:
    """Replace ``${...}`` in strings (recursively in lists and dicts).

    A string that is exactly one ``${...}`` takes the value's own type (``"${channels}"``
    is an int); ``${...}`` inside longer text is formatted into it.
    """
    if isinstance(value, str):
        match = _PATTERN.fullmatch(value.strip())
        if match:
            return evaluate(match.group(1), env, loc, shapes)
        if "${" in value:
            return _PATTERN.sub(lambda m: _text(m.group(1), env, loc), value)
        return value
    if isinstance(value, list):
        return [substitute(v, env, loc, shapes) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, env, loc, shapes) for k, v in value.items()}
    return value


def _text(expression: str, env: Mapping[str, Any], loc: Location | None) -> str:
    value = evaluate(expression, env, loc)
    return ("true" if value else "false") if type(value) is bool else str(value)


def resolve(value: Any, shape_of: Callable[[str], tuple[int, ...]]) -> Any:
    """``value`` with every ``Deferred`` in it (in lists and dicts too) resolved by ``shape_of``."""
    if isinstance(value, Deferred):
        return value.resolve(shape_of)
    if isinstance(value, list):
        return [resolve(v, shape_of) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, shape_of) for k, v in value.items()}
    return value


def deferred_in(value: Any) -> bool:
    """Whether ``value`` holds a ``Deferred`` (in lists and dicts too)."""
    if isinstance(value, list):
        return any(deferred_in(v) for v in value)
    if isinstance(value, dict):
        return any(deferred_in(v) for v in value.values())
    return isinstance(value, Deferred)
