"""`skiptrain import`, step one: trace a PyTorch model with torch.fx and cut the trace into module calls.

The tracer records, for every non-leaf module it traces through, which nodes were created during that
call, what went in and what came out (``Call``): the module hierarchy of the trace, so the written YAML
nests blocks the way the model nests modules and every id is the original's attribute name (the
state-dict keys stay the model's). Leaves are the modules that ``import_layers`` maps to one registered
layer type. Every node's example value is recorded by running the traced graph once, so shape
arithmetic (``x.shape[0]``, ``h // p``) and ``function_of`` see numbers, not proxies.
"""
from __future__ import annotations

import linecache
import operator
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn

from .errors import ConfigError, Location

# Merges of two or more tensors: fx targets -> skiptrain merge names (looked up in merges.MERGES).
ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}
MULS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
CATS = {torch.cat, torch.concat, torch.concatenate}


class ImportError_(ConfigError):  # noqa: N801  (not the builtin ImportError: a user's model, not a module)
    """The model cannot be written in skiptrain's language (or cannot be traced): located at its source line."""

    kind = "import error"


def _at(file: str, line: int | None) -> Location:
    """A source line, the caret under its first character."""
    text = linecache.getline(file, line) if line else ""
    return Location(file, line, len(text) - len(text.lstrip()) + 1 if line else None)


@dataclass
class Call:
    """One call of a non-leaf module during the trace: nodes ``order[start:end]`` were created inside it."""

    path: str
    cls: type
    start: int
    end: int
    inputs: list[fx.Node]
    output: Any
    children: list["Call"] = field(default_factory=list)
    parent: "Call | None" = None

    @property
    def name(self) -> str:
        """The id of this call in its parent's scope: the path relative to the parent's."""
        parent = self.parent.path if self.parent is not None else ""
        return self.path[len(parent) + 1:] if parent else self.path


def _proxies(value: Any) -> list[fx.Proxy]:
    if isinstance(value, fx.Proxy):
        return [value]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _proxies(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _proxies(v)]
    return []


class Tracer(fx.Tracer):
    """fx's tracer with our leaves, recording each non-leaf module call's nodes, input and output."""

    def __init__(self, leaf: Callable[[nn.Module], bool]):
        super().__init__()
        self.record_stack_traces = True
        self.leaf = leaf
        self.order: list[fx.Node] = []
        self.calls: list[Call] = []
        self.where: list[str] = []  # the module paths being traced, innermost last (for a located TraceError)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self.leaf(m)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        self.order.append(node)
        return node

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        path = self.path_of_module(m)
        if self.is_leaf_module(m, path):
            return super().call_module(m, forward, args, kwargs)
        start = len(self.order)
        self.where.append(path)
        out = super().call_module(m, forward, args, kwargs)
        self.where.pop()
        inputs = [p.node for p in _proxies((args, kwargs))]
        self.calls.append(Call(path, type(m), start, len(self.order), inputs, out))
        return out


def user_location(stack: str | None) -> Location | None:
    """The innermost frame of a recorded stack that is not torch's own: the user's source line."""
    if not stack:
        return None
    frames = [line.strip() for line in stack.splitlines() if line.strip().startswith('File "')]
    for frame in reversed(frames):
        file = frame.split('"')[1]
        if "/torch/" not in file and "/skiptrain/" not in file:
            try:
                line = int(frame.split("line ")[1].split(",")[0])
            except (IndexError, ValueError):
                line = None
            return _at(file, line)
    return None


def node_location(node: fx.Node) -> Location | None:
    return user_location(node.meta.get("stack_trace"))


@dataclass
class Trace:
    """A traced model: its graph, the nodes in creation order, the call tree and every node's example value."""

    model: nn.Module
    graph: fx.Graph
    order: list[fx.Node]
    root: Call
    values: dict[fx.Node, Any]
    index: dict[fx.Node, int]


