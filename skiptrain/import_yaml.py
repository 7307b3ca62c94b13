"""`skiptrain import`, step four: each block definition's `args:`, and the written `model:` section.

A group's members put values in the same places (a layer argument, a child block's argument); where they
differ the definition takes an argument named after the layer argument (`out_channels`, `stride`; two of one
name get the layer's id: `out_channels_conv3`), with the first member's value as its default. Entries and
skips that only some members have get a flag (`downsample: true`, `when: "${downsample}"`), defaulting to
what most members do. A member without an entry puts no value there (``WILD``): it agrees with anything.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from .conditions import COPY_VARIABLES
from .expr import SHAPE_NAMES
from .import_blocks import NUMBERED, Blocks, Group, frozen
from .import_graph import ImportError_
from .import_scopes import Body, Entry
from .merges import MERGES

RESERVED = {*COPY_VARIABLES, *SHAPE_NAMES, "shape", "input", "not", "and", "or", "true", "false"}
WILD = object()  # no value: the member lacks the entry (or the child block's argument does not apply)


def _default(layer_type: str, key: str) -> Any:
    """The value a layer type takes when ``key`` is not written: skiptrain's default, else the constructor's."""
    from .registry import get

    layer = get(layer_type)
    if key in layer.defaults:
        return layer.defaults[key]
    parameter = layer.parameters.get(key)
    return None if parameter is None or parameter.default is parameter.empty else parameter.default


def _parameters(layer_type: str) -> dict[str, Any]:
    from .registry import get

    return get(layer_type).parameters


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _id(ref: str) -> Any:
    return int(ref) if ref.isdigit() else ref


class Writer:
    """Arguments for every group (children first), then the YAML of every definition and of the model."""

    def __init__(self, blocks: Blocks):
        self.blocks = blocks
        self.by_id: dict[int, Group] = {}
        self.layouts: dict[str, list[tuple[int, Any]]] = {}
        self.exprs: dict[str, dict[tuple[int, Any], Any]] = {}
        self.when: dict[str, dict[tuple[str, int], str]] = {}
        self.ids: dict[str, dict[int, Any]] = {}

    def child_group(self, skeleton: tuple) -> Group:
        return self.by_id[skeleton[4]]

    def entries_of(self, group: Group, body: Body) -> dict[int, Entry]:
        return {u: body.entries[k] for k, u in enumerate(group.entry_map[id(body)])}

    def copies(self, entry: Entry) -> list[Body]:
        calls = entry.call.children if entry.kind == "repeat" else [entry.call]
        return [self.blocks.body(c) for c in calls]

    # -- arguments ---------------------------------------------------------------------------------
    def finish(self, group: Group) -> None:
        """The group's layout, arguments (data and flags), defaults and each member's argument values."""
        self.by_id[id(group)] = group
        layout: list[tuple[int, Any]] = []
        for u, skeleton in enumerate(group.union):
            kind = skeleton[3]
            if kind == "layer":
                keys: list[str] = []
                for member in group.members:
                    entry = self.entries_of(group, member).get(u)
                    keys += [k for k in (entry.args if entry else ()) if k not in keys]
                order = list(_parameters(group.union[u][4]))  # the constructor's order, as a user writes them
                layout += [(u, k) for k in sorted(keys, key=lambda k: order.index(k) if k in order else len(order))]
            else:
                child = self.child_group(skeleton)
                parts = ("first", "args") if kind == "repeat" else ("args",)
                layout += [(u, (part, a)) for part in parts for a in child.args]
        columns = [[self._value(group, member, u, slot) for member in group.members] for u, slot in layout]
        names: set[str] = set()
        data: dict[str, list[Any]] = {}
        exprs: dict[tuple[int, Any], Any] = {}
        for (u, slot), column in zip(layout, columns):
            defined = [v for v in column if v is not WILD]
            if len({frozen(v) for v in defined}) <= 1:
                exprs[(u, slot)] = defined[0] if defined else WILD
                continue
            rule = _by_copy(column) if isinstance(slot, str) and group.members[1:] else None
            if rule is not None:  # stochastic depth rising over the copies: written once
                exprs[(u, slot)] = rule
                self.blocks.by_copy.add((group.cls, group.union[u][0], slot))
                continue
            name = next((n for n, col in data.items() if all(a is WILD or b is WILD or frozen(a) == frozen(b)
                                                              for a, b in zip(col, column))), None)
            if name is None:
                base = slot if isinstance(slot, str) else slot[1]
                name = self._name(base, self._entry_id(group, u), names)
                data[name] = list(column)
            data[name] = [b if a is WILD else a for a, b in zip(data[name], column)]
            exprs[(u, slot)] = f"${{{name}}}"
        flags: dict[str, list[bool]] = {}
        when: dict[tuple[str, int], str] = {}
        presence = [(("entry", u), [u in group.entry_map[id(m)] for m in group.members])
                    for u in range(len(group.union))]
        presence += [(("skip", s), [s in group.skip_map[id(m)] for m in group.members])
                     for s in range(len(group.skips))]
        for where, column in presence:
            if all(column):
                continue
            for flag, col in flags.items():
                if col == column:
                    when[where] = f"${{{flag}}}"
                    break
                if col == [not c for c in column]:
                    when[where] = f"${{not {flag}}}"
                    break
            else:
                base = group.union[where[1]][0] if where[0] == "entry" else None
                if base == NUMBERED:  # `with_conv2d_norm_activation`: named after what the entry is
                    kind = group.union[where[1]][4]
                    base = f"with_{self.by_id[kind].name if isinstance(kind, int) else kind}"
                if base is None:  # a skip, or a merge layer without an id: the residual connection
                    base = "residual" if where[0] == "skip" or group.union[where[1]][4] in MERGES else \
                        f"with_{group.union[where[1]][4]}"
                flag = self._name(str(base) if re.match(r"[A-Za-z_]", str(base)) else f"with_{base}", None, names)
                flags[flag] = column
                when[where] = f"${{{flag}}}"
        group.args = [*data, *flags]
        group.defaults = {n: next(v for v in col if v is not WILD) for n, col in data.items()}
        group.defaults.update({n: Counter(col).most_common(1)[0][0] for n, col in flags.items()})
        for m, member in enumerate(group.members):
            group.values[id(member)] = {**{n: col[m] for n, col in data.items()},
                                        **{n: col[m] for n, col in flags.items()}}
        self.layouts[group.name], self.exprs[group.name], self.when[group.name] = layout, exprs, when
        self.ids[group.name] = {u: self._numbered(group, u, flags) for u, e in enumerate(group.union)
                                if e[0] == NUMBERED}

    def _entry_id(self, group: Group, u: int) -> Any:
        """Entry ``u``'s id as a member writes it (a numbered list's differ: the first member's)."""
        return next(e.id for m in group.members if (e := self.entries_of(group, m).get(u)) is not None)

    def _numbered(self, group: Group, u: int, flags: dict[str, list[bool]]) -> Any:
        """The id of entry ``u`` of a numbered list: its index, or `${1 if flag else 0}` where it shifts."""
        ids = [(m, int(e.id)) for m, member in enumerate(group.members)
               if (e := self.entries_of(group, member).get(u)) is not None]
        values = sorted({i for _, i in ids})
        if len(values) == 1:
            return values[0]
        for flag, column in flags.items():
            for negate in (False, True):
                if len(values) == 2 and all(i == values[1 if column[m] != negate else 0] for m, i in ids):
                    return f"${{{values[1]} if {'not ' if negate else ''}{flag} else {values[0]}}}"
        raise ImportError_(f"the entries of `{group.name}` are numbered in a way no flag explains", None)

    def _value(self, group: Group, member: Body, u: int, slot: Any) -> Any:
        entry = self.entries_of(group, member).get(u)
        if entry is None:
            return WILD
        if isinstance(slot, str):
            return entry.args[slot] if slot in entry.args else _default(entry.type, slot)
        copies = self.copies(entry)
        copy = copies[0] if slot[0] == "first" else copies[min(1, len(copies) - 1)]
        child = self.child_group(group.union[u])
        return child.values[id(copy)].get(slot[1], WILD)

    @staticmethod
    def _name(base: str, entry_id: Any, used: set[str]) -> str:
        for name in (base, f"{base}_{entry_id}", *(f"{base}_{k}" for k in range(2, 10_000))):
            name = re.sub(r"[^A-Za-z0-9_]", "_", name)
            if name not in used and name not in RESERVED and not name[0].isdigit():
                used.add(name)
                return name
        raise AssertionError("unreachable")

    # -- YAML ----------------------------------------------------------------------------------------
    def definition(self, group: Group) -> dict[str, Any]:
        """A group as `args:`/`layers:`/`skips:`/`output:`."""
        exprs, when = self.exprs[group.name], self.when[group.name]
        layers = []
        for u, skeleton in enumerate(group.union):
            member = next(m for m in group.members if u in group.entry_map[id(m)])
            entry = self.entries_of(group, member)[u]
            out: dict[str, Any] = {} if entry.id is None else {"id": _id(entry.id)}
            if u in self.ids[group.name]:
                out["id"] = self.ids[group.name][u]
            if skeleton[3] == "layer":
                out["type"] = entry.type
                out.update({k: _plain(exprs[(v, k)]) for v, k in self.layouts[group.name]
                            if v == u and exprs[(v, k)] is not WILD})
                if entry.axis is not None:
                    out["axis"] = entry.axis
            else:
                out.update(self._instance(group, u, skeleton, entry))
            if entry.refs is not None:
                out["input"] = [_id(r) for r in entry.refs] if len(entry.refs) > 1 else _id(entry.refs[0])
            if ("entry", u) in when:
                out["when"] = when[("entry", u)]
            layers.append(out)
        patterns = {frozenset(group.entry_map[id(m)]) for m in group.members}  # which entries each member has
        _omit_auto_ids(layers, [self._stateless(group, u) for u in range(len(group.union))], patterns)
        result: dict[str, Any] = {}
        if group.args:
            result["args"] = {n: _plain(group.defaults[n]) for n in group.args}
        result["layers"] = layers
        skips = []
        for s in range(len(group.skips)):
            member = next(m for m in group.members if s in group.skip_map[id(m)])
            skip = member.skips[group.skip_map[id(member)].index(s)]
            out = {k: _id(v) if k in ("from", "to") else v for k, v in skip.items()
                   if not (k == "merge" and v == "add")}  # add is the default merge
            if ("skip", s) in when:
                out["when"] = when[("skip", s)]
            skips.append(out)
        if skips:
            result["skips"] = skips
        if group.output is not None:
            result["output"] = _id(group.output)
        return result

    def _stateless(self, group: Group, u: int) -> bool:
        """Whether entry ``u`` is a module without weights or buffers that nothing names by its id."""
        entries = [self.entries_of(group, m).get(u) for m in group.members]
        if any(e is None or e.kind != "layer" or e.node is None or e.node.op != "call_module"
               or e.node in self.blocks.referenced for e in entries):
            return False
        module = self.blocks.scopes.trace.model.get_submodule(str(entries[0].node.target))
        return not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())

    def _instance(self, group: Group, u: int, skeleton: tuple, entry: Entry) -> dict[str, Any]:
        """A block instance (or a repeat) in a definition: its `block:`, `repeat:`, `args:`, `first_args:`."""
        exprs = self.exprs[group.name]
        child = self.child_group(skeleton)
        out: dict[str, Any] = {"block": child.name}
        if skeleton[3] == "repeat":
            out["repeat"] = skeleton[5]
            if skeleton[6] is not None:
                out["copy_id"] = skeleton[6]
        args, first = {}, {}
        for name in child.args:
            rest = exprs[(u, ("args", name))]
            if rest is not WILD and (_param(rest) or frozen(rest) != frozen(child.defaults[name])):
                args[name] = _plain(rest)
            if skeleton[3] == "repeat":
                head = exprs[(u, ("first", name))]
                effective = child.defaults[name] if rest is WILD else rest
                if head is not WILD and frozen(head) != frozen(effective):
                    first[name] = _plain(head)
        if args:
            out["args"] = args
        if first:
            out["first_args"] = first
        return out


