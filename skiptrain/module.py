"""Generate the ``torch.nn.Module`` from a planned graph: straight-line Python, printable.

The forward is generated source (print ``model.code``), like ``torch.fx``'s, with two
differences that matter for speed: each block's submodules are looked up once per
call through ``_modules`` (not through ``nn.Module.__getattr__`` per layer), and each
value is dropped after its last use, so long skips hold only what they must.
Parameters live under the node ids: ``stage1.0.conv1.weight``, ``down2.bn2_proj.0.weight``.
"""
from __future__ import annotations

import itertools
import keyword
import linecache
import re
import weakref
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import nn

from . import registry, tying
from .graph import INPUT
from .merges import FROM_FIRST, MERGES
from .shapes import ModelPlan


class SkipNet(nn.Module):
    """A network built from a skiptrain graph. ``code`` holds its generated forward."""

    def __init__(self, modules: dict[str, nn.Module], code: str, meta: dict[str, Any],
                 tensors: dict[str, nn.Parameter] | None = None):
        super().__init__()
        for path, value in [*modules.items(), *(tensors or {}).items()]:
            parent = self
            *scopes, leaf = path.split(".")
            for scope in scopes:
                if scope not in parent._modules:
                    parent.add_module(scope, nn.Module())
                parent = parent._modules[scope]
            if isinstance(value, nn.Parameter):  # a learnable tensor at its node's id (torch.fx's get_attr)
                parent.register_parameter(leaf, value)
            else:
                parent.add_module(leaf, value)
        self.code = code
        self.meta = {"skiptrain": meta}
        self._forward = _compile(self, code, meta["name"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self, x)

    # The generated function cannot be pickled: drop it, and compile `code` again on loading
    # (as torch.fx's GraphModule regenerates its code), so torch.save, pickle and deepcopy work.
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_forward", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._forward = _compile(self, self.code, self.meta["skiptrain"]["name"])


_compiled = itertools.count()


def _compile(owner: nn.Module, code: str, name: str) -> Callable:
    """``code``'s forward, its source kept for tracebacks under a key of its own while ``owner`` lives."""
    # one key per compiled forward (torch.fx's `<eval_with_key>.N`): two models of one name keep their own source
    filename = f"<skiptrain forward of {name} #{next(_compiled)}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    weakref.finalize(owner, linecache.cache.pop, filename, None)
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(code, filename, "exec"), namespace)  # source generated from validated ids only
    return namespace["forward"]


