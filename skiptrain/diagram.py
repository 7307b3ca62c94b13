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
from .report import shape_text
from .shapes import ModelPlan

FOLD_MIN = 6  # a run of at least this many identical collapsed instances keeps its first and last
_CHARS = 42  # characters that fit on a box's line


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
    signature: dict[int, tuple] = field(default_factory=dict)  # a group's block, shapes and parameters
    groups: int = 0  # how many group units so far

    def group(self, kind: str, children: list[L.Unit] | None = None) -> L.Unit:
        """A new group unit (`block` or `fold`); its key follows the leaves' (0 to N) and the root's (N + 1)."""
        self.groups += 1
        unit = L.Unit(self.root.key + self.groups, False, children=children or [])
        self.units[unit.key], self.kinds[unit.key] = unit, kind
        return unit


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
    leaf, root = L.Unit(0, True), L.Unit(key=len(pos), leaf=False)
    d = Drawing(root, {0: leaf, root.key: root}, kinds={0: "node"})
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
            group = d.group("block")
            (open_scopes[-1][1] if open_scopes else root).children.append(group)
            open_scopes.append((scope, group))
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
    _fold(d, root, scopes)
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
        d.signature[child.key] = (block, tuple(first.meta["in_shape"]), tuple(last.meta["shape"]), total)
        shapes = f"{shape_text(first.meta['in_shape'])} → {shape_text(last.meta['shape'])}"
        d.lines[child.key] = (f"{path}: {block}", f"{shapes} · {total:,} params")
        d.titles[child.key] = (f"{path}: block {block}\n{len(nodes)} nodes, {first.id} … {last.id}\ninput "
                               f"{shape_text(first.meta['in_shape'])} -> output {shape_text(last.meta['shape'])}\n"
                               f"params: {total:,}   MACs: {work:,}\nYAML: {first.loc or '-'} (its first node)")
        _label_groups(d, child, members, scopes, params, macs, pos)


def _fold(d: Drawing, unit: L.Unit, scopes: dict) -> None:
    """A run of FOLD_MIN or more identical closed instances (same block, shapes and parameters)
    keeps its first and last; the ones between become one closed fold that opens into them."""
    kids, out, i = unit.children, [], 0
    while i < len(kids):
        sig, j = d.signature.get(kids[i].key), i
        while (sig is not None and kids[i].key not in d.opened and j + 1 < len(kids)
               and d.signature.get(kids[j + 1].key) == sig):
            j += 1
        run = kids[i:j + 1]
        if len(run) >= FOLD_MIN:
            middle = run[1:-1]
            fold = d.group("fold", middle)
            first, last = scopes[middle[0].key][0], scopes[middle[-1].key][0]
            block, in_shape, out_shape, params = sig
            name = f"{first} … {last}: {len(middle)} × {block}"
            if len(name) > _CHARS:  # `features.5.1 … 5.4`: both ends' distinct parts, and the block's name
                name = f"{first} … {_tail(first, last)}: {len(middle)} × {block}"
            d.lines[fold.key] = (name,
                                 f"{shape_text(in_shape)} → {shape_text(out_shape)} · {len(middle)} × {params:,} params")
            d.titles[fold.key] = (f"{len(middle)} identical instances of block {block}: {first} … {last}\n"
                                  f"{params:,} params each, {len(middle) * params:,} in all")
            out += [run[0], fold, run[-1]]
        else:
            out += run
        i = j + 1
    unit.children[:] = out
    for child in unit.children:
        if not child.leaf and d.kinds[child.key] != "fold":
            _fold(d, child, scopes)


def _tail(first: str, last: str) -> str:
    """``last`` without the leading dotted components it shares with ``first`` (`5.4` after `features.5.1`)."""
    a, b = first.split("."), last.split(".")
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return ".".join(b[same:]) or last


def _fit(text: str, chars: int = _CHARS) -> str:
    """``text`` cut to ``chars``; an `id: type` line loses the start of its id instead, since the end
    of a path (`…denselayer12`) and the type tell one box from the next (the full text is on hover)."""
    if len(text) <= chars:
        return text
    head, sep, tail = text.rpartition(": ")
    if sep and len(tail) < chars - 8:
        return "…" + head[len(head) - (chars - len(tail) - 3):] + sep + tail
    return text[:chars - 1] + "…"


