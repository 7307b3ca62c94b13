"""The classes of an ejected file: one ``nn.Module`` per block definition, and the model composing them.

A block instance becomes a call of its class (``self.down2 = BasicBn2Proj(channels=32, stride=2)``)
when it is self-contained: one value in, one value out, every module under its own path and no tied
weights (a skip from outside into its output is merged by the enclosing class after the call); the
copies of a `repeat:` become an ``nn.Sequential`` when they are chained. Anything else (a skip into a
block's inner layer, ties, a merge reading across scopes) stays in the enclosing class, module by
module under its key path: correctness first. Instances of one block share a class when their
structure is the same (the same modules, projections and forward); the values that differ between them
become the class's constructor arguments, named after the block's `args:` where the values match.
"""
from __future__ import annotations

import itertools
import keyword
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from . import registry
from .eject import Call, Leaf, _layer_call, _module_call, _Source
from .graph import INPUT, Node, Skip
from .merges import FROM_FIRST, MERGES

if TYPE_CHECKING:
    from .eject_classes import BlockClass

RESERVED = {"self", "x", "out", "torch", "nn", "F", "math", "OrderedDict", "super", "_put"}


@dataclass
class Instance:
    """A block instance (a copy of a `repeat:`): its nodes, and where it can stand as one module call."""

    path: str
    block: str
    depth: int  # its index in its nodes' ``scope``
    nodes: list[Node] = field(default_factory=list)
    ok: bool = False  # self-contained: it becomes a call of its block's class
    outer: list[Skip] = field(default_factory=list)  # skips into its output that the enclosing class merges
    input: str = ""  # the one value it reads from outside
    output: str = ""  # the one value of it that is read outside
    cls: BlockClass | None = None
    kwargs: dict[str, Leaf] = field(default_factory=dict)  # its class's constructor arguments
    template: Template | None = None


@dataclass
class Group:
    """The copies of one `repeat:` under ``path``: chained, an ``nn.Sequential``; else a list."""

    path: str
    members: list[Instance]
    chain: bool


@dataclass
class Template:
    entries: list[tuple[str, Call]]  # (path relative to the class, constructor call) in key order
    forward: list[str]  # the forward's body lines
    put: bool = False  # uses `_put` (a module at a nested path)
    chain: bool = False  # the forward calls the entries in order, each on the one before


def _walk(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Leaf]]:
    if isinstance(node, Leaf):
        yield path, node
        return
    for i, arg in enumerate(node.args):
        yield from _walk(arg[1] if isinstance(arg, tuple) else arg, (*path, i))
    for key, value in node.kwargs.items():
        yield from _walk(value, (*path, key))


def render(node: Any, text: Callable[[tuple, Leaf], str], path: tuple = ()) -> str:
    """A call as source; ``text`` writes each leaf (its value, or a constructor argument's name)."""
    if isinstance(node, Leaf):
        return text(path, node)
    args = [(a[0], render(a[1], text, (*path, i))) if isinstance(a, tuple) else render(a, text, (*path, i))
            for i, a in enumerate(node.args)]
    if node.keyed == "sequential":
        args = ["OrderedDict([" + ", ".join(f"({k!r}, {v})" for k, v in args) + "])"]
    elif node.keyed == "list":
        args = ["[" + ", ".join(args) + "]"]
    elif node.keyed == "dict":
        args = ["{" + ", ".join(f"{k!r}: {v}" for k, v in args) + "}"]
    args += [f"{k}={render(v, text, (*path, k))}" for k, v in node.kwargs.items()]
    return f"{node.callee}({', '.join(args)})"


def render_lines(node: Any, text: Callable[[tuple, Leaf], str], indent: str, path: tuple = ()) -> str:
    """``render``, with a long container call's modules one per line (``nn.Sequential(\\n    Bottleneck(...),``)."""
    flat = render(node, text, path)
    if len(flat) <= 80 or not isinstance(node, Call) or len(node.args) < 2 or node.kwargs:
        return flat
    inner = indent + "    "
    items = [(a[0], render_lines(a[1], text, inner, (*path, i))) if isinstance(a, tuple)
             else render_lines(a, text, inner, (*path, i)) for i, a in enumerate(node.args)]
    if node.keyed == "sequential":
        return f"{node.callee}(OrderedDict([\n" + "".join(f"{inner}({k!r}, {v}),\n" for k, v in items) + f"{indent}]))"
    if node.keyed == "list":
        return f"{node.callee}([\n" + "".join(f"{inner}{v},\n" for v in items) + f"{indent}])"
    if node.keyed == "dict":
        return f"{node.callee}({{\n" + "".join(f"{inner}{k!r}: {v},\n" for k, v in items) + f"{indent}}})"
    return f"{node.callee}(\n" + "".join(f"{inner}{v},\n" for v in items) + f"{indent})"


