"""The network as a picture: a standalone SVG, or an HTML page whose block instances open and close.

Nodes are grouped by the block instances they sit in (``Node.scope``); an instance of a block that
is used more than once is one box by default (``layer1.0: bottleneck``, its shapes and parameters),
and a long run of identical instances (ResNet-1202's 200 per stage) is folded into one box, so a
1,000-node network gives a picture of bounded size. Skip edges run in lanes to the right of the
main chain; each projection is labelled with its kind, parameters and multiply-adds; hovering shows
a node's id, type, arguments, output shape and YAML line. Layout: ``layout.py`` (pure Python).
Every piece of user text is escaped; the page needs no network, fonts or external scripts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape

from . import layout as L
from .compute import count, macs_text
from .graph import INPUT
from .shapes import ModelPlan

FOLD_MIN = 6  # a run of at least this many identical collapsed instances keeps its first and last
_CHARS = 42  # characters that fit on a box's line


def shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass
class Drawing:
    """A plan turned into layout units, with what each one shows."""

    root: L.Unit
    units: dict[int, L.Unit]
    lines: dict[int, tuple[str, str]] = field(default_factory=dict)  # two lines of text per unit
    titles: dict[int, str] = field(default_factory=dict)  # hover text per unit
    kinds: dict[int, str] = field(default_factory=dict)  # node, block, fold
    opened: set[int] = field(default_factory=set)  # the groups open by default
    edges: list[tuple[int, int]] = field(default_factory=list)  # data edges between leaf keys
    skips: list[dict] = field(default_factory=list)


def build(plan: ModelPlan) -> Drawing:
    """Leaves for the input and every node, groups for block instances and folds, laid out."""
    graph = plan.graph
    count(plan)  # multiply-adds into node.meta and skip.meta
    pos = {INPUT: 0, **{n.id: i + 1 for i, n in enumerate(graph.order)}}
    own_params = [0] * (len(pos))
    own_macs = [0] * (len(pos))
    for node in graph.order:
        own_params[pos[node.id]] += node.meta["params"]
        own_macs[pos[node.id]] += node.meta["macs"]
    for proj in plan.projections.values():
        own_params[pos[proj.skip.target]] += proj.params
        own_macs[pos[proj.skip.target]] += proj.skip.meta["macs"]
    root = L.Unit(key=len(pos), leaf=False)
    d = Drawing(root, {root.key: root})
    leaf = L.Unit(0, True)
    d.units[0], d.kinds[0] = leaf, "node"
    d.lines[0] = (f"{INPUT}: {graph.input_dtype}", shape_text(graph.input_shape))
    d.titles[0] = f"{INPUT}\nshape: {shape_text(graph.input_shape)} {graph.input_dtype}\n{graph.loc or ''}".strip()
    root.children.append(leaf)
    uses: dict[str, set[str]] = {}
    for node in graph.order:
        for path, block in node.scope:
            uses.setdefault(block, set()).add(path)
    open_scopes: list[tuple[tuple[str, str], L.Unit]] = []  # the instances the walk is inside
    members: dict[int, list] = {}  # a group's nodes
    scopes: dict[int, tuple[str, str]] = {}  # a group's (instance path, block name)
    for node in graph.order:
        depth = 0
        while depth < len(open_scopes) and depth < len(node.scope) and open_scopes[depth][0] == node.scope[depth]:
            depth += 1
        del open_scopes[depth:]
        for scope in node.scope[depth:]:
            group = L.Unit(len(d.units) + 1000000, False)  # keys apart from leaf positions
            d.units[group.key] = group
            (open_scopes[-1][1] if open_scopes else root).children.append(group)
            open_scopes.append((scope, group))
            d.kinds[group.key] = "block"
            members[group.key] = []
            scopes[group.key] = scope
            if len(uses[scope[1]]) < 2:
                d.opened.add(group.key)
        k = pos[node.id]
        leaf = L.Unit(k, True, first=k, last=k)
        d.units[k], d.kinds[k] = leaf, "node"
        (open_scopes[-1][1] if open_scopes else root).children.append(leaf)
        for _, group in open_scopes:
            members[group.key].append(node)
        args = ", ".join(f"{a}={v!r}" for a, v in node.meta.get("args", node.args).items())
        d.lines[k] = (f"{node.id}: {node.type}", f"{shape_text(node.meta['shape'])}"
                      + (f" · {node.meta['params']:,} params" if node.meta["params"] else ""))
        d.titles[k] = (f"{node.id}\ntype: {node.type}\nargs: {args[:600] or '-'}\noutput: "
                       f"{shape_text(node.meta['shape'])} {node.meta.get('dtype', '')}\nparams: "
                       f"{node.meta['params']:,}   MACs: {node.meta['macs']:,}\nYAML: {node.loc or '-'}")
    _label_groups(d, root, members, scopes, own_params, own_macs, pos)
    _fold(d, root, members)
    d.edges = [(pos[src], pos[n.id]) for n in graph.order for src in n.inputs]
    spans = [(pos[s.source], pos[s.target]) for s in graph.skips]
    L.arrange(root, d.edges + spans)
    for skip, (a, b), lane in zip(graph.skips, spans, L.lanes(spans)):
        proj = plan.projection_for(skip)
        entry = {"s": a, "t": b, "lane": lane, "merge": skip.merge,
                 "title": f"skip {skip.source} -> {skip.target}: {skip.merge}" + (f"\nYAML: {skip.loc}" if skip.loc else "")}
        if proj is not None:
            entry["proj"] = (f"{proj.kind}: {proj.description}",
                             f"{proj.params:,} params · {macs_text(skip.meta['macs'])} MACs")
            entry["title"] += (f"\nprojection {proj.id}: {proj.description}\n{shape_text(proj.in_shape)} -> "
                               f"{shape_text(proj.out_shape)}\nparams: {proj.params:,}   MACs: {skip.meta['macs']:,}")
        d.skips.append(entry)
    return d


def _label_groups(d: Drawing, unit: L.Unit, members: dict, scopes: dict, params: list, macs: list,
                  pos: dict) -> None:
    """Each instance's two lines and hover text: its shapes, parameters and multiply-adds."""
    for child in unit.children:
        if child.leaf:
            continue
        nodes = members[child.key]
        first, last = nodes[0], nodes[-1]
        path, block = scopes[child.key]
        total = sum(params[pos[n.id]] for n in nodes)
        work = sum(macs[pos[n.id]] for n in nodes)
        child.sig = (block, tuple(first.meta["in_shape"]), tuple(last.meta["shape"]), total)  # type: ignore[attr-defined]
        d.lines[child.key] = (f"{path}: {block}", f"{shape_text(first.meta['in_shape'])} → "
                              f"{shape_text(last.meta['shape'])} · {total:,} params")
        d.titles[child.key] = (f"{path}: block {block}\n{len(nodes)} nodes, {first.id} … {last.id}\ninput "
                               f"{shape_text(first.meta['in_shape'])} -> output {shape_text(last.meta['shape'])}\n"
                               f"params: {total:,}   MACs: {work:,}\nYAML: {first.loc or '-'} (first node)")
        _label_groups(d, child, members, scopes, params, macs, pos)