def _place(box: L.Box | None) -> str:
    """Where a unit's SVG group goes; without a box it is hidden until the page's script places it."""
    if box is None:
        return ' transform="translate(0,0)" style="display:none"'
    return f' transform="translate({box.x:.10g},{box.y:.10g})"'


def _frame_svg(d: Drawing, key: int, box: L.Box | None, pre: str = "") -> tuple[str, str]:
    """An open group: its frame, and its title, which is drawn above the edges that cross it (and closes it)."""
    w, h = (box.w, box.h) if box else (L.NODE_W, L.BOX_H)
    title = f"<title>{escape(d.titles.get(key, ''))}</title>"
    return (f'<g class="frame" id="{pre}f{key}"{_place(box)}><rect width="{w:.10g}" height="{h:.10g}" rx="6"/>{title}</g>',
            (f'<g class="head" id="{pre}h{key}"{_place(box)}><text class="toggle" x="8" y="16">− '
             f'{escape(_fit(d.lines[key][0], 60))}</text>{title}</g>'))


def _unit_svg(d: Drawing, key: int, kind: str, box: L.Box | None, pre: str = "") -> str:
    """A node or a closed group as an SVG group: a box with two lines of text; ``box`` None: hidden."""
    w, h = L.NODE_W, L.NODE_H if kind == "node" else L.BOX_H
    where, title = _place(box), f"<title>{escape(d.titles.get(key, ''))}</title>"
    line1, line2 = d.lines.get(key, ("", ""))
    cls = "node" if kind == "node" else "block fold" if d.kinds[key] == "fold" else "block"
    mark = f'<text class="toggle" x="{w - 8:.10g}" y="17" text-anchor="end">+</text>' if kind == "block" else ""
    return (f'<g class="{cls}" id="{pre}{"n" if kind == "node" else "b"}{key}"{where}>'
            f'<rect width="{w:.10g}" height="{h:.10g}" rx="{4 if kind == "node" else 7}"/>'
            f'<text x="8" y="16" class="l1">{escape(_fit(line1))}</text>'
            f'<text x="8" y="{h - 9:.10g}" class="l2">{escape(_fit(line2, _CHARS + 6))}</text>{mark}{title}</g>')


_STYLE = """
.skd text{font:12px sans-serif;fill:#222}.skd .l2{font-size:11px;fill:#555}
.skd .node rect{fill:#eef3fb;stroke:#6f8fc6}.skd .block rect{fill:#fff5dc;stroke:#c8952c;stroke-width:1.5}
.skd .fold rect{fill:#fdebc8;stroke-dasharray:6 3}.skd .block,.skd .head{cursor:pointer}
.skd .frame rect{fill:#f4f4f4;fill-opacity:.55;stroke:#b0b0b0;stroke-dasharray:4 3}
.skd .head text,.skd .merge{paint-order:stroke;stroke:#fff;stroke-width:3px}
.skd .head text{font-weight:bold;fill:#666}.skd .toggle{font-weight:bold;fill:#9a6a00}
.skd .edge{fill:none;stroke:#555;stroke-width:1.4;marker-end:url(#skd-a)}
.skd .skip{fill:none;stroke:#2f8a4a;stroke-width:1.6;marker-end:url(#skd-s)}
.skd .skip.projected{stroke:#d9480f;stroke-width:2.2;marker-end:url(#skd-p)}
.skd .merge{font-size:10px;fill:#2f8a4a}.skd .proj rect{fill:#fff0e6;stroke:#d9480f}
.skd .proj text{font-size:11px;fill:#a33a00}.skd .lead{stroke:#d9480f;stroke-dasharray:2 2;fill:none}
"""


def _marker(name: str, color: str) -> str:
    return (f'<marker id="skd-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="{color}"/></marker>')


