"""Merges as a registry: how a skip's value joins the output of the node it goes into.

A merge owns its shape rule (the merged shape, and the shape a projection must give the
source), the Python it generates in the forward (``a + b``, ``torch.cat([a, b], dim=1)``),
whether that may run in place (``a += b``), and the keys it takes in a config. ``merge:`` on
a skip and the merge layers (``type: add`` with ``input: [a, b]``) both look names up here.
Nothing here imports torch: shapes are tuples, code is text.
"""
from __future__ import annotations

from typing import Any

from .registries import Registry

Shape = tuple[int, ...]


class Merge:
    """Elementwise: both sides have the target's shape, and so has the merged value."""

    name: str
    doc: str
    operator: str = ""
    in_place: str | None = None  # an augmented assignment (`+=`) that may write into a fresh value
    keys: tuple[str, ...] = ("axis",)  # what a merge layer takes besides `input:`

    def source_shape(self, source: Shape, target: Shape, axis: int) -> Shape:
        """The shape the skip's source must have (a projection produces it on a mismatch)."""
        return target

    def merged_shape(self, source: Shape, target: Shape, axis: int) -> Shape:
        """The shape after the merge; ``source`` already has ``source_shape``."""
        return target

    def expression(self, value: str, source: str, dim: int) -> str:
        """Python for the merged value; ``dim`` is the merge axis counting the batch axis."""
        return f"{value} {self.operator} {source}"

    def schema(self) -> dict[str, Any]:
        """The JSON-Schema properties of a merge layer's own keys (``${...}`` allowed)."""
        return {"axis": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/expr"}], "description": "the merge axis"}}


class Add(Merge):
    name, operator, in_place = "add", "+", "+="  # `+=` keeps no operand for backward: safe on a fresh value
    doc = "summed (a residual connection)"


class Mul(Merge):
    name, operator = "mul", "*"  # never in place: its backward reads both operands
    doc = "multiplied elementwise (gating)"


class Concat(Merge):
    """Joined along the merge axis: the other axes agree, the merge axis grows by the source's size."""

    name = "concat"
    doc = "concatenated on the merge axis (a U-Net decoder)"

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