def _fold(d: Drawing, unit: L.Unit, members: dict) -> None:
    """Runs of identical collapsed instances (same block, shapes and parameters) keep their ends."""
    kids, out, i = unit.children, [], 0
    while i < len(kids):
        j = i
        sig = getattr(kids[i], "sig", None)
        while (sig is not None and kids[i].key not in d.opened and j + 1 < len(kids)
               and getattr(kids[j + 1], "sig", None) == sig):
            j += 1
        run = kids[i:j + 1]
        if len(run) >= FOLD_MIN:
            fold = L.Unit(len(d.units) + 1000000, False, children=run[1:-1])
            d.units[fold.key], d.kinds[fold.key] = fold, "fold"
            middle = [n for r in run[1:-1] for n in members[r.key]]
            members[fold.key] = middle
            first_path = d.lines[run[1].key][0].split(": ")[0]
            last_path = d.lines[run[-2].key][0].split(": ")[0]
            block, _, _, params = sig
            d.lines[fold.key] = (f"{first_path} … {last_path}: {len(run) - 2} × {block}",
                                 d.lines[run[1].key][1].rsplit(" · ", 1)[0] + f" · {len(run) - 2} alike")
            d.titles[fold.key] = (f"{len(run) - 2} identical instances of block {block}, {first_path} … {last_path}\n"
                                  f"{params:,} params each, {(len(run) - 2) * params:,} in all\n"
                                  "click to open the run")
            out += [run[0], fold, run[-1]]
        else:
            out += run
        i = j + 1
    unit.children[:] = out
    for child in unit.children:
        if not child.leaf and d.kinds[child.key] != "fold":
            _fold(d, child, members)


# ---- drawing: the same arithmetic as the page's script below (keep the two in step) ----

def _visible(d: Drawing, opened: set[int]) -> dict[int, str]:
    """What each shown unit is drawn as: `node`, `block` (a closed group) or `frame` (an open one)."""
    shown: dict[int, str] = {}

    def visit(unit: L.Unit) -> None:
        for child in unit.children:
            if child.leaf:
                shown[child.key] = "node"
            elif child.key in opened:
                shown[child.key] = "frame"
                visit(child)
            else:
                shown[child.key] = "block"
    visit(d.root)
    return shown