def _omit_auto_ids(layers: list[dict[str, Any]], stateless: list[bool], patterns: set[frozenset[int]]) -> None:
    """Leave out the ids that skiptrain would give anyway (``spec.auto_id``: `<type>_<k>` per scope, over the
    entries that `when:` keeps) where nothing hangs on them: `{type: relu}`, not `{id: relu_1, type: relu}`."""
    omitted = {i for i, layer in enumerate(layers) if stateless[i] and isinstance(layer.get("id"), str)
               and "${" not in layer["id"]}
    while True:
        wrong = set()
        for kept in patterns:
            wrong |= _wrong_ids(layers, omitted, kept)
        if not wrong:
            break
        omitted.discard(min(wrong))  # the first: a wrong one shifts the counters of those after it
    for i in omitted:
        del layers[i]["id"]


def _wrong_ids(layers: list[dict[str, Any]], omitted: set[int], kept: frozenset[int]) -> set[int]:
    """The omitted ids that skiptrain's automatic ids would not give back, for one set of kept entries."""
    declared = {str(layer["id"]) for i, layer in enumerate(layers) if "id" in layer and i not in omitted}
    counters: dict[str, int] = {}
    local: set[str] = set()
    wrong = set()
    for i, layer in enumerate(layers):
        if i not in kept:
            continue
        if "id" in layer and i not in omitted:
            local.add(str(layer["id"]))
            continue
        base = re.sub(r"[^A-Za-z0-9_]", "_", str(layer.get("type"))).lower() or "layer"
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base}_{counters[base]}"
            if candidate not in declared and candidate not in local:
                break
        local.add(candidate)
        if i in omitted and candidate != layer["id"]:
            wrong.add(i)
    return wrong


