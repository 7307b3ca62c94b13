"""The classes of an ejected file (see ``eject_blocks.py`` for which instances get one): a class per block
and structure, its constructor arguments, its name and its source.
"""
from __future__ import annotations

import inspect
import json
import keyword
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .eject import Call, Leaf, _class_name, _Source
from .eject_blocks import (
    RESERVED,
    Blocks,
    Instance,
    Template,
    _walk,
    attr_ok,
    identifier,
    render,
    render_lines,
)


@dataclass
class BlockClass:
    block: str
    template: Template
    instances: list[Instance]
    params: dict[str, list[Leaf]] = field(default_factory=dict)  # constructor argument -> each instance's value
    slot_text: dict[int, str] = field(default_factory=dict)  # leaf slot -> the expression that fills it
    name: str = ""
    token: str = ""


def _key(block: str, template: Template) -> str:
    """What instances of one class share: the modules and the forward, whatever the argument values."""
    entries = [f"{path}: {render(call, lambda p, leaf: '?')}" for path, call in template.entries]
    return "\n".join([block, *entries, *template.forward])


def _leaves(template: Template) -> list[tuple[str, tuple, Leaf]]:
    return [(path, where, leaf) for path, call in template.entries for where, leaf in _walk(call)]


def classes(blocks: Blocks, taken: set[str]) -> list[BlockClass]:
    """A class per block and structure, for every self-contained instance, innermost blocks first."""
    ok = [inst for inst in blocks.instances.values() if inst.ok]
    needs: dict[str, set[str]] = {inst.block: set() for inst in ok}
    for inst in ok:
        for node in inst.nodes:
            unit = blocks.unit(node, inst.depth + 1)
            if unit is not None:
                needs[inst.block].add(unit.block)
    order: list[str] = []
    while len(order) < len(needs):
        ready = [b for b in needs if b not in order and needs[b] <= set(order)]
        order += ready or [b for b in needs if b not in order]  # (blocks never use themselves: no cycle)
    found: list[BlockClass] = []
    for block in order:
        variants: dict[str, BlockClass] = {}
        mine = [i for i in ok if i.block == block]
        for inst in mine:
            inst.template = blocks.template(inst.path + ".", inst.depth + 1, inst.nodes, inst.input, inst.output,
                                            taken, inst.outer)
        _fill_defaults([inst.template for inst in mine], blocks.out)
        for inst in mine:
            key = _key(block, inst.template)
            if key not in variants:
                variants[key] = BlockClass(block, inst.template, [], token=f"\x02{len(found) + len(variants)}\x03")
            variants[key].instances.append(inst)
            inst.cls = variants[key]
        across: dict[tuple, list[tuple[str, Leaf]]] = {}
        for inst in mine:
            for path, where, leaf in _leaves(inst.template):
                across.setdefault((path, where), []).append((inst.path, leaf))
        for cls in variants.values():
            _parameters(cls, blocks.graph.instance_args, blocks.out, across)
        found += variants.values()
    return found


def _calls(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Call]]:
    if isinstance(node, Call):
        yield path, node
        for i, arg in enumerate(node.args):
            yield from _calls(arg[1] if isinstance(arg, tuple) else arg, (*path, i))


def _fill_defaults(templates: list[Template], out: _Source) -> None:
    """Where one instance's call leaves out an argument that another's gives (a projection's ``stride=1``
    is dropped as a default), write the default, so both share a class and the value becomes an argument."""
    from .eject import _value

    names: dict[tuple, dict[str, None]] = {}
    for template in templates:
        for path, call in template.entries:
            for where, c in _calls(call):
                names.setdefault((path, where, c.callee), {}).update(dict.fromkeys(c.kwargs))
    for template in templates:
        for path, call in template.entries:
            for where, c in _calls(call):
                wanted = names[(path, where, c.callee)]
                if c.factory is None or list(c.kwargs) == list(wanted):
                    continue
                try:
                    params = inspect.signature(c.factory).parameters
                except (TypeError, ValueError):  # no signature to read defaults from
                    continue
                for key in wanted:
                    default = params[key].default if key in params else inspect.Parameter.empty
                    if key not in c.kwargs and default is not inspect.Parameter.empty:
                        try:
                            c.kwargs[key] = Leaf(_value(default, out), default)
                        except TypeError:
                            continue
                c.kwargs = {k: c.kwargs[k] for k in [*wanted, *c.kwargs] if k in c.kwargs}


