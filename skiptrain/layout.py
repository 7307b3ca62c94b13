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

import bisect
from collections.abc import Iterator
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
    children: list[Unit] = field(default_factory=list)
    parent: Unit | None = None
    row: int = 0
    col: int = 0  # absolute column: 0 is the main chain's
    first: int = 0  # the leaves' positions in execution order, first and last
    last: int = 0

    def walk(self) -> Iterator[Unit]:
        """This unit and all below it, depth first in execution order."""
        yield self
        for child in self.children:
            yield from child.walk()


def arrange(root: Unit, edges: list[tuple[int, int]]) -> None:
    """Give every unit its row and column. ``edges`` are (source, target) leaf positions, data and skips."""
    _spans(root)
    owner: dict[int, Unit] = {u.first: u for u in root.walk() if u.leaf}
    into: dict[int, list[int]] = {}  # target position -> source positions
    for src, dst in edges:
        into.setdefault(dst, []).append(src)
    _arrange(root, into, owner, 0)


def _spans(unit: Unit) -> None:
    """Each unit's parent, and each group's first and last leaf position."""
    for child in unit.children:
        child.parent = unit
        _spans(child)
    if unit.children:
        unit.first = min(c.first for c in unit.children)
        unit.last = max(c.last for c in unit.children)


def _child_of(group: Unit, leaf: Unit) -> Unit | None:
    unit: Unit | None = leaf
    while unit is not None and unit.parent is not group:
        unit = unit.parent
    return unit


def _arrange(group: Unit, into: dict[int, list[int]], owner: dict[int, Unit], col: int) -> None:
    """Longest-path layers among ``group``'s children; the longest path is column ``col``.
    Only the edges inside the group's span are read: each position once per enclosing group."""
    kids = group.children
    index = {id(k): i for i, k in enumerate(kids)}
    preds: list[set[int]] = [set() for _ in kids]
    for dst in range(group.first, group.last + 1):
        for src in into.get(dst, ()):
            if src < group.first:
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
            _arrange(kid, into, owner, kid.col)


def lanes(spans: list[tuple[int, int]]) -> list[int]:
    """A lane per skip (source, target positions): skips whose spans overlap never share one.

    Shorter skips are placed first, each in the lowest free lane, so a long skip runs outside the
    short ones it spans (a U-Net's nest without crossings). Spans are half-open: a skip that ends
    where the next begins (consecutive residual blocks) shares its lane."""
    starts: list[list[int]] = []  # per lane, its spans' starts and ends, sorted (a lane's spans are disjoint)
    ends: list[list[int]] = []
    result = [0] * len(spans)
    for i in sorted(range(len(spans)), key=lambda i: (spans[i][1] - spans[i][0], spans[i][0])):
        start, end = spans[i]
        for lane in range(len(starts)):
            k = bisect.bisect_right(starts[lane], start)
            if (k == 0 or ends[lane][k - 1] <= start) and (k == len(starts[lane]) or end <= starts[lane][k]):
                break
        else:
            lane = len(starts)
            starts.append([])
            ends.append([])
        k = bisect.bisect_right(starts[lane], start)
        starts[lane].insert(k, start)
        ends[lane].insert(k, end)
        result[i] = lane
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


def shown(root: Unit, expanded: set[int]) -> dict[int, str]:
    """What each shown unit is drawn as: `node`, `block` (a closed group) or `frame` (an open one)."""
    kinds: dict[int, str] = {}

    def visit(unit: Unit) -> None:
        for child in unit.children:
            if child.leaf:
                kinds[child.key] = "node"
            elif child.key in expanded:
                kinds[child.key] = "frame"
                visit(child)
            else:
                kinds[child.key] = "block"
    visit(root)
    return kinds


def anchor(leaf: Unit, kinds: dict[int, str]) -> int:
    """The shown unit that stands for ``leaf``: itself, or its outermost closed group."""
    chain: list[int] = []
    unit: Unit | None = leaf
    while unit is not None and unit.parent is not None:
        chain.append(unit.key)
        unit = unit.parent
    return next(k for k in reversed(chain) if kinds.get(k) in ("node", "block"))