def _by_copy(column: list[Any]) -> str | None:
    """A value that rises linearly over every copy of a block in the model, as torchvision's stochastic
    depth rates do, as the expression that gives exactly those numbers; None otherwise."""
    if any(type(v) is not float for v in column) or column[0] != 0.0:
        return None
    n, last = len(column), column[-1]
    to_last, to_count = "{} * block_index / (block_count - 1)", "{} * block_index / block_count"
    for rate, text in ((last, to_last), (round(last, 12), to_last), (last * n / (n - 1), to_count),
                       (round(last * n / (n - 1), 12), to_count)):
        divisor = n - 1 if "- 1" in text else n
        if all(rate * i / divisor == v for i, v in enumerate(column)):
            return "${" + text.format(repr(rate)) + "}"
    return None


def _param(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${")


def model(blocks: Blocks, name: str, input_shape: list[int]) -> dict[str, Any]:
    """The `model:` section: every group a block definition, the root's body the model's layers."""
    root = blocks.scopes.trace.root
    blocks.link(root)
    blocks.group(root)
    blocks.rename()
    writer = Writer(blocks)
    for group in blocks.ordered():
        writer.finish(group)
    if blocks.by_copy:  # values written by copy do not keep copies apart: group again, and repeat them
        blocks.reset()
        blocks.group(root)
        blocks.rename()
        writer = Writer(blocks)
    groups = blocks.ordered()
    for group in groups:
        writer.finish(group)
    body = blocks.body(root)
    entries, skips = blocks.skeleton(body)
    top = Group(("", ""), "(model)", union=entries, skips=skips, members=[body], output=body.output_ref,
                entry_map={id(body): list(range(len(entries)))}, skip_map={id(body): list(range(len(skips)))})
    writer.finish(top)
    section: dict[str, Any] = {"name": name, "input": list(input_shape), "projection": "none"}
    if groups:
        section["blocks"] = {group.name: writer.definition(group) for group in groups}
    section.update(writer.definition(top))
    return section