def _anchor(d: Drawing, key: int, shown: dict[int, str]) -> int:
    """The shown unit that stands for leaf ``key``: itself, or its outermost closed group."""
    chain, unit = [], d.units[key]
    while unit is not None and unit is not d.root:
        chain.append(unit.key)
        unit = unit.parent
    return next(k for k in reversed(chain) if shown.get(k) in ("node", "block"))


def _edge_path(a: L.Box, b: L.Box) -> str:
    ax, ay, bx, by = a.x + a.w / 2, a.y + a.h, b.x + b.w / 2, b.y
    if ax == bx:
        return f"M{ax:g},{ay:g}V{by:g}"
    mid = max(ay, by - 22)
    return f"M{ax:g},{ay:g}V{mid:g}C{ax:g},{by - 4:g} {bx:g},{mid:g} {bx:g},{by:g}"


def _skip_path(a: L.Box, b: L.Box, lx: float) -> str:
    sx, sy, tx, ty = a.x + a.w, a.y + a.h * 0.7, b.x + b.w, b.y + b.h * 0.3
    if a is b:  # both ends inside one closed box: a loop on its side
        return f"M{sx:g},{sy:g}C{sx + 28:g},{sy:g} {sx + 28:g},{ty:g} {tx:g},{ty:g}"
    r = min(10, abs(ty - sy) / 2) * (1 if ty >= sy else -1)
    return (f"M{sx:g},{sy:g}H{lx - abs(r):g}Q{lx:g},{sy:g} {lx:g},{sy + r:g}V{ty - r:g}"
            f"Q{lx:g},{ty:g} {lx - abs(r):g},{ty:g}H{tx:g}")


def _fit(text: str, chars: int = _CHARS) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "…"


def _unit_svg(d: Drawing, key: int, kind: str, box: L.Box | None) -> str:
    """One unit as a group of SVG elements; ``box`` None: hidden until the script shows it."""
    x, y, w, h = (box.x, box.y, box.w, box.h) if box else (0, 0, L.NODE_W, L.NODE_H)
    where = f' transform="translate({x:g},{y:g})"' + ("" if box else ' style="display:none"')
    title = f"<title>{escape(d.titles.get(key, ''))}</title>"
    line1, line2 = d.lines.get(key, ("", ""))
    if kind == "frame":
        label = escape(_fit(line1, 60))
        return (f'<g class="frame" id="f{key}"{where}><rect width="{w:g}" height="{h:g}" rx="6"/>'
                f'<text class="toggle" x="8" y="16">− {label}</text>{title}</g>')
    cls = "node" if kind == "node" else "block fold" if d.kinds[key] == "fold" else "block"
    mark = '<text class="toggle" x="{0:g}" y="17" text-anchor="end">+</text>'.format(w - 8) if kind == "block" else ""
    return (f'<g class="{cls}" id="{"n" if kind == "node" else "b"}{key}"{where}>'
            f'<rect width="{w:g}" height="{h:g}" rx="{4 if kind == "node" else 7}"/>'
            f'<text x="8" y="16" class="l1">{escape(_fit(line1))}</text>'
            f'<text x="8" y="{h - 9:g}" class="l2">{escape(_fit(line2, _CHARS + 6))}</text>{mark}{title}</g>')


_STYLE = """
.skd text{font:12px sans-serif;fill:#222}.skd .l2{font-size:11px;fill:#555}
.skd .node rect{fill:#eef3fb;stroke:#6f8fc6}.skd .block rect{fill:#fff5dc;stroke:#c8952c;stroke-width:1.5}
.skd .fold rect{fill:#fdebc8;stroke-dasharray:5 3}.skd .frame rect{fill:#f7f7f7;fill-opacity:.5;stroke:#b5b5b5;stroke-dasharray:4 3}
.skd .frame text{font-weight:bold;fill:#666}.skd .toggle{font-weight:bold;fill:#9a6a00}
.skd .edge{fill:none;stroke:#555;stroke-width:1.4;marker-end:url(#skd-a)}
.skd .skip{fill:none;stroke:#2f8a4a;stroke-width:1.6;marker-end:url(#skd-s)}
.skd .skip.projected{stroke:#d9480f;stroke-width:2.2;marker-end:url(#skd-p)}
.skd .merge{font-size:10px;fill:#2f8a4a}.skd .proj rect{fill:#fff0e6;stroke:#d9480f}
.skd .proj text{font-size:11px;fill:#a33a00}.skd .lead{stroke:#d9480f;stroke-dasharray:2 2}
"""


def _marker(name: str, color: str) -> str:
    return (f'<marker id="skd-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="{color}"/></marker>')