def trace(model: nn.Module, example: torch.Tensor, leaf: Callable[[nn.Module], bool]) -> Trace:
    """Trace ``model`` (eval mode) and record its calls and values; an untraceable model is a located error."""
    tracer = Tracer(leaf)
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx's TraceError, or the model's own code failing on a Proxy
        frames = traceback.extract_tb(error.__traceback__)
        user = [f for f in frames if "/torch/" not in f.filename and "/skiptrain/" not in f.filename]
        loc = _at(user[-1].filename, user[-1].lineno) if user else None
        path = tracer.where[-1] if tracer.where else ""
        what = f"module `{path}` ({type(model.get_submodule(path)).__name__})" if path else \
            f"the model ({type(model).__name__})"
        raise ImportError_(f"torch.fx cannot trace {what}: {type(error).__name__}: {str(error).splitlines()[0]}",
                           loc, "data-dependent Python control flow (`if x.sum() > 0:`, loops over tensor "
                                "values) has no fixed graph; write it with tensor operations, or import the "
                                "submodules that trace") from None
    alive = set(graph.nodes)
    order = [n for n in tracer.order if n in alive]
    index = {n: i for i, n in enumerate(order)}
    calls = []
    for call in tracer.calls:  # creation indices -> indices among the nodes that stayed in the graph
        kept = [index[n] for n in tracer.order[call.start:call.end] if n in index]
        if not kept:
            continue
        call.start, call.end = kept[0], kept[-1] + 1
        calls.append(call)
    placeholders = [n for n in order if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ImportError_(f"the model's forward takes {len(placeholders)} inputs; skiptrain models take one tensor",
                           None, "wrap it in a module whose forward takes one tensor")
    out = next(n for n in order if n.op == "output")
    root = Call("", type(model), 0, len(order), placeholders, out.args[0])
    _nest(root, calls)
    values = _values(model, graph, example)
    _attributes(root, model, order, values, index)
    return Trace(model, graph, order, root, values, index)


def _attributes(call: Call, model: nn.Module, order: list[fx.Node], values: dict[fx.Node, Any],
                index: dict[fx.Node, int]) -> None:
    """Modules that are called only through their children (a plain ``nn.Module`` holding `downsample.0` and
    `downsample.1`, ``for block in self.blocks`` over an ``nn.ModuleList``, ``self.features[0](x)``): a call
    of their own over the nodes from their first child's call to their last, so that every id is one name.
    Its input and output are what crosses it; where it is interleaved with others, import_scopes says so."""
    def head_of(path: str) -> str | None:
        relative = path[len(call.path) + 1:] if call.path else path
        return relative.split(".")[0] if "." in relative else None

    inner = {i for child in call.children for i in range(child.start, child.end)}
    heads: dict[str, list[tuple[int, int, Call | None]]] = {}
    for child in call.children:
        if head_of(child.path) is not None:
            heads.setdefault(head_of(child.path), []).append((child.start, child.end, child))
    for i in range(call.start, call.end):
        if i not in inner and order[i].op == "call_module" and head_of(str(order[i].target)) is not None:
            heads.setdefault(head_of(str(order[i].target)), []).append((i, i + 1, None))
    for head, items in heads.items():
        start, end = min(item[0] for item in items), max(item[1] for item in items)
        mine = [item[2] for item in items if item[2] is not None]
        span = set(range(start, end))
        if any(c not in mine and c.start < end and start < c.end for c in call.children) or any(
                other != head and any(start <= item[0] < end for item in found) for other, found in heads.items()):
            continue
        following = [i for i in range(end, call.end) if i not in inner and order[i].op not in ("call_module", "output")]
        while True:  # a loop's `x = block(x) + x`: the adds after the last block are the loop's too
            span = set(range(start, end))
            reads = {n for i in span for n in order[i].all_input_nodes
                     if index[n] not in span and isinstance(values.get(n), torch.Tensor) and n.op != "get_attr"}
            read_after = [order[i] for i in span if any(index[u] not in span for u in order[i].users)]
            if len(read_after) <= 1 or not following or following[0] != end:
                break
            end = following.pop(0) + 1
        if len(reads) != 1 or len(read_after) > 1:
            continue
        path = f"{call.path}.{head}" if call.path else head
        virtual = Call(path, type(model.get_submodule(path)), start, end, list(reads),
                       read_after[0] if read_after else order[end - 1], children=mine, parent=call)
        for child in mine:
            child.parent = virtual
        call.children = [c for c in call.children if c not in mine] + [virtual]
    call.children.sort(key=lambda c: c.start)
    for child in call.children:
        _attributes(child, model, order, values, index)


def _nest(root: Call, calls: list[Call]) -> None:
    """Build the call tree from the ranges (a call's range holds its children's)."""
    stack = [root]
    # a module whose forward is one call of a child has the child's range: the shorter path is the outer
    for call in sorted(calls, key=lambda c: (c.start, -c.end, c.path.count(".") if c.path else -1)):
        while not (stack[-1].start <= call.start and call.end <= stack[-1].end
                   and (not stack[-1].path or call.path.startswith(stack[-1].path + "."))):
            stack.pop()
        call.parent = stack[-1]
        stack[-1].children.append(call)
        stack.append(call)


def _values(model: nn.Module, graph: fx.Graph, example: torch.Tensor) -> dict[fx.Node, Any]:
    """Every node's value on ``example`` (eval mode, no grad): shapes, the sizes fx left symbolic."""
    values: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            try:
                result = super().run_node(n)
            except Exception as error:
                raise ImportError_(f"running the traced `{n.format_node()}` failed: {type(error).__name__}: "
                                   f"{str(error).splitlines()[0] if str(error) else ''}", node_location(n),
                                   "check --input: it is the shape of one sample, channels first") from None
            values[n] = result
            return result

    with torch.no_grad():
        Recorder(fx.GraphModule(model, graph)).run(example)
    return values