def _parameters(cls: BlockClass, instance_args: dict[str, dict[str, Any]], out: _Source,
                across: dict[tuple, list[tuple[str, Leaf]]]) -> None:
    """The leaves whose values differ between the class's instances become its constructor arguments:
    the block's `args:` where one gives the values (``planes``, ``planes * 4``), else the layer's argument.
    ``across``: each leaf's values in every instance of the block, whatever its class."""
    slots = [_leaves(inst.template) for inst in cls.instances]
    declared: dict[str, list[Any]] = {}
    for inst in cls.instances:
        for name, value in instance_args.get(inst.path, {}).items():
            declared.setdefault(name, []).append(value)
    declared = {k: v for k, v in declared.items() if len(v) == len(cls.instances) and k.isidentifier()
                and k not in RESERVED and not keyword.iskeyword(k)}
    used = set(RESERVED) | set(declared)
    found: dict[tuple[str, ...], str] = {}
    params: dict[str, list[Leaf]] = {}
    for j, (path, where, _) in enumerate(slots[0]):
        leaves = [s[j][2] for s in slots]
        texts = tuple(leaf.text for leaf in leaves)
        if len(set(texts)) == 1:
            # the same in every copy of this class, but set by a block argument across the block's classes
            # (`out_channels: ${channels}`: 32 in stage1's copies, 64 in stage2): written as that argument
            seen = across.get((path, where), [])
            values = [leaf.value for _, leaf in seen]
            if len({repr(v) for v in values}) > 1 and all(p in instance_args for p, _ in seen):
                text = next((t for name in declared for t in [_expression(
                    name, [instance_args[p].get(name) for p, _ in seen], values)] if t), "")
                if text:
                    name = re.match(r"\w+", text).group()
                    params.setdefault(name, [Leaf(_literal(v, out), v) for v in declared[name]])
                    cls.slot_text[j] = text
            continue
        if texts not in found:
            match = next(((name, text) for name, values in declared.items()
                          for text in [_expression(name, values, [leaf.value for leaf in leaves])] if text), None)
            if match is not None:
                found[texts] = match[1]
                params.setdefault(match[0], [Leaf(_literal(v, out), v) for v in declared[match[0]]])
            else:
                label = next((w for w in reversed(where) if isinstance(w, str)), "arg")
                if label == "size" and dict(cls.template.entries)[path].callee == "nn.Parameter":
                    label = "shape"  # a learnable tensor's shape: `layer_scale_shape`
                name = label if label not in used and label.isidentifier() else identifier(f"{path}_{label}", used)
                used.add(name)
                found[texts] = name
                params[name] = leaves
        cls.slot_text[j] = found[texts]
    inputs = [k for k in params if k not in declared and k in ("in_channels", "in_features")]  # torchvision's first
    order = [*inputs, *(k for k in declared if k in params), *(k for k in params if k not in declared and k not in inputs)]
    cls.params = {name: params[name] for name in order}
    for i, inst in enumerate(cls.instances):
        inst.kwargs = {name: leaves[i] for name, leaves in cls.params.items()}


def _literal(value: Any, out: _Source) -> str:
    from .eject import _value

    try:
        return _value(value, out)
    except TypeError:
        return repr(value)