def between(tops: dict[float, list[float]], a: Box, b: Box) -> bool:
    """Whether a shown box of ``a``'s column lies between ``a`` and ``b`` (``tops``: each column's
    box tops, sorted): a straight edge would run behind it."""
    ys = tops.get(a.x, [])
    return bisect.bisect_left(ys, b.y) > bisect.bisect_right(ys, a.y)


def edge_path(a: Box, b: Box, hidden: bool = False) -> str:
    """A data edge from the bottom of ``a`` to the top of ``b``: straight in one column, or round the
    left of the boxes between (``hidden``); between columns it turns near the side branch's end,
    so the line runs down the side column."""
    ax, ay, bx, by = a.x + a.w / 2, a.y + a.h, b.x + b.w / 2, b.y
    if ax == bx and hidden:
        sy, ty, lx = a.y + a.h * 0.7, b.y + b.h * 0.3, a.x - 14
        return (f"M{a.x:.10g},{sy:.10g}H{lx + 8:.10g}Q{lx:.10g},{sy:.10g} {lx:.10g},{sy + 8:.10g}"
                f"V{ty - 8:.10g}Q{lx:.10g},{ty:.10g} {lx + 8:.10g},{ty:.10g}H{b.x:.10g}")
    if ax == bx:
        return f"M{ax:.10g},{ay:.10g}V{by:.10g}"
    if bx < ax:  # out to a side column: turn at once, then down
        turn = min(ay + 16, by)
        return f"M{ax:.10g},{ay:.10g}C{ax:.10g},{turn:.10g} {bx:.10g},{ay:.10g} {bx:.10g},{turn:.10g}V{by:.10g}"
    turn = max(ay, by - 16)  # back to the main chain: down, then turn
    return f"M{ax:.10g},{ay:.10g}V{turn:.10g}C{ax:.10g},{by:.10g} {bx:.10g},{turn:.10g} {bx:.10g},{by:.10g}"


def skip_path(a: Box, b: Box, lx: float) -> str:
    """A skip from the right side of ``a`` out to lane ``lx``, down, and into the right side of ``b``;
    from a side column on the left (a branch into its merge), down that column into ``b``'s left side."""
    sx, sy, tx, ty = a.x + a.w, a.y + a.h * 0.7, b.x + b.w, b.y + b.h * 0.3
    if sx < b.x and ty > a.y + a.h:
        ax = a.x + a.w / 2
        return f"M{ax:.10g},{a.y + a.h:.10g}V{ty - 10:.10g}Q{ax:.10g},{ty:.10g} {ax + 10:.10g},{ty:.10g}H{b.x:.10g}"
    if a is b:  # both ends inside one closed box: a loop on its side, below where skips from above arrive
        mid = a.y + a.h * 0.5
        return f"M{sx:.10g},{sy + 4:.10g}C{sx + 24:.10g},{sy + 4:.10g} {sx + 24:.10g},{mid:.10g} {tx:.10g},{mid:.10g}"
    r = min(10, abs(ty - sy) / 2) * (1 if ty >= sy else -1)
    return (f"M{sx:.10g},{sy:.10g}H{lx - abs(r):.10g}Q{lx:.10g},{sy:.10g} {lx:.10g},{sy + r:.10g}V{ty - r:.10g}"
            f"Q{lx:.10g},{ty:.10g} {lx - abs(r):.10g},{ty:.10g}H{tx:.10g}")


def label_y(wanted: float, placed: list[float], height: float = 40) -> float:
    """A projection label's top: where wanted, or pushed below the labels ``placed`` so far."""
    for p in sorted(placed):
        if p - height < wanted < p + height:
            wanted = p + height
    placed.append(wanted)
    return wanted


