"""`skiptrain import`, step three: calls of one structure as ONE block definition, a container of copies
as `repeat:`.

Two calls share a definition when they are of one class and their bodies match entry for entry (ids, layer
types, wiring); the values that differ become the block's `args:` (``import_yaml``). With ``unify``, two
bodies of one class that differ by entries that one of them lacks (torchvision's Bottleneck with and without
its `downsample`) share one definition too: the extra entries and the skips of only one kind get
`when: "${downsample}"` / `"${not downsample}"`, so an imported ResNet-50 has one `bottleneck` and
`layer1`..`layer4` are `{block: bottleneck, repeat: N, first_args: {...}}` as in the zoo. A container
(``nn.Sequential``) of copies `0`, `1`, ... of one definition, chained, whose copies after the first are
equal, becomes `repeat:` with `first_args:` for the first.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .import_graph import Call, ImportError_
from .import_scopes import Body, Scopes

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
MARKER = "skiptrain_block"  # the class attribute that names an ejected class's block
NUMBERED = "#"  # the id of an entry of a numbered list in a group's union: each member has its own index


def frozen(value: Any) -> Any:
    """A value as a hashable key that tells 1 from 1.0 and True."""
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, frozen(v)) for k, v in value.items())
    return (type(value).__name__, value)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


@dataclass
class Group:
    """One block definition: the union of its members' entries and skips, and where each member's are."""

    cls: tuple[str, str]
    name: str
    union: list[tuple] = field(default_factory=list)  # entry skeletons
    skips: list[tuple] = field(default_factory=list)  # skip skeletons
    members: list[Body] = field(default_factory=list)
    entry_map: dict[int, list[int]] = field(default_factory=dict)  # id(member) -> union index of each entry
    skip_map: dict[int, list[int]] = field(default_factory=dict)  # id(member) -> union index of each skip
    output: Any = None
    # filled by import_yaml: the argument names, defaults, and each member's argument values
    args: list[str] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    values: dict[int, dict[str, Any]] = field(default_factory=dict)
    render: dict[str, Any] = field(default_factory=dict)


class Blocks:
    """Ids, references and groups of a traced model's bodies (``import_yaml.model`` writes them)."""

    def __init__(self, scopes: Scopes, unify: bool = True):
        self.scopes = scopes
        self.unify = unify
        self.groups: list[Group] = []
        self.names: set[str] = set()
        self.referenced: set = set()  # nodes that an `input:`, a skip or an `output:` names
        self.by_copy: set[tuple] = set()  # (class, entry id, argument) written as `${... block_index ...}`

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
            self.referenced.add(node)
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
    def skeleton(self, body: Body) -> tuple[list[tuple], list[tuple]]:
        """A body's structure: each entry's (id, inputs, axis, kind, type or block), each skip's fields."""
        entries = []
        for entry in body.entries:
            head = (entry.id, tuple(entry.refs or ()), entry.axis)
            if entry.kind == "layer":
                entries.append(head + ("layer", entry.type))
                continue
            child = self.body(entry.call)
            if child.repeat_of is not None:
                entry.kind = "repeat"
                entries.append(head + ("repeat", id(child.repeat_of[0]), child.repeat_of[1], child.repeat_of[2]))
            else:
                entries.append(head + ("block", id(child.group)))
        skips = [tuple(sorted((k, str(v)) for k, v in s.items())) for s in body.skips]
        return entries, skips

    def group(self, call: Call) -> None:
        """Bottom up: each body's group (an existing one it matches or unifies with, or a new one)."""
        for child in call.children:
            self.group(child)
        body = self.body(call)
        entries, skips = self.skeleton(body)
        self._repeat(call, body)
        if call.parent is None or body.repeat_of is not None:
            return
        cls = _family(call.cls)
        # containers of different lengths are different lists, not one list with optional tails; but a
        # numbered list with one more entry (torchvision's expansion conv: `conv.0` only where it expands, the
        # depthwise conv `conv.1` or `conv.0`) is one list with `when:` and `id: "${1 if ... else 0}"`
        unify = self.unify and not issubclass(call.cls, _CONTAINERS)
        numbered = (self.unify and issubclass(call.cls, _CONTAINERS) and not skips and body.output_ref is None
                    and [e.id for e in body.entries] == [str(k) for k in range(len(body.entries))]
                    and all(e.refs is None for e in body.entries))
        if numbered:
            entries = [(NUMBERED,) + e[1:] for e in entries]
        for group in self.groups:
            if group.output != body.output_ref or not _variant(group.cls, cls) or self._uses(body, group, set()):
                continue
            if self._join(group, body, entries, skips, unify or numbered, subset=group.cls != cls or numbered):
                if len(cls[1]) < len(group.cls[1]):  # named after the base class: `BasicBlock`, not its variant
                    group.cls = cls
                    group.name = self._name(call)
                return
        group = Group(cls, self._name(call), output=body.output_ref)
        self.groups.append(group)
        self._join(group, body, entries, skips, unify)

    def _uses(self, body: Body, group: Group, seen: set[int]) -> bool:
        """Whether ``body`` has ``group`` among its blocks, at any depth (a block cannot hold itself)."""
        for entry in body.entries:
            if entry.call is None:
                continue
            child = self.body(entry.call)
            inner = child.repeat_of[0] if child.repeat_of is not None else child.group
            if inner is group:
                return True
            if inner is not None and id(inner) not in seen:
                seen.add(id(inner))
                if any(self._uses(member, group, seen) for member in inner.members):
                    return True
        return False

    def _join(self, group: Group, body: Body, entries: list[tuple], skips: list[tuple], unify: bool,
              subset: bool = False) -> bool:
        """Add ``body`` to ``group`` if its entries match the group's (or, unifying, merge into them)."""
        if group.members and entries == group.union and sorted(skips) == sorted(group.skips):
            union, entry_map = group.union, list(range(len(entries)))
        elif not group.members:
            union, entry_map = list(entries), list(range(len(entries)))
        elif unify:
            merged = _merge(group.union, entries, from_end=entries[0][0] == NUMBERED)
            if merged is None or subset and len(merged[0]) != max(len(group.union), len(entries)):
                return False  # another class: only where one's entries are all in the other's
            if entries[0][0] == NUMBERED and len(merged[0]) > min(len(group.union), len(entries)) + 1:
                return False  # a numbered list: one entry more or less
            union, entry_map, moved = merged
        else:
            return False
        ids = [e[0] for e in union if e[0] is not None and e[0] != NUMBERED]
        if len(ids) != len(set(ids)):
            return False
        if union is not group.union and group.members:
            for member in group.members:
                group.entry_map[id(member)] = [moved[i] for i in group.entry_map[id(member)]]
        group.union = union
        group.entry_map[id(body)] = entry_map
        skip_map = []
        for skip in skips:
            if skip not in group.skips:
                group.skips.append(skip)
            skip_map.append(group.skips.index(skip))
        group.skip_map[id(body)] = skip_map
        group.members.append(body)
        body.group = group
        return True

    def _repeat(self, call: Call, body: Body) -> None:
        """A container of copies `0`, `1`, ... of one block, chained, and nothing else: `repeat:`."""
        entries = body.entries
        if (call.parent is None or not issubclass(call.cls, _CONTAINERS) or not entries or body.skips
                or body.output_ref is not None
                or any(e.kind != "block" or e.refs is not None for e in entries)):
            return
        copy_id = _copy_id([str(e.id) for e in entries])
        if copy_id is False:
            return
        groups = {id(self.body(e.call).group) for e in entries}
        if len(groups) != 1 or self.body(entries[0].call).group is None:
            return
        rest = [self._concrete(self.body(e.call)) for e in entries[1:]]
        if any(v != rest[0] for v in rest):
            return
        body.repeat_of = (self.body(entries[0].call).group, len(entries), copy_id)

    def _concrete(self, body: Body) -> Any:
        """Everything a body's copies must share to be one `repeat:`: its structure and values, recursively
        (less the values written by copy index, which differ between copies by design)."""
        cls = _family(body.call.cls)
        masked = {(entry_id, key) for group_cls, entry_id, key in self.by_copy if _variant(group_cls, cls)}
        return (self.skeleton(body), tuple(
            frozen({k: v for k, v in e.args.items() if (e.id, k) not in masked}) if e.kind == "layer"
            else self._concrete(self.body(e.call)) for e in body.entries))

    def reset(self) -> None:
        """Forget the groups and repeats (ids and references stay), to group again."""
        self.groups, self.names = [], set()
        for body in self.scopes.bodies.values():
            body.group, body.repeat_of = None, None
            for entry in body.entries:
                if entry.kind == "repeat":
                    entry.kind = "block"

    def _name(self, call: Call) -> str:
        """A group's base name (``rename`` numbers them): its class, or what a plain container holds."""
        family = _family(call.cls)
        if family[0] == MARKER:  # an ejected class: its block's name
            return family[1]
        plain = call.cls in _CONTAINERS or call.cls is nn.Module  # named by what they hold: `layer1`, `downsample`
        base = _snake(call.name.split(".")[-1]) if plain else _snake(call.cls.__name__)
        base = re.sub(r"[^A-Za-z0-9_]", "_", base)
        return base if base and not base[0].isdigit() else "block_" + base

    def rename(self) -> None:
        """Final names in the order the groups were made: a base name, then its variants numbered as eject
        numbers its classes (`inverted_residual`, `inverted_residual2`); an ejected `Conv2dNormActivation2`
        counts as a variant of `Conv2dNormActivation`, so a round trip keeps the names."""
        bases = [group.name for group in self.groups]
        taken: set[str] = set()
        for group, base in zip(self.groups, bases):
            stripped = base.rstrip("0123456789_")  # InvertedResidual2 (an ejected class from an older skiptrain)
            if stripped != base and stripped in bases and group.cls[0] != MARKER:
                base = stripped
            name, k = base, 1
            while name in taken:
                k += 1
                name = f"{base}{k}" if base[-1].isalpha() else f"{base}_{k}"
            taken.add(name)
            group.name = name

    def ordered(self) -> list[Group]:
        """The groups, each after the groups its members use (their definitions' arguments come first)."""
        done: list[Group] = []

        def visit(group: Group) -> None:
            if group in done:
                return
            for member in group.members:
                for entry in member.entries:
                    if entry.call is not None:
                        child = self.body(entry.call)
                        visit(child.repeat_of[0] if child.repeat_of is not None else child.group)
            done.append(group)

        for group in self.groups:
            visit(group)
        return done


