"""`skiptrain import`, step three: calls of one structure as ONE block definition with `args:`, and a
container of equal copies as `repeat:` (with `first_args:` where the first copy differs).

Two calls share a definition when they are of one class and their bodies match entry for entry (ids,
layer types, argument names, wiring); the values that differ between them become the block's `args:`
(named after the layer argument: `out_channels`, `stride`; two of one name get the layer's id), with the
first call's values as defaults. A container (``nn.Sequential``) whose entries are copies `0`, `1`, ... of
one definition, chained, becomes `{id, block, repeat: N, args, first_args}`: an imported ResNet-50 reads
like the zoo's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .conditions import COPY_VARIABLES
from .expr import SHAPE_NAMES
from .import_graph import Call, ImportError_
from .import_scopes import Body, Entry, Scopes

RESERVED = {*COPY_VARIABLES, *SHAPE_NAMES, "shape", "input"}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    return (type(value).__name__, value)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


@dataclass
class Group:
    """One block definition: the calls it stands for, their values, and its arguments."""

    key: Any
    name: str
    members: list[Body] = field(default_factory=list)
    vectors: list[list[Any]] = field(default_factory=list)
    slots: list[tuple[int, Any]] = field(default_factory=list)  # vector position -> (entry index, slot)
    arg_of: dict[int, str] = field(default_factory=dict)  # varying position -> argument name
    defaults: dict[str, Any] = field(default_factory=dict)


class Blocks:
    """The written `model:` section of a traced model (``model()``), built from its ``Scopes``."""

    def __init__(self, scopes: Scopes):
        self.scopes = scopes
        self.groups: dict[Any, Group] = {}
        self.names: set[str] = set()
        self.vector: dict[int, list[Any]] = {}  # id(body) -> its values
        self.layout: dict[int, list[tuple[int, Any]]] = {}

    # -- ids and references --------------------------------------------------------------------
    def body(self, call: Call) -> Body:
        return self.scopes.bodies[id(call)]

    def ref(self, node, call: Call) -> str:
        s = self.scopes
        node = s.real(node)
        if node == s.one_input_of_call(call):
            return "input"
        owner = s.owner.get(node)
        if owner is call:
            return self.local_id(node, call)
        child = owner
        while child is not None and child.parent is not call:
            child = child.parent
        if child is None:
            from .import_scopes import describe

            raise ImportError_(f"`{call.path or '(the model)'}` reads {describe(node)}, which is inside another "
                               "module: skiptrain's blocks see only their own input and layers",
                               None, "pass the value in as the module's input, or return it")
        if node == self.body(child).output:
            return child.name
        return f"{child.name}.{self.ref(node, child)}"

    def local_id(self, node, call: Call) -> str:
        body = self.body(call)
        entry = next((e for e in body.entries if e.node == node), None)
        if entry is None:
            raise ImportError_(f"`{node.name}` is not a layer of `{call.path or '(the model)'}`", None)
        if entry.id is None:
            taken = {e.id for e in body.entries if e.id is not None}
            count = sum(1 for e in body.entries[:body.entries.index(entry) + 1] if e.type == entry.type)
            name = re.sub(r"[^A-Za-z0-9_]", "_", entry.type).lower()
            candidate = f"{name}_{count}" if count > 1 or f"{name}_1" in taken else name
            while candidate in taken:
                candidate += "_"
            entry.id = candidate
        return entry.id

    def link(self, call: Call) -> None:
        """Write every reference of every body as the id path it is in its scope."""
        for child in call.children:
            self.link(child)
        body = self.body(call)
        for entry in body.entries:
            entry.refs = None if entry.inputs is None else [self.ref(n, call) for n in entry.inputs]
        for skip in body.skips:
            skip["from"], skip["to"] = self.ref(skip["from"], call), self.ref(skip["to"], call)
        if not body.entries:
            raise ImportError_(f"module `{call.path or '(the model)'}` ({call.cls.__name__}) computes nothing "
                               "(it returns its input)", None, "a block needs at least one layer")
        last = body.entries[-1].node
        body.output_ref = None if self.scopes.real(body.output) == last else self.ref(body.output, call)

    # -- groups --------------------------------------------------------------------------------
    def group(self, call: Call) -> None:
        """Bottom up: each body's structure (ids, types, wiring; not the values) and its group."""
        for child in call.children:
            self.group(child)
        body = self.body(call)
        skeleton = []
        for entry in body.entries:
            head = (entry.id, tuple(entry.refs or ()), entry.axis)
            if entry.kind == "layer":
                skeleton.append(head + ("layer", entry.type))
                continue
            child = self.body(entry.call)
            if child.repeat_of is not None:
                entry.kind = "repeat"
                skeleton.append(head + ("repeat", child.repeat_of[0].key, child.repeat_of[1]))
            else:
                skeleton.append(head + ("block", child.group.key))
        skips = tuple(tuple(sorted((k, str(v)) for k, v in s.items())) for s in body.skips)
        body_key = (call.cls.__module__, call.cls.__qualname__, tuple(skeleton), skips, body.output_ref)
        self._repeat(call, body)
        if call.parent is None or body.repeat_of is not None:
            return
        group = self.groups.get(body_key)
        if group is None:
            group = self.groups[body_key] = Group(body_key, self._name(call))
        group.members.append(body)
        body.group = group

    def values(self) -> None:
        """Each group's layout (the layer arguments any member writes, in order) and each member's values;
        a member that leaves an argument out has the layer type's default there. Children's groups first."""
        for group in [*self.groups.values(), None]:
            members = group.members if group is not None else [self.body(self.scopes.trace.root)]
            keys: dict[int, list[str]] = {}
            for body in members:
                for index, entry in enumerate(body.entries):
                    if entry.kind == "layer":
                        keys.setdefault(index, [])
                        keys[index] += [k for k in entry.args if k not in keys[index]]
            for body in members:
                vector, layout = [], []
                for index, entry in enumerate(body.entries):
                    if entry.kind == "layer":
                        for key in keys[index]:
                            vector.append(entry.args[key] if key in entry.args else _default(entry.type, key))
                            layout.append((index, key))
                        continue
                    copies = entry.call.children if entry.kind == "repeat" else [entry.call]
                    parts = [("first", copies[0]), ("args", copies[min(1, len(copies) - 1)])] \
                        if entry.kind == "repeat" else [("args", copies[0])]
                    for part, copy in parts:
                        for p, value in enumerate(self.vector[id(self.body(copy))]):
                            vector.append(value)
                            layout.append((index, (part, p)))
                self.vector[id(body)], self.layout[id(body)] = vector, layout
            if group is not None:
                group.vectors = [self.vector[id(b)] for b in members]
                group.slots = self.layout[id(members[0])]

    def _repeat(self, call: Call, body: Body) -> None:
        """A container of copies `0`, `1`, ... of one block, chained, and nothing else: `repeat:`."""
        entries = body.entries
        if (call.parent is None or not issubclass(call.cls, _CONTAINERS) or not entries or body.skips
                or body.output_ref is not None
                or any(e.kind != "block" or e.refs is not None or e.id != str(k) for k, e in enumerate(entries))):
            return
        groups = {id(self.body(e.call).group) for e in entries}
        if len(groups) != 1 or self.body(entries[0].call).group is None:
            return
        rest = [self._concrete(self.body(e.call)) for e in entries[1:]]
        if any(v != rest[0] for v in rest):
            return
        body.repeat_of = (self.body(entries[0].call).group, len(entries))

    def _concrete(self, body: Body) -> Any:
        """Everything a body's copies must share to be one `repeat:`: its entries' values, recursively."""
        return tuple(_frozen(e.args) if e.kind == "layer" else self._concrete(self.body(e.call)) for e in body.entries)

    def _name(self, call: Call) -> str:
        base = _snake(call.name.split(".")[-1]) if issubclass(call.cls, _CONTAINERS) else _snake(call.cls.__name__)
        base = re.sub(r"[^A-Za-z0-9_]", "_", base)
        if not base or base[0].isdigit():
            base = "block_" + base
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    # -- arguments and the written YAML ----------------------------------------------------------
    def finish(self) -> None:
        """Each group's arguments: the positions whose values differ between its calls (children first)."""
        for group in self.groups.values():
            seen: dict[Any, str] = {}
            for pos, column in enumerate(zip(*group.vectors)):
                frozen = tuple(_frozen(v) for v in column)
                if len(set(frozen)) == 1:
                    continue
                if frozen not in seen:
                    seen[frozen] = self._arg_name(group, pos, set(seen.values()))
                    group.defaults[seen[frozen]] = column[0]
                group.arg_of[pos] = seen[frozen]

    def _child_group(self, entry: Entry) -> Group:
        child = self.body(entry.call)
        return child.repeat_of[0] if child.repeat_of is not None else child.group

    def _arg_name(self, group: Group, pos: int, used: set[str]) -> str:
        index, slot = group.slots[pos]
        entry = group.members[0].entries[index]
        base = slot if isinstance(slot, str) else self._child_group(entry).arg_of[slot[1]]
        for name in (base, f"{base}_{entry.id}", *(f"{base}_{k}" for k in range(2, 10_000))):
            name = re.sub(r"[^A-Za-z0-9_]", "_", name)
            if name not in used and name not in RESERVED and not name[0].isdigit():
                return name
        raise AssertionError("unreachable")

    def render(self, body: Body, group: Group | None) -> dict[str, Any]:
        """A body as a `layers:`/`skips:`/`output:` mapping; values where ``group`` has arguments are `${...}`."""
        params = group.arg_of if group is not None else {}
        vector, layout = self.vector[id(body)], self.layout[id(body)]
        at = {slot: pos for pos, slot in enumerate(layout)}

        def value(index: int, slot: Any) -> Any:
            pos = at[(index, slot)]
            return f"${{{params[pos]}}}" if pos in params else _plain(vector[pos])

        layers = []
        for index, entry in enumerate(body.entries):
            out: dict[str, Any] = {}
            if entry.id is not None:
                out["id"] = int(entry.id) if entry.id.isdigit() else entry.id
            if entry.kind == "layer":
                out["type"] = entry.type
                out.update({key: value(index, key) for i, key in layout if i == index})
                if entry.axis is not None:
                    out["axis"] = entry.axis
            else:
                child = self._child_group(entry)
                out["block"] = child.name
                if entry.kind == "repeat":
                    out["repeat"] = self.body(entry.call).repeat_of[1]
                args, first = {}, {}
                for name, p in _first_positions(child).items():
                    rest = value(index, ("args", p))
                    if isinstance(rest, str) and rest.startswith("${") or _frozen(rest) != _frozen(child.defaults[name]):
                        args[name] = rest
                    if entry.kind == "repeat":
                        head = value(index, ("first", p))
                        if _frozen(head) != _frozen(rest):
                            first[name] = head
                if args:
                    out["args"] = args
                if first:
                    out["first_args"] = first
            if entry.refs is not None:
                out["input"] = [_id(r) for r in entry.refs] if len(entry.refs) > 1 else _id(entry.refs[0])
            layers.append(out)
        result: dict[str, Any] = {"layers": layers}
        if body.skips:
            result["skips"] = [{k: _id(v) if k in ("from", "to") else v for k, v in skip.items()
                                if not (k == "merge" and v == "add")} for skip in body.skips]
        if body.output_ref is not None:
            result["output"] = _id(body.output_ref)
        return result

    def model(self, name: str, input_shape: list[int]) -> dict[str, Any]:
        """The `model:` section: the root's body, every group a block."""
        root = self.scopes.trace.root
        self.link(root)
        self.group(root)
        self.values()
        self.finish()
        blocks = {}
        for group in self.groups.values():
            definition: dict[str, Any] = {}
            if group.defaults:
                definition["args"] = {k: _plain(v) for k, v in group.defaults.items()}
            definition.update(self.render(group.members[0], group))
            blocks[group.name] = definition
        body = self.render(self.body(root), None)
        model: dict[str, Any] = {"name": name, "input": list(input_shape), "projection": "none"}
        if blocks:
            model["blocks"] = blocks
        model.update(body)
        return model


def _default(layer_type: str, key: str) -> Any:
    """The value a layer type takes when ``key`` is not written: skiptrain's default, else the constructor's."""
    from .registry import get

    layer = get(layer_type)
    if key in layer.defaults:
        return layer.defaults[key]
    parameter = layer.parameters.get(key)
    return None if parameter is None or parameter.default is parameter.empty else parameter.default


def _first_positions(group: Group) -> dict[str, int]:
    """Each argument of a group and the first vector position it stands for."""
    found: dict[str, int] = {}
    for pos, name in sorted(group.arg_of.items()):
        found.setdefault(name, pos)
    return found


def _id(ref: str) -> Any:
    return int(ref) if ref.isdigit() else ref


def _plain(value: Any) -> Any:
    """A value as YAML writes it: tuples as lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