# The page's copy of `geometry`, `shown`, `anchor` and the paths (same constants, same arithmetic),
# so opening a block in the browser moves what is below it without a round trip to Python.
SCRIPT = r"""
(function(){
var M=JSON.parse(document.getElementById("skd-model").textContent),C=M.C,U=M.units,open=new Set(M.open),parent={},zoom=1;
Object.keys(U).forEach(function(k){U[k][3].forEach(function(c){parent[c]=+k;});});
function $(id){return document.getElementById(id);}function u(id){return $("skd-"+id);}
function height(k,root){var u=U[k];if(u[0])return C.NODE_H;if(!root&&!open.has(k))return C.BOX_H;var rows={};
 u[3].forEach(function(c){rows[U[c][1]]=Math.max(rows[U[c][1]]||0,height(c,false));});var hs=Object.values(rows);
 var inner=hs.reduce(function(a,b){return a+b;},0)+C.ROW_GAP*Math.max(hs.length-1,0);return root?inner:C.HEAD+inner+C.PAD;}
function place(k,y,root,boxes){var u=U[k],x=C.X0+u[2]*(C.NODE_W+C.COL_GAP),b;
 if(u[0]||(!root&&!open.has(k))){b={x:x,y:y,w:C.NODE_W,h:u[0]?C.NODE_H:C.BOX_H};boxes[k]=b;return b;}
 var hs={};u[3].forEach(function(c){hs[U[c][1]]=Math.max(hs[U[c][1]]||0,height(c,false));});
 var tops={},top=y+(root?0:C.HEAD);Object.keys(hs).map(Number).sort(function(a,b){return a-b;}).forEach(function(r){tops[r]=top;top+=hs[r]+C.ROW_GAP;});
 var left=x,right=x+C.NODE_W;u[3].forEach(function(c){var kb=place(c,tops[U[c][1]],false,boxes);left=Math.min(left,kb.x);right=Math.max(right,kb.x+kb.w);});
 var pad=root?0:C.PAD;b={x:left-pad,y:y,w:right-left+2*pad,h:u[3].length?top-C.ROW_GAP-y+pad:C.HEAD+pad};boxes[k]=b;return b;}
function visit(k,kinds){U[k][3].forEach(function(c){if(U[c][0])kinds[c]="node";else if(open.has(c)){kinds[c]="frame";visit(c,kinds);}else kinds[c]="block";});}
function anchor(k,kinds){var chain=[];for(var u=k;u!==M.root;u=parent[u])chain.push(u);
 for(var i=chain.length-1;i>=0;i--){var s=kinds[chain[i]];if(s==="node"||s==="block")return chain[i];}}
function between(tops,a,b){var ys=tops[a.x]||[];function lo(v,right){var i=0,j=ys.length;while(i<j){var m=(i+j)>>1;if(ys[m]<v||(right&&ys[m]===v))i=m+1;else j=m;}return i;}
 return lo(b.y,false)>lo(a.y,true);}
function edgePath(a,b,hidden){var ax=a.x+a.w/2,ay=a.y+a.h,bx=b.x+b.w/2,by=b.y,t;
 if(ax===bx&&hidden){var sy=a.y+a.h*0.7,ty=b.y+b.h*0.3,lx=a.x-14;return "M"+a.x+","+sy+"H"+(lx+8)+"Q"+lx+","+sy+" "+lx+","+(sy+8)+"V"+(ty-8)+"Q"+lx+","+ty+" "+(lx+8)+","+ty+"H"+b.x;}
 if(ax===bx)return "M"+ax+","+ay+"V"+by;
 if(bx<ax){t=Math.min(ay+16,by);return "M"+ax+","+ay+"C"+ax+","+t+" "+bx+","+ay+" "+bx+","+t+"V"+by;}
 t=Math.max(ay,by-16);return "M"+ax+","+ay+"V"+t+"C"+ax+","+by+" "+bx+","+t+" "+bx+","+by;}
function skipPath(a,b,lx){var sx=a.x+a.w,sy=a.y+a.h*0.7,tx=b.x+b.w,ty=b.y+b.h*0.3;
 if(sx<b.x&&ty>a.y+a.h){var ax=a.x+a.w/2;return "M"+ax+","+(a.y+a.h)+"V"+(ty-10)+"Q"+ax+","+ty+" "+(ax+10)+","+ty+"H"+b.x;}
 if(a===b){var mid=a.y+a.h*0.5;return "M"+sx+","+(sy+4)+"C"+(sx+24)+","+(sy+4)+" "+(sx+24)+","+mid+" "+tx+","+mid;}
 var r=Math.min(10,Math.abs(ty-sy)/2)*(ty>=sy?1:-1),q=Math.abs(r);
 return "M"+sx+","+sy+"H"+(lx-q)+"Q"+lx+","+sy+" "+lx+","+(sy+r)+"V"+(ty-r)+"Q"+lx+","+ty+" "+(lx-q)+","+ty+"H"+tx;}
function labelY(w,placed){placed.slice().sort(function(a,b){return a-b;}).forEach(function(p){if(p-40<w&&w<p+40)w=p+40;});placed.push(w);return w;}
function draw(){var kinds={},boxes={};visit(M.root,kinds);place(M.root,C.Y0,true,boxes);var left=1e9,right=-1e9,drawn=0;
 Object.keys(U).forEach(function(k){k=+k;if(k===M.root)return;var s=kinds[k],b=boxes[k];
  ["n","b","f","h"].forEach(function(p){var e=u(p+k);if(!e)return;var on=(p==="n"&&s==="node")||(p==="b"&&s==="block")||((p==="f"||p==="h")&&s==="frame");
   e.style.display=on?"":"none";if(!on)return;e.setAttribute("transform","translate("+b.x+","+b.y+")");
   if(p==="f"){var r=e.querySelector("rect");r.setAttribute("width",b.w);r.setAttribute("height",b.h);}
   left=Math.min(left,b.x);right=Math.max(right,b.x+b.w);});});
 var tops={};Object.keys(kinds).forEach(function(k){if(kinds[k]!=="frame"){var b=boxes[k];(tops[b.x]=tops[b.x]||[]).push(b.y);}});
 Object.keys(tops).forEach(function(x){tops[x].sort(function(a,b){return a-b;});});
 M.edges.forEach(function(e,i){var a=anchor(e[0],kinds),b=anchor(e[1],kinds),p=u("e"+i);p.style.display=a===b?"none":"";
  if(a!==b)p.setAttribute("d",edgePath(boxes[a],boxes[b],between(tops,boxes[a],boxes[b])));});
 var laneX=right+24,labelX=laneX+(M.lanes+1)*C.LANE_GAP+16,placed=[],width=labelX;
 M.skips.forEach(function(s,i){var a=boxes[anchor(s[0],kinds)],b=boxes[anchor(s[1],kinds)],lx=laneX+s[2]*C.LANE_GAP;
  u("s"+i).setAttribute("d",skipPath(a,b,lx));var m=u("m"+i),left=a.x+a.w<b.x;m.setAttribute("x",left?b.x-40:b.x+b.w+12);m.setAttribute("y",b.y+b.h*0.3-5);
  var g=u("p"+i);if(!g)return;var y=labelY((a.y+a.h*0.7+b.y+b.h*0.3)/2-17,placed);g.setAttribute("transform","translate("+labelX+","+y+")");
  g.querySelector("path").setAttribute("d","M"+(lx-labelX)+",17H0");width=Math.max(width,labelX+(+g.querySelector("rect").getAttribute("width")));});
 var svg=$("skd-svg"),w=width+20-left+C.X0,h=boxes[M.root].h+2*C.Y0;svg.setAttribute("viewBox",(left-C.X0)+" 0 "+w+" "+h);
 svg.setAttribute("width",w*zoom);svg.setAttribute("height",h*zoom);
 svg.querySelectorAll("g.node,g.block,g.frame").forEach(function(e){var r=e.getBoundingClientRect();if(e.style.display!=="none"&&r.width>0&&r.height>0)drawn++;});
 svg.setAttribute("data-drawn",drawn);}
function unit(e){return e.target.closest("g.node,g.block,g.head,g.frame,g.proj,path.skip");}
var svg=$("skd-svg"),info=$("skd-info");
svg.addEventListener("click",function(e){var g=unit(e);if(!g)return;var k=+g.id.slice(5);
 if(g.id[4]==="b"){open.add(k);draw();}else if(g.id[4]==="h"){open.delete(k);draw();}});
svg.addEventListener("mouseover",function(e){var g=unit(e);if(g&&info){var t=g.querySelector("title");info.textContent=t?t.textContent:"";}});
function all(v){Object.keys(U).forEach(function(k){if(!U[k][0]&&+k!==M.root){if(v)open.add(+k);else open.delete(+k);}});draw();}
var b=$("skd-open");if(b)b.onclick=function(){all(true);};b=$("skd-close");if(b)b.onclick=function(){all(false);};
b=$("skd-reset");if(b)b.onclick=function(){open=new Set(M.open);zoom=1;draw();};
b=$("skd-in");if(b)b.onclick=function(){zoom*=1.25;draw();};b=$("skd-out");if(b)b.onclick=function(){zoom/=1.25;draw();};
draw();})();
"""


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