def _family(cls: type) -> tuple[str, str]:
    """What decides which classes may share a definition: the block an ejected class says it came from
    (``skiptrain_block = "inverted_residual"``, written by `skiptrain eject` on each class of a block's
    structures), else the class's module and name."""
    marker = vars(cls).get(MARKER)
    if isinstance(marker, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", marker):
        return (MARKER, marker)
    return (cls.__module__, cls.__qualname__)


def _variant(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Classes that may share a definition: ejected classes of one block (by their marker); else classes of
    one module where one's name starts with the other's (`BasicBlock`, `BasicBlockDownsample`)."""
    if MARKER in (a[0], b[0]):
        return a == b
    return a[0] == b[0] and (a[1].startswith(b[1]) or b[1].startswith(a[1]))


def _copy_id(ids: list[str]) -> str | None | bool:
    """How the copies of a repeat are named: None for `0, 1, ...`; a `copy_id:` for a numbered name
    (`encoder_layer_${repeat_index}`, `denselayer${repeat_index + 1}`); False for names that are not."""
    if ids == [str(k) for k in range(len(ids))]:
        return None
    parts = [re.fullmatch(r"(.*?)(\d+)(\D*)", i) for i in ids]
    if any(p is None for p in parts) or len({(p.group(1), p.group(3)) for p in parts}) != 1:
        return False
    first = int(parts[0].group(2))
    if [p.group(2) for p in parts] != [str(first + k) for k in range(len(ids))]:
        return False
    prefix, suffix = parts[0].group(1), parts[0].group(3)
    return f"{prefix}${{repeat_index{f' + {first}' if first else ''}}}{suffix}"


def _merge(a: list[tuple], b: list[tuple], from_end: bool = False) -> tuple[list[tuple], list[int], list[int]] | None:
    """``_aligned``, matching from the end where ``from_end`` (a numbered list's extra entry is its first:
    torchvision's expansion conv), so the entry that only some have is the one written with `when:`."""
    if not from_end:
        return _aligned(a, b)
    merged = _aligned(a[::-1], b[::-1])
    if merged is None:
        return None
    union, landed, moved = merged
    last = len(union) - 1
    return union[::-1], [last - i for i in landed[::-1]], [last - i for i in moved[::-1]]


def _aligned(a: list[tuple], b: list[tuple]) -> tuple[list[tuple], list[int], list[int]] | None:
    """The shortest common supersequence of two entry lists (longest common subsequence kept in place):
    the union, where each of ``b``'s entries lands, and where each of ``a``'s moved to; None if nothing
    is shared."""
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = table[i + 1][j + 1] + 1 if a[i] == b[j] else max(table[i + 1][j], table[i][j + 1])
    if table[0][0] == 0:
        return None
    union: list[tuple] = []
    moved, landed = [0] * n, [0] * m
    i = j = 0
    while i < n or j < m:
        if i < n and j < m and a[i] == b[j]:
            moved[i] = landed[j] = len(union)
            union.append(a[i])
            i, j = i + 1, j + 1
        elif j >= m or (i < n and table[i + 1][j] >= table[i][j + 1]):
            moved[i] = len(union)
            union.append(a[i])
            i += 1
        else:
            landed[j] = len(union)
            union.append(b[j])
            j += 1
    return union, landed, moved
