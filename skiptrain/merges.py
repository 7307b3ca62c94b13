"""Merges as a registry: how a skip's value joins the output of the node it goes into.

A merge owns its shape rule (the merged shape, and the shape a projection must give the
source), the Python it generates in the forward (``a + b``, ``torch.cat([a, b], dim=1)``),
whether that may run in place (``a += b``), whether it broadcasts (``add``/``mul``: a side of
size 1 on an axis needs no projection, as in torch), whether the order of its operands
matters (``concat``: a skip's ``order:``), and the keys it takes in a config. ``merge:`` on
a skip and the merge layers (``type: add`` with ``input: [a, b]``) both look names up here.
Nothing here imports torch: shapes are tuples, code is text.
"""
from __future__ import annotations

from typing import Any

from .errors import ConfigError, Location
from .registries import Registry

Shape = tuple[int, ...]
TO_FIRST, FROM_FIRST = "to_first", "from_first"  # a skip's `order:` (the target's value first, or the source)
ORDERS = (TO_FIRST, FROM_FIRST)


def broadcast_shape(a: Shape, b: Shape) -> Shape | None:
    """``torch.broadcast_shapes(a, b)`` for shapes of one rank (per axis: equal, or one is 1); None where it fails."""
    if len(a) != len(b) or any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        return None
    return tuple(max(x, y) for x, y in zip(a, b))


def blocking_axes(a: Shape, b: Shape) -> list[int]:
    """The axes (same rank) where the sizes differ and neither is 1: where broadcasting fails."""
    return [i for i, (x, y) in enumerate(zip(a, b)) if x != y and 1 not in (x, y)]


def broadcast_side(source: Shape, target: Shape, merged: Shape) -> str | None:
    """Which side a broadcast stretches: `from` (the skip's source), `to` (the target's value), `both`, or None."""
    sides = [side for side, shape in (("from", source), ("to", target)) if shape != merged]
    return None if not sides else sides[0] if len(sides) == 1 else "both"


class Merge:
    """Elementwise: both sides have the target's shape, and so has the merged value (with ``broadcasts``:
    shapes that broadcast, and the merged value has their broadcast shape)."""

    name: str
    doc: str
    operator: str = ""
    in_place: str | None = None  # an augmented assignment (`+=`) that may write into a fresh value
    broadcasts: bool = False  # elementwise by torch's broadcasting: a side of size 1 on an axis is stretched
    ordered: bool = False  # the operands' order changes the result: a skip may say `order:`
    keys: tuple[str, ...] = ("axis",)  # what a merge layer takes besides `input:`

    def source_shape(self, source: Shape, target: Shape, axis: int) -> Shape:
        """The shape the skip's source must have (a projection produces it on a mismatch).

        A broadcasting merge takes the source as it is wherever the two broadcast, and asks
        for the target's shape only where they do not (then a projection is planned)."""
        if self.broadcasts and broadcast_shape(source, target) is not None:
            return source
        return target

    def merged_shape(self, source: Shape, target: Shape, axis: int) -> Shape:
        """The shape after the merge; ``source`` already has ``source_shape``: torch's broadcast shape."""
        return broadcast_shape(source, target) or target if self.broadcasts else target

    def expression(self, value: str, source: str, dim: int) -> str:
        """Python for the merged value of two operands in the order they are joined (``value`` first
        unless a skip says ``order: from_first``); ``dim`` is the merge axis counting the batch axis."""
        return f"{value} {self.operator} {source}"

    def schema(self) -> dict[str, Any]:
        """The JSON-Schema properties of a merge layer's own keys (``${...}`` allowed)."""
        return {"axis": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/expr"}], "description": "the merge axis"}}


class Add(Merge):
    name, operator, in_place = "add", "+", "+="  # `+=` keeps no operand for backward: safe on a fresh value
    broadcasts = True
    doc = "summed (a residual connection); a side of size 1 on an axis is broadcast"


class Mul(Merge):
    name, operator = "mul", "*"  # never in place: its backward reads both operands
    broadcasts = True
    doc = "multiplied elementwise (gating; a [C, 1, 1] gate is broadcast over [C, H, W], as in squeeze-excite)"


class Concat(Merge):
    """Joined along the merge axis: the other axes agree, the merge axis grows by the source's size."""

    name, ordered = "concat", True
    doc = "concatenated on the merge axis in the order written (a U-Net decoder; DenseNet's cat([*previous, new]))"

    def source_shape(self, source: Shape, target: Shape, axis: int) -> Shape:
        return (*target[:axis], source[axis], *target[axis + 1:])

    def merged_shape(self, source: Shape, target: Shape, axis: int) -> Shape:
        return (*target[:axis], target[axis] + source[axis], *target[axis + 1:])

    def expression(self, value: str, source: str, dim: int) -> str:
        return f"torch.cat([{value}, {source}], dim={dim})"


MERGES: Registry[Merge] = Registry("merge")
for _merge in (Add(), Concat(), Mul()):
    MERGES.add(_merge.name, _merge)
DEFAULT = "add"  # the merge of a skip that names none


def skip_order(merge: str, order: object, loc: Location | None) -> str:
    """A skip's `order:`, checked: one of ORDERS, and only on a merge whose operands' order matters."""
    if order not in ORDERS:
        raise ConfigError(f"`order:` must be `{TO_FIRST}` or `{FROM_FIRST}`, not {order!r}", loc,
                          f"`{TO_FIRST}` (the default) gives cat([to, from]); `{FROM_FIRST}` gives cat([from, to]), "
                          "DenseNet's order (earlier features first)")
    if order != TO_FIRST and not MERGES.get(merge).ordered:
        ordered = [f"`{name}`" for name, m in MERGES.items() if m.ordered]
        raise ConfigError(f"`order:` does not change what `{merge}` merges: the result is the same either way", loc,
                          f"drop `order:`; it is for {', '.join(ordered) or 'no registered merge'}")
    return order