def attr_ok(name: str) -> bool:
    """A path segment usable as ``self.<name>``: an identifier that is no nn.Module attribute."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_") \
        and not hasattr(nn.Module, name)


def identifier(text: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", text).strip("_") or "v"
    if base[0].isdigit() or keyword.iskeyword(base):
        base = "v_" + base
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


class Blocks:
    """The analysis of one model: its instances, which are self-contained, and each scope's code."""

    def __init__(self, model: nn.Module, plan: Any, out: _Source) -> None:
        self.plan, self.graph, self.out = plan, plan.graph, out
        self.built = dict(model.named_modules())
        self.model = model
        self.items: dict[str, list[tuple[str, Skip | None]]] = {}  # node id -> (module path, skip) it creates
        self.readers: dict[str, set[str]] = {INPUT: set()}
        for node in self.graph.order:
            layer = registry.get(node.type, node.loc)
            self.items[node.id] = [] if layer.passthrough else [(node.id, None)]
            for source in node.inputs:
                self.readers.setdefault(source, set()).add(node.id)
            for skip in self.graph.skips_into(node.id):
                self.readers.setdefault(skip.source, set()).add(node.id)
                proj = plan.projection_for(skip)
                if proj is not None:
                    self.items[node.id].append((proj.id, skip))
        self.readers.setdefault(self.graph.output, set()).add("")  # "": the model's return
        self.instances: dict[str, Instance] = {}
        for node in self.graph.order:
            for depth, (path, block) in enumerate(node.scope):
                self.instances.setdefault(path, Instance(path, block, depth)).nodes.append(node)
        tied = [path for node in self.graph.order for path in node.meta.get("tied", {}).values()]
        paths = [(path, node_id, skip) for node_id, items in self.items.items() for path, skip in items]
        for inst in self.instances.values():
            self._check(inst, tied, paths)

    def _check(self, inst: Instance, tied: list[str], paths: list[tuple[str, str, Skip | None]]) -> None:
        ids = {n.id for n in inst.nodes}
        prefix = inst.path + "."
        read_out = {i for i in ids if self.readers.get(i, set()) - ids}
        inst.outer = self._outer(inst, ids, read_out)
        outer = {id(k) for k in inst.outer}
        outside = {s for n in inst.nodes for s in [*n.inputs, *(k.source for k in self.graph.skips_into(n.id)
                                                                if id(k) not in outer)] if s not in ids}
        own = all((node_id in ids and id(skip) not in outer) == path.startswith(prefix)
                  for path, node_id, skip in paths)
        ties = any(n.meta.get("tied") for n in inst.nodes) or any(p.startswith(prefix) for p in tied)
        inst.ok = len(outside) == 1 and len(read_out) == 1 and own and not ties
        if inst.ok:
            (inst.input,), (inst.output,) = outside, read_out

    def _outer(self, inst: Instance, ids: set[str], read_out: set[str]) -> list[Skip]:
        """Skips into the instance's output from outside that the enclosing class merges after calling it
        (RegNet's `{from: input, to: f, id: proj}`, GPT's `{from: attn, to: mlp}`): those whose projection
        lives outside the instance, or whose source is not the instance's input; none if that would
        reorder the output's merges or the instance reads its own merged output."""
        if len(read_out) != 1:
            return []
        (out,) = read_out
        into = self.graph.skips_into(out)
        inputs = {s for n in inst.nodes for s in n.inputs if s not in ids}
        outer = [k for k in into if k.source not in ids and (k.source not in inputs or self._proj_outside(k, inst))]
        if not outer or self.readers.get(out, set()) & ids or into[len(into) - len(outer):] != outer:
            return []
        return outer

    def _proj_outside(self, skip: Skip, inst: Instance) -> bool:
        proj = self.plan.projection_for(skip)
        return proj is not None and not proj.id.startswith(inst.path + ".")

    def unit(self, node: Node, depth: int) -> Instance | None:
        """The outermost self-contained instance below ``depth`` that ``node`` sits in."""
        for path, _ in node.scope[depth:]:
            if self.instances[path].ok:
                return self.instances[path]
        return None

    def groups(self, prefix: str, depth: int, nodes: list[Node]) -> dict[str, Group]:
        """Unit path -> its group: the copies of one `repeat:` inside this scope, alone under their path."""
        units: dict[str, Instance] = {}
        for node in nodes:
            unit = self.unit(node, depth)
            if unit is not None:
                units.setdefault(unit.path, unit)
        by_parent: dict[str, list[Instance]] = {}
        for unit in units.values():
            parent = unit.path.rpartition(".")[0]
            if parent and parent not in self.instances and (parent + ".").startswith(prefix) \
                    and len(parent) >= len(prefix):
                by_parent.setdefault(parent, []).append(unit)
        found: dict[str, Group] = {}
        for parent, members in by_parent.items():
            ids = {n.id for m in members for n in m.nodes}
            if any(path.startswith(parent + ".") and node_id not in ids
                   for node_id, items in self.items.items() for path, _ in items):
                continue
            chain = all(b.input == a.output and not a.outer and self.readers[a.output] <= {n.id for n in b.nodes}
                        for a, b in itertools.pairwise(members))
            group = Group(parent, members, chain)
            found.update({m.path: group for m in members})
        return found

    def flat_call(self, path: str, node: Node, skip: Skip | None) -> Call:
        if skip is not None:
            return _module_call(self.built[path], self.out, skip.loc)
        layer = registry.get(node.type, node.loc)
        if layer.tensor:
            shape = tuple(self.model.get_parameter(path).shape)
            return Call("nn.Parameter", args=[Call("torch.zeros", {"size": Leaf(repr(shape), shape)})])
        return _layer_call(layer, node.meta["args"], self.built[path], self.out, node.loc)

    def template(self, prefix: str, depth: int, nodes: list[Node], input_id: str, output_id: str,
                 taken: set[str], excluded: list[Skip] = ()) -> Template:
        """A scope's ``__init__`` entries and ``forward`` (the model's, or an instance's, less the skips into its
        output that its parent merges: ``excluded``)."""
        parents = {id(skip) for skip in excluded}
        groups = self.groups(prefix, depth, nodes)
        entries: list[tuple[str, Call]] = []
        keys: list[str] = ["@in"]
        hints: dict[str, str] = {"@in": "x"}
        statements: list[tuple[str, str, list[str]]] = []  # (value key, expression, value keys read)
        cur = {input_id: "@in"}
        named: set[str] = set()  # values that always get their own name

        def rel(path: str) -> str:
            return path[len(prefix):]

        def tok(key: str) -> str:
            return f"\x00{keys.index(key)}\x01"

        def new(key: str, hint: str) -> str:
            keys.append(key)
            hints[key] = hint
            return key

        def emit(key: str, hint: str, expression: str, reads: list[str]) -> str:
            statements.append((new(key, hint), expression, reads))
            return key

        def merge_skips(node_id: str, value: str, skips: list[Skip]) -> str:
            for k, skip in enumerate(skips):
                source = cur[skip.source]
                proj = self.plan.projection_for(skip)
                if proj is not None:  # its own name: `out = out + downsample`
                    source = emit(proj.id, rel(proj.id), f"{self.access(rel(proj.id))}({tok(source)})", [source])
                    named.add(proj.id)
                merge = MERGES.get(skip.merge, skip.loc)
                first, second = (source, value) if skip.order == FROM_FIRST else (value, source)
                value = emit(f"{node_id}#{k}", rel(node_id),
                             merge.expression(tok(first), tok(second), dim=skip.meta["axis"] + 1), [value, source])
            return value

        def after(unit: Instance, key: str) -> None:
            """The unit's output, with the skips into it that this class merges (their projections are ours)."""
            outer = [skip for skip in unit.outer if id(skip) not in parents]
            for skip in outer:
                proj = self.plan.projection_for(skip)
                if proj is not None:
                    entries.append((rel(proj.id), self.flat_call(proj.id, self.graph.nodes[skip.target], skip)))
            cur[unit.output] = merge_skips(unit.output, key, outer)

        for node in nodes:
            unit = self.unit(node, depth)
            if unit is not None:
                group = groups.get(unit.path)
                if group is not None and group.chain:
                    if group.path in cur:
                        continue
                    calls = [m.cls.token for m in group.members]
                    numbered = [m.path.rpartition(".")[2] for m in group.members] == \
                        [str(i) for i in range(len(calls))]
                    entries.append((rel(group.path), Call(
                        "nn.Sequential", keyed="" if numbered else "sequential",
                        args=[Call(m.cls.token, dict(m.kwargs)) if numbered else
                              (m.path.rpartition(".")[2], Call(m.cls.token, dict(m.kwargs)))
                              for m in group.members])))
                    source = cur[group.members[0].input]
                    key = emit(group.path, rel(group.path), f"{self.access(rel(group.path))}({tok(source)})",
                               [source])
                    cur[group.path] = key
                    after(group.members[-1], key)
                    continue
                if unit.path in cur:
                    continue
                call = Call(unit.cls.token, dict(unit.kwargs))
                if group is None:
                    entries.append((rel(unit.path), call))
                    where = self.access(rel(unit.path))
                else:
                    index = group.members.index(unit)
                    numbered = [m.path.rpartition(".")[2] for m in group.members] == \
                        [str(i) for i in range(len(group.members))]
                    key = unit.path.rpartition(".")[2]
                    if index == 0:
                        entries.append((rel(group.path), Call(
                            "nn.ModuleList" if numbered else "nn.ModuleDict", keyed="list" if numbered else "dict",
                            args=[Call(m.cls.token, dict(m.kwargs)) if numbered else
                                  (m.path.rpartition(".")[2], Call(m.cls.token, dict(m.kwargs)))
                                  for m in group.members])))
                    where = f"{self.access(rel(group.path))}[{index if numbered else repr(key)}]"
                source = cur[unit.input]
                cur[unit.path] = emit(unit.path, rel(unit.path), f"{where}({tok(source)})", [source])
                after(unit, cur[unit.path])
                continue
            layer = registry.get(node.type, node.loc)
            for path, skip in self.items[node.id]:
                if skip is None or id(skip) not in parents:
                    entries.append((rel(path), self.flat_call(path, node, skip)))
            value = cur[node.inputs[0]]
            if not layer.passthrough:
                if layer.tensor:
                    expression = layer.factory.expression(tok(value), self.access(rel(node.id), parameter=True))
                else:
                    expression = f"{self.access(rel(node.id))}({tok(value)})"
                value = emit(node.id, rel(node.id), expression, [value])
            cur[node.id] = merge_skips(node.id, value, [k for k in self.graph.skips_into(node.id)
                                                        if id(k) not in parents])
        forward = _name(statements, cur[output_id], keys, hints, taken, named)
        chain = bool(statements) and len(statements) == len(entries) and cur[output_id] == statements[-1][0] and all(
            reads == [statements[i - 1][0] if i else "@in"] and expression == f"{self.access(path)}({tok(reads[0])})"
            for i, ((_, expression, reads), (path, _)) in enumerate(zip(statements, entries)))
        return Template(entries, forward, put=any("." in path for path, _ in entries), chain=chain)

    def access(self, path: str, parameter: bool = False) -> str:
        """``self.conv1``, ``self.stage2.bn2``, or ``self.get_submodule('stage1.0')`` where a segment is no name."""
        if all(attr_ok(part) for part in path.split(".")):
            return f"self.{path}"
        return f"self.get_parameter({path!r})" if parameter else f"self.get_submodule({path!r})"