def _svg(d: Drawing, opened: set[int], everything: bool) -> str:
    """The SVG of one state; ``everything``: also the hidden units, for the page's script to show."""
    shown = _visible(d, opened)
    boxes = L.geometry(d.root, opened)
    right = max(b.x + b.w for k, b in boxes.items() if k in shown)
    left = min(b.x for k, b in boxes.items() if k in shown)
    lane_x = right + 24
    top_lane = max((s["lane"] for s in d.skips), default=-1)
    label_x = lane_x + (top_lane + 1) * L.LANE_GAP + 16
    frames, units, edges, skips, labels = [], [], [], [], []
    keys = [u.key for u in d.root.walk() if u is not d.root]
    for key in keys:
        kind = shown.get(key)
        if kind is None and not everything:
            continue
        if d.units[key].leaf:
            units.append(_unit_svg(d, key, "node", boxes.get(key) if kind else None))
            continue
        target = frames if kind == "frame" else units
        target.append(_unit_svg(d, key, kind or "block", boxes.get(key) if kind else None))
        if everything:  # the other form of the group, hidden
            other = "block" if kind == "frame" else "frame"
            (units if other == "block" else frames).append(_unit_svg(d, key, other, None))
    seen: set[tuple[int, int]] = set()
    for i, (s, t) in enumerate(d.edges):
        a, b = _anchor(d, s, shown), _anchor(d, t, shown)
        if a == b or ((a, b) in seen and not everything):
            continue
        seen.add((a, b))
        edges.append(f'<path class="edge" id="e{i}" d="{_edge_path(boxes[a], boxes[b])}"/>')
    placed: list[float] = []
    width = label_x
    for i, skip in enumerate(d.skips):
        a, b = boxes[_anchor(d, skip["s"], shown)], boxes[_anchor(d, skip["t"], shown)]
        lx = lane_x + skip["lane"] * L.LANE_GAP
        cls = "skip projected" if "proj" in skip else "skip"
        skips.append(f'<path class="{cls}" id="s{i}" d="{_skip_path(a, b, lx)}"><title>'
                     f'{escape(skip["title"])}</title></path>')
        skips.append(f'<text class="merge" id="m{i}" x="{b.x + b.w + 12:g}" y="{b.y + b.h * 0.3 - 5:g}">'
                     f'{escape(skip["merge"])}</text>')
        if "proj" in skip:
            y = (a.y + a.h * 0.7 + b.y + b.h * 0.3) / 2 - 17
            y = max([y] + [p + 40 for p in placed if p + 40 > y and p < y + 40])
            placed.append(y)
            text = [escape(_fit(line, 64)) for line in skip["proj"]]
            w = 12 + 6.4 * max(len(t) for t in skip["proj"])
            width = max(width, label_x + w)
            labels.append(f'<g class="proj" id="p{i}" transform="translate({label_x:g},{y:g})">'
                          f'<path class="lead" d="M{lx - label_x:g},17H0"/><rect width="{w:g}" height="34" rx="4"/>'
                          f'<text x="6" y="14">{text[0]}</text><text x="6" y="28">{text[1]}</text>'
                          f'<title>{escape(skip["title"])}</title></g>')
    height = boxes[d.root.key].h + 2 * L.Y0
    view = f"{left - L.X0:g} 0 {width + 20 - left + L.X0:g} {height:g}"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="skd" viewBox="{view}" '
            f'width="{width + 20 - left + L.X0:g}" height="{height:g}" font-family="sans-serif">'
            f'<style>{_STYLE}</style><defs>{_marker("a", "#555")}{_marker("s", "#2f8a4a")}{_marker("p", "#d9480f")}'
            f'</defs><g id="skd-frames">{"".join(frames)}</g><g>{"".join(edges)}</g><g>{"".join(units)}</g>'
            f'<g>{"".join(skips)}</g><g>{"".join(labels)}</g></svg>')


def render_svg(plan: ModelPlan, collapse: bool = True) -> str:
    """A standalone <svg> element: repeated block instances closed (``collapse``) or every node shown."""
    d = build(plan)
    opened = d.opened if collapse else {k for k, u in d.units.items() if not u.leaf}
    return _svg(d, opened, everything=False)


def render_html(plan: ModelPlan) -> str:
    """A full self-contained page: the diagram, its summary and a legend; no network, no external files."""
    graph = plan.graph
    compute = count(plan)
    summary = (f"{len(graph.nodes)} nodes · {len(graph.skips)} skips · {len(plan.projections)} projections · "
               f"{plan.params:,} parameters · {macs_text(compute.macs)}MACs per sample")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(graph.name)}</title>'
            f"<style>body{{font:14px sans-serif;margin:16px;color:#222}}</style></head><body>"
            f"<h1>{escape(graph.name)}</h1><p>{escape(summary)}</p>{render_svg(plan)}</body></html>\n")