def _svg(d: Drawing, opened: set[int], everything: bool) -> str:
    """The SVG of one state; ``everything``: every unit's every form, the hidden ones for the page's script."""
    kinds = L.shown(d.root, opened)
    boxes = L.geometry(d.root, opened)
    left = min(boxes[k].x for k in kinds)
    lane_x = max(boxes[k].x + boxes[k].w for k in kinds) + 24
    label_x = lane_x + (max((s["lane"] for s in d.skips), default=-1) + 1) * L.LANE_GAP + 16
    frames, heads, units, edges, skips, labels = [], [], [], [], [], []
    pre = "skd-" if everything else ""  # the page's ids, apart from those of a static copy on the same page
    for unit in d.root.walk():
        key, kind = unit.key, kinds.get(unit.key)
        if unit is d.root or (kind is None and not everything):
            continue
        forms = ["node"] if unit.leaf else ["block", "frame"] if everything else [kind]
        for form in forms:
            box = boxes[key] if form == kind else None
            if form == "frame":
                frame, head = _frame_svg(d, key, box, pre)
                frames.append(frame)
                heads.append(head)
            else:
                units.append(_unit_svg(d, key, form, box, pre))
    anchors = {k: L.anchor(d.units[k], kinds) for k in d.units if d.units[k].leaf}
    tops: dict[float, list[float]] = {}
    for k, kind in kinds.items():
        if kind != "frame":
            tops.setdefault(boxes[k].x, []).append(boxes[k].y)
    for ys in tops.values():
        ys.sort()
    drawn: set[tuple[int, int]] = set()
    for i, (s, t) in enumerate(d.edges):
        a, b = anchors[s], anchors[t]
        path = L.edge_path(boxes[a], boxes[b], L.between(tops, boxes[a], boxes[b])) if a != b else ""
        if everything:  # one path per edge, for the script to move or hide
            edges.append(f'<path class="edge" id="{pre}e{i}" ' + (f'd="{path}"/>' if path else 'style="display:none"/>'))
        elif path and (a, b) not in drawn:
            drawn.add((a, b))
            edges.append(f'<path class="edge" d="{path}"/>')
    placed: list[float] = []
    width, merges = label_x, set()
    for i, skip in enumerate(d.skips):
        a, b = boxes[anchors[skip["s"]]], boxes[anchors[skip["t"]]]
        lx = lane_x + skip["lane"] * L.LANE_GAP
        skips.append(f'<path class="{"skip projected" if "proj" in skip else "skip"}" id="{pre}s{i}" '
                     f'd="{L.skip_path(a, b, lx)}"><title>{escape(skip["title"])}</title></path>')
        where = (b.x - 40 if a.x + a.w < b.x else b.x + b.w + 12, b.y + b.h * 0.3 - 5)  # beside its arrow
        if everything or (where, skip["merge"]) not in merges:  # one label where many loops overlap
            merges.add((where, skip["merge"]))
            skips.append(f'<text class="merge" id="{pre}m{i}" x="{where[0]:.10g}" y="{where[1]:.10g}">'
                         f'{escape(skip["merge"])}</text>')
        if "proj" in skip:
            y = L.label_y((a.y + a.h * 0.7 + b.y + b.h * 0.3) / 2 - 17, placed)
            w = 12 + 6.4 * max(len(_fit(t, 64)) for t in skip["proj"])
            width = max(width, label_x + w)
            line1, line2 = (escape(_fit(t, 64)) for t in skip["proj"])
            labels.append(f'<g class="proj" id="{pre}p{i}" transform="translate({label_x:.10g},{y:.10g})">'
                          f'<path class="lead" d="M{lx - label_x:.10g},17H0"/><rect width="{w:.10g}" height="34" rx="4"/>'
                          f'<text x="6" y="14">{line1}</text><text x="6" y="28">{line2}</text>'
                          f'<title>{escape(skip["title"])}</title></g>')
    height, full = boxes[d.root.key].h + 2 * L.Y0, width + 20 - left + L.X0
    named = ' id="skd-svg"' if everything else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="skd"{named} '
            f'viewBox="{left - L.X0:.10g} 0 {full:.10g} {height:.10g}" width="{full:.10g}" height="{height:.10g}">'
            f'<style>{_STYLE}</style><defs>{_marker("a", "#555")}{_marker("s", "#2f8a4a")}{_marker("p", "#d9480f")}'
            f'</defs><g>{"".join(frames)}</g><g>{"".join(edges)}</g><g>{"".join(heads)}</g><g>{"".join(units)}</g>'
            f'<g>{"".join(skips)}</g><g>{"".join(labels)}</g></svg>')