def _name(statements: list[tuple[str, str, list[str]]], result: str, keys: list[str], hints: dict[str, str],
          taken: set[str], named: set[str]) -> list[str]:
    """The forward's lines with readable names: a chain reuses one variable (``out = self.bn1(out)``), the
    input is ``x``, and a value read twice (a skip's source) or a projection's is named after its id."""
    uses: dict[str, list[int]] = {}
    for i, (_, _, reads) in enumerate(statements):
        for key in reads:
            uses.setdefault(key, []).append(i)
    uses.setdefault(result, []).append(len(statements))  # the return reads it
    names = {"@in": "x"}
    holder = {"x": "@in"}
    used = set(taken) | {"x", "out"}

    def dead_after(key: str | None, i: int) -> bool:
        return key is None or max(uses.get(key, [-1])) <= i

    lines = []
    for i, (key, expression, reads) in enumerate(statements):
        later = uses.get(key, [])
        primary = reads[0] if reads else None
        if len(later) != 1 or key in named:  # read twice (a skip's source), or a projection
            name = identifier(hints[key], used)
        elif primary is not None and max(uses[primary]) == i and holder.get(names[primary]) == primary:
            name = names[primary]
        elif dead_after(holder.get("out"), i):
            name = "out"
        else:
            name = identifier(hints[key], used)
        names[key] = name
        holder[name] = key
        text = re.sub("\x00(\\d+)\x01", lambda m: names[keys[int(m.group(1))]], expression)
        lines.append(f"{name} = {text}")
    lines.append(f"return {names[result]}")
    return lines