class _Names:
    """Python variable names for node values and module scopes, unique and never keywords."""

    def __init__(self) -> None:
        self.taken = {"self", "x", "torch", "m"}

    def new(self, text: str) -> str:
        base = re.sub(r"\W", "_", text)
        if not base or base[0].isdigit() or keyword.iskeyword(base):
            base = "v_" + base
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def build_module(plan: ModelPlan, device: str | torch.device | None = None) -> SkipNet:
    graph = plan.graph
    modules: dict[str, nn.Module] = {}
    tensors: dict[str, nn.Parameter] = {}
    names = _Names()
    scopes: dict[str, str] = {"": "m"}  # module scope path -> local variable holding its _modules
    scope_lines: list[str] = []
    body: list[tuple[str, list[str]]] = []  # (statement, values it reads)
    values = {INPUT: "x"}

    def scope_var(path: str) -> str:
        if path not in scopes:
            parent, _, child = path.rpartition(".")
            scopes[path] = names.new(path)
            scope_lines.append(f"    {scopes[path]} = {scope_var(parent)}[{child!r}]._modules")
        return scopes[path]

    def call(path: str, argument: str) -> str:
        scope, _, leaf = path.rpartition(".")
        return f"{scope_var(scope)}[{leaf!r}]({argument})"

    def tensor(path: str) -> str:
        """The learnable tensor at ``path``, read from its scope module's parameters."""
        scope, _, leaf = path.rpartition(".")
        parent, _, child = scope.rpartition(".")
        return f"{f'{scope_var(parent)}[{child!r}]' if scope else 'self'}._parameters[{leaf!r}]"

    readers = _reader_counts(plan)
    owned: set[str] = set()  # variables holding a fresh tensor that nothing else refers to
    with torch.device(device) if device is not None else nullcontext():
        for node in graph.order:
            layer = registry.get(node.type, node.loc)
            value = values[node.inputs[0]]
            # `+=` may write into a fresh value only if no other reader sees it, and without a type promotion
            exclusive = readers[node.inputs[0]] == 1 if layer.passthrough else True
            same_dtype = node.meta.get("layer_dtype") == node.meta.get("dtype")
            if not layer.passthrough:
                args = node.meta["args"]
                sole_reader = value in owned and readers[node.inputs[0]] == 1
                if layer.may_run_inplace and "inplace" not in node.args and sole_reader:
                    args = {**args, "inplace": True}  # sole reader of a fresh tensor, as torchvision does
                elif args.get("inplace") and not sole_reader:
                    args = {**args, "inplace": False}  # a written `inplace: true` would change a value still read
                target = names.new(node.id)
                if layer.tensor:  # the tensor lives at the node's id; the node's code applies it
                    built = layer.build(args)
                    tensors[node.id] = built.weight
                    body.append((f"{target} = {built.expression(value, tensor(node.id))}", [value]))
                else:
                    modules[node.id] = layer.build(args)
                    body.append((f"{target} = {call(node.id, value)}", [value]))
                value = target
                if layer.fresh_output:
                    owned.add(target)
            for skip in graph.skips_into(node.id):
                source = values[skip.source]
                proj = plan.projection_for(skip)
                if proj is not None:
                    modules[proj.id] = proj.build()
                    projected = names.new(proj.id)
                    body.append((f"{projected} = {call(proj.id, source)}", [source]))
                    source = projected
                merge = MERGES.get(skip.merge, skip.loc)
                # in place only into a value that keeps its shape: a broadcast that stretches `to` makes a new tensor
                keeps_shape = skip.meta.get("broadcast") not in ("to", "both")
                if merge.in_place and value in owned and exclusive and same_dtype and keeps_shape:  # `out += identity`
                    body.append((f"{value} {merge.in_place} {source}", [value, source]))
                    continue
                merged = names.new(f"{node.id}_{skip.merge}")
                first, second = (source, value) if skip.order == FROM_FIRST else (value, source)
                expression = merge.expression(first, second, dim=skip.meta["axis"] + 1)  # the batch axis comes first
                body.append((f"{merged} = {expression}", [value, source]))
                value = merged
                owned.add(merged)
                exclusive = True
            values[node.id] = value
    tying.share(graph, modules)  # `tie:`: one Parameter under both layers
    output = values[graph.output]
    code = "\n".join(["def forward(self, x):", "    m = self._modules", *scope_lines,
                      *_with_frees(body, output), f"    return {output}", ""])
    meta = {"name": graph.name, "input_shape": list(graph.input_shape), "input_dtype": graph.input_dtype,
            "output_shape": list(plan.output_shape)}
    return SkipNet(modules, code, meta, tensors)


def _reader_counts(plan: ModelPlan) -> dict[str, int]:
    """How many times each node's final value is read: by layers, skips and the output."""
    counts = {INPUT: 0, **{node_id: 0 for node_id in plan.graph.nodes}}
    for node in plan.graph.order:
        for source in node.inputs:
            counts[source] += 1
    for skip in plan.graph.skips:
        counts[skip.source] += 1
    counts[plan.graph.output] += 1
    return counts


def _with_frees(body: list[tuple[str, list[str]]], output: str) -> list[str]:
    """Each statement, followed by `v = None` for values read there for the last time."""
    last_use = {}
    for i, (_, reads) in enumerate(body):
        for name in reads:
            last_use[name] = i
    lines = []
    for i, (statement, reads) in enumerate(body):
        dead = sorted({n for n in reads if last_use[n] == i and n != output})
        lines.append(f"    {statement}" + "".join(f"; {n} = None" for n in dead))
    return lines