def render_svg(plan: ModelPlan, collapse: bool = True) -> str:
    """A standalone <svg> element: repeated block instances closed (``collapse``) or every node shown."""
    d = build(plan)
    opened = d.opened if collapse else {k for k, u in d.units.items() if not u.leaf}
    return _svg(d, opened, everything=False)


def _model_json(d: Drawing) -> str:
    """What the page's script needs: the units' rows, columns and children, the edges and the lanes."""
    model = {"root": d.root.key, "open": sorted(d.opened), "edges": d.edges,
             "units": {u.key: [int(u.leaf), u.row, u.col, [c.key for c in u.children]] for u in d.root.walk()},
             "skips": [[s["s"], s["t"], s["lane"]] for s in d.skips],
             "lanes": max((s["lane"] for s in d.skips), default=-1),
             "C": {name: getattr(L, name) for name in ("NODE_W", "NODE_H", "BOX_H", "ROW_GAP", "COL_GAP", "HEAD",
                                                       "PAD", "LANE_GAP", "X0", "Y0")}}
    return json.dumps(model, separators=(",", ":")).replace("</", "<\\/")


def diagram_section(plan: ModelPlan) -> str:
    """The interactive diagram as one HTML fragment (buttons, the SVG, its data and script) for a page
    such as the run report; one per page (its element ids are fixed)."""
    d = build(plan)
    return (f'<div class="skd-page"><style>{_SECTION_STYLE}</style>'
            '<p class="skd-tools"><button id="skd-reset">default</button> '
            '<button id="skd-open">open all</button> <button id="skd-close">close all</button> '
            '<button id="skd-out" title="zoom out">−</button> <button id="skd-in" title="zoom in">+</button> '
            '<span>click a block to open it, its title to close it; hover for details</span></p>'
            '<div class="skd-body"><div class="skd-scroll">' + _svg(d, d.opened, everything=True) +
            '</div><pre id="skd-info">hover over a box or a skip: its id, type, arguments, output shape, '
            'parameters, multiply-adds and YAML line show here</pre></div>'
            f'<script type="application/json" id="skd-model">{_model_json(d)}</script>'
            f"<script>{L.SCRIPT}</script></div>")


_SECTION_STYLE = """
.skd-body{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.skd-scroll{overflow:auto;max-width:100%;max-height:88vh;flex:0 1 auto;border:1px solid #eee}
#skd-info{flex:0 0 320px;white-space:pre-wrap;font:12px monospace;background:#f6f6f6;border:1px solid #ddd;
padding:8px;margin:0}.skd-tools span{color:#666;margin-left:8px}
"""
_PAGE_STYLE = "body{font:14px sans-serif;margin:16px;color:#222}h1{font-size:20px;margin:0 0 4px}"


def render_html(plan: ModelPlan) -> str:
    """A full self-contained page: summary, legend and the diagram; no network, fonts or external files."""
    graph = plan.graph
    compute = count(plan)
    summary = (f"{len(graph.nodes)} nodes · {len(graph.skips)} skips · {len(plan.projections)} projections · "
               f"{plan.params:,} parameters · {macs_text(compute.macs)}MACs per sample · input "
               f"{shape_text(graph.input_shape)} → output {shape_text(plan.output_shape)}")
    legend = ('<p class="skd-legend">blue: a layer · yellow: a block instance (closed) · dashed frame: an open '
              'instance · green: a skip and its merge · orange: a skip with a projection, labelled with its '
              'kind, parameters and multiply-adds</p>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(graph.name)}</title>'
            f'<style>{_PAGE_STYLE}</style><script>window.onerror=function(m){{document.documentElement'
            f'.setAttribute("data-error",String(m));}};</script></head><body><h1>{escape(graph.name)}</h1>'
            f"<p>{escape(summary)}</p>{legend}{diagram_section(plan)}</body></html>\n")