def _expression(name: str, args: list[Any], values: list[Any]) -> str:
    """``name`` (or ``name * 4``, ``name // 2``) where it gives every instance's value, else ''."""
    if all(type(a) is type(v) and a == v for a, v in zip(args, values)):
        return name
    if not all(type(a) is int and type(v) is int and a > 0 and v > 0 for a, v in zip(args, values)):
        return ""
    for k in {values[0] // args[0], args[0] // values[0]} - {0, 1}:
        if all(a * k == v for a, v in zip(args, values)):
            return f"{name} * {k}"
        if all(a // k == v and a % k == 0 for a, v in zip(args, values)):
            return f"{name} // {k}"
    return ""


def name_classes(found: list[BlockClass], taken: set[str]) -> None:
    """``Bottleneck`` for a block's commonest structure; the others say what they add (``BottleneckDownsample``),
    what differs (``ConvBnActReLU``) or what they lack (``ConvBnActWithoutAct``), else are numbered."""
    names: dict[str, str] = {}  # token -> name, for the blocks named so far (those inside come first)
    by_block: dict[str, list[BlockClass]] = {}
    for cls in found:
        by_block.setdefault(cls.block, []).append(cls)
    for block, variants in by_block.items():
        base = _class_name(block)
        main = max(variants, key=lambda c: len(c.instances))
        theirs = dict(main.template.entries)
        for k, cls in enumerate([main, *(v for v in variants if v is not main)]):
            mine = dict(cls.template.entries)
            extra = [p for p in mine if p not in theirs and p.isidentifier()]
            changed = [mine[p].callee.rpartition(".")[2] for p in mine if p in theirs
                       and mine[p].callee != theirs[p].callee and mine[p].callee not in names]  # a torch class
            missing = [p for p in theirs if p not in mine and p.isidentifier()]
            candidates = [""] if cls is main else [
                *([_class_name("_".join(extra))] if extra else []), *([changed[0]] if changed else []),
                *(["Without" + _class_name("_".join(missing))] if missing else []), str(k + 1)]
            suffix = next((c for c in candidates if base + c not in taken), candidates[-1])
            cls.name = identifier(base + suffix, taken)
            names[cls.token] = cls.name


def class_source(cls: BlockClass) -> str:
    """The class of one block structure: constructor arguments, ``__init__`` and ``forward``. One whose modules
    are numbered ``0, 1, ...`` is an ``nn.Sequential`` (as torchvision's ``Conv2dNormActivation``), without a
    forward of its own when it only chains them."""
    positions = {(path, where): j for j, (path, where, _) in enumerate(_leaves(cls.template))}
    args = "".join(f", {name}{_annotation([leaf.value for leaf in leaves])}" for name, leaves in cls.params.items())
    numbered = bool(cls.template.entries) and all(
        path == str(i) and call.callee != "nn.Parameter" for i, (path, call) in enumerate(cls.template.entries))
    entries = []
    for path, call in cls.template.entries:
        def text(where: tuple, leaf: Leaf, path: str = path) -> str:
            return cls.slot_text.get(positions[(path, where)], leaf.text)
        entries.append((path, render_lines(call, text, " " * (12 if numbered else 8))))
    forward = cls.template.forward
    if numbered:
        lines = [f"def __init__(self{args}) -> None:", "    super().__init__(", *(f"        {c}," for _, c in entries),
                 "    )"]
        forward = [] if cls.template.chain else [re.sub(r"self\.get_submodule\('(\d+)'\)", r"self[\1]", line)
                                                 for line in forward]
    else:
        lines = [f"def __init__(self{args}) -> None:", "    super().__init__()",
                 *(f"    {_assign(path, call)}" for path, call in entries)]
    if forward:
        lines += ["", "def forward(self, x: torch.Tensor) -> torch.Tensor:", *(f"    {line}" for line in forward)]
    body = "\n".join(f"    {line}" if line else "" for line in lines)
    base = "nn.Sequential" if numbered else "nn.Module"
    # the block it came from, which `skiptrain import` reads: the classes of one block's structures are one
    # definition again, under the block's name, so import -> eject -> import gives the same YAML
    marker = f"    skiptrain_block = {json.dumps(cls.block)}\n"
    return f'class {cls.name}({base}):\n    """{_docstring(cls)}"""\n\n{marker}\n{body}\n\n\n'


def _assign(path: str, call: str) -> str:
    """``self.conv1 = ...``; ``self.add_module('0', ...)`` for a key that is no attribute name; `_put` for a path."""
    if attr_ok(path):
        return f"self.{path} = {call}"
    if "." not in path:
        method = "register_parameter" if call.startswith("nn.Parameter(") else "add_module"
        return f"self.{method}({path!r}, {call})"
    return f"_put(self, {path!r}, {call})"


def model_body(template: Template) -> list[str]:
    """The model class's ``__init__`` lines: every value written out."""
    return [_assign(path, render_lines(call, lambda _, leaf: leaf.text, "        ")) for path, call in template.entries]


def _annotation(values: list[Any]) -> str:
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        return ": bool"
    if kinds <= {int, float} and bool not in kinds:
        return ": int" if kinds == {int} else ": float"
    if len(kinds) == 1 and kinds & {str, tuple, list}:
        return f": {kinds.pop().__name__}"
    return ""


def _docstring(cls: BlockClass) -> str:
    """Where the class came from: the block's lines in the YAML, and the instances built from it."""
    locs = [n.loc for inst in cls.instances for n in inst.nodes if n.loc is not None and n.loc.line]
    direct = [n.loc for inst in cls.instances for n in inst.nodes
              if n.scope and n.scope[-1][0] == inst.path and n.loc is not None and n.loc.line]
    where = ""
    if direct:
        lines = sorted(loc.line for loc in direct)
        span = f"line {lines[0]}" if lines[0] == lines[-1] else f"lines {lines[0]}-{lines[-1]}"
        where = f" ({Path(direct[0].file).name}, {span})"
    elif locs:
        where = f" (in {Path(locs[0].file).name})"
    paths = [inst.path for inst in cls.instances]
    shown = ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
    return f"Block `{cls.block}`{where}: {shown}."
