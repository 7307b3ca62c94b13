"""A layered layout for network diagrams, in pure Python (no graphviz binary to install).

The diagram is a tree of units: leaves (one per graph node) and groups (a block instance, or a
fold of many identical instances). Each group lays its children out in rows by longest-path
layering over the edges between them, so the main chain -- the longest path -- is one straight
column (column 0) and side branches take columns to its left. Skip edges are drawn on the right
in lanes, packed so that skips whose spans overlap never share a lane.

Rows and columns do not depend on which groups are expanded; only the heights do. So the
geometry of any expand/collapse state is one cheap pass (``geometry``) that stacks rows, and the
HTML page's script repeats that pass in the browser (the same arithmetic, see diagram.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

NODE_W, NODE_H, BOX_H = 290, 38, 44  # a node, and a collapsed group's box
ROW_GAP, COL_GAP = 16, 40
HEAD, PAD = 24, 10  # an expanded group's frame: its title strip and inner padding
LANE_GAP = 22  # between skip lanes
X0, Y0 = 20, 20


@dataclass
class Unit:
    """A leaf (a graph node) or a group of units, with its place in its parent's rows and columns."""

    key: int
    leaf: bool
    children: list["Unit"] = field(default_factory=list)
    parent: "Unit | None" = None
    row: int = 0
    col: int = 0  # absolute column: 0 is the main chain's
    depth: int = 0  # nesting depth: frames inset by it
    first: int = 0  # the leaves' positions in execution order, first and last
    last: int = 0

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def arrange(root: Unit, edges: list[tuple[int, int]]) -> None:
    """Give every unit its row and column. ``edges`` are (source, target) leaf positions, data and skips."""
    _spans(root, 0)
    owner: dict[int, Unit] = {u.first: u for u in root.walk() if u.leaf}
    _arrange(root, edges, owner, 0)


def _spans(unit: Unit, depth: int) -> None:
    unit.depth = depth
    for child in unit.children:
        child.parent = unit
        _spans(child, depth + 1)
    if unit.children:
        unit.first = min(c.first for c in unit.children)
        unit.last = max(c.last for c in unit.children)


def _child_of(group: Unit, leaf: Unit) -> Unit | None:
    unit: Unit | None = leaf
    while unit is not None and unit.parent is not group:
        unit = unit.parent
    return unit


def _arrange(group: Unit, edges: list[tuple[int, int]], owner: dict[int, Unit], col: int) -> None:
    """Longest-path layers among ``group``'s children; the longest path is column ``col``."""
    kids = group.children
    index = {id(k): i for i, k in enumerate(kids)}
    preds: list[set[int]] = [set() for _ in kids]
    for src, dst in edges:
        if not (group.first <= src <= group.last and group.first <= dst <= group.last):
            continue
        a, b = _child_of(group, owner[src]), _child_of(group, owner[dst])
        if a is not None and b is not None and a is not b:
            preds[index[id(b)]].add(index[id(a)])
    layer = [0] * len(kids)
    for i in range(len(kids)):  # children are in execution order, so every predecessor comes first
        layer[i] = max((layer[p] + 1 for p in preds[i] if p < i), default=0)
    main: set[int] = set()
    if kids:
        i = max(range(len(kids)), key=lambda k: (layer[k], k))
        while True:
            main.add(i)
            before = [p for p in preds[i] if p < i]
            if not before:
                break
            i = max(before, key=lambda p: (layer[p], p))
    # off the main chain: a column to the left, held from its row down to the row above its first consumer
    consumers: list[list[int]] = [[] for _ in kids]
    for j, ps in enumerate(preds):
        for p in ps:
            consumers[p].append(layer[j])
    busy: list[int] = []  # per side column: the last row it is held to
    for i, kid in enumerate(kids):
        kid.row = layer[i]
        if i in main:
            kid.col = col
        else:
            end = max(min(consumers[i], default=layer[i] + 1) - 1, layer[i])
            for c, until in enumerate(busy):
                if until < layer[i]:
                    busy[c] = end
                    break
            else:
                c = len(busy)
                busy.append(end)
            kid.col = col - 1 - c
        if not kid.leaf:
            _arrange(kid, edges, owner, kid.col)



def lanes(spans: list[tuple[int, int]]) -> list[int]:
    """A lane per skip (source, target positions) such that skips whose spans overlap differ.

    Greedy interval colouring in order of start: optimal for intervals. Spans are half-open, so a
    skip that ends where the next begins (consecutive residual blocks) shares its lane."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], -spans[i][1]))
    ends: list[int] = []
    result = [0] * len(spans)
    for i in order:
        start, end = spans[i]
        for lane, until in enumerate(ends):
            if until <= start:
                ends[lane] = end
                result[i] = lane
                break
        else:
            result[i] = len(ends)
            ends.append(end)
    return result


@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float


def geometry(root: Unit, expanded: set[int]) -> dict[int, Box]:
    """Where each visible unit goes when the groups in ``expanded`` are open (the root always is).

    A collapsed group is a box in its column; an open one is a frame around its rows. The browser
    script ``stack`` in diagram.py is this function in JavaScript."""
    boxes: dict[int, Box] = {}
    _place(root, expanded, boxes, Y0, True)
    return boxes


def _height(unit: Unit, expanded: set[int], is_root: bool = False) -> float:
    if unit.leaf:
        return NODE_H
    if not is_root and unit.key not in expanded:
        return BOX_H
    rows: dict[int, float] = {}
    for kid in unit.children:
        rows[kid.row] = max(rows.get(kid.row, 0), _height(kid, expanded))
    inner = sum(rows.values()) + ROW_GAP * max(len(rows) - 1, 0)
    return inner if is_root else HEAD + inner + PAD


def _place(unit: Unit, expanded: set[int], boxes: dict[int, Box], y: float, is_root: bool = False) -> Box:
    x = X0 + unit.col * (NODE_W + COL_GAP)
    if unit.leaf or (not is_root and unit.key not in expanded):
        box = Box(x, y, NODE_W, NODE_H if unit.leaf else BOX_H)
        boxes[unit.key] = box
        return box
    heights: dict[int, float] = {}
    for kid in unit.children:
        heights[kid.row] = max(heights.get(kid.row, 0), _height(kid, expanded))
    tops, top = {}, y + (0 if is_root else HEAD)
    for row in sorted(heights):
        tops[row] = top
        top += heights[row] + ROW_GAP
    left, right = x, x + NODE_W
    for kid in unit.children:
        kb = _place(kid, expanded, boxes, tops[kid.row])
        left, right = min(left, kb.x), max(right, kb.x + kb.w)
    pad = 0 if is_root else PAD
    box = Box(left - pad, y, right - left + 2 * pad, top - ROW_GAP - y + pad if heights else HEAD + pad)
    boxes[unit.key] = box
    return box
