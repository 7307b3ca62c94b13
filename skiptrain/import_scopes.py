"""`skiptrain import`, step two: each module call's nodes as the entries of one `layers:` list.

A call's own nodes become layers (``import_layers`` says which type and arguments), its child calls block
instances, ``+``/``*``/``torch.cat`` of two values a skip into the previous entry (when nothing else reads
it, the way the zoo writes a residual: ``{from: input, to: bn3}``) or a merge layer with ``input: [a, b]``.
References are module paths relative to the scope (``input``, ``conv1``, ``layer1.0.bn2``), so the ids of
the written YAML are the model's attribute names. What crosses a call's boundary other than through its
one input and one output, or has no layer type, is a located error.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from .errors import ConfigError
from .import_graph import ADDS, CATS, MULS, Call, ImportError_, Trace, node_location
from .merges import MERGES
from .registry import LAYERS

MERGE_OF = [(ADDS, "add"), (MULS, "mul"), (CATS, "concat")]


@dataclass
class Entry:
    """One entry of a `layers:` list, its references still nodes (``link`` turns them into ids)."""

    kind: str  # "layer", "block" (a child call) or "repeat" (a child container of equal copies)
    node: fx.Node | None = None  # the value it produces
    id: str | None = None  # a module's attribute name, or a name given when something refers to it
    type: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    inputs: list[fx.Node] | None = None  # None: the previous entry's output
    axis: int | None = None  # a merge layer's axis
    call: Call | None = None
    refs: list[str] | None = None  # `input:` as written (after link)


@dataclass
class Body:
    """The concrete contents of one call: entries, skips into entries, and the output."""

    call: Call
    entries: list[Entry]
    skips: list[dict[str, Any]]
    output: fx.Node
    prefix_ids: dict[fx.Node, str] = field(default_factory=dict)
    output_ref: str | None = None
    group: Any = None
    repeat_of: Any = None  # a chain of copies of one block: (its group, the count, a `copy_id:` or None)


def _functions() -> Any:
    """``import_functions`` (operands, why_not), where it exists."""
    try:
        from . import import_functions
    except ImportError:
        return None
    return import_functions


def _param_of(node: fx.Node) -> fx.Node | None:
    """The model's own tensor (a get_attr node) that ``node`` is, or expands; None otherwise."""
    if node.op == "get_attr":
        return node
    if node.op == "call_method" and node.target in ("expand", "expand_as") and isinstance(node.args[0], fx.Node) \
            and node.args[0].op == "get_attr":
        return node.args[0]
    return None


def _hashable(target: Any) -> bool:
    try:
        hash(target)
    except TypeError:
        return False
    return True


def _tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _nodes(value: Any) -> list[fx.Node]:
    if isinstance(value, fx.Node):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _nodes(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _nodes(v)]
    return []


def describe(node: fx.Node) -> str:
    """A traced node as a user recognises it: `layer1.0.conv1` or `torch.cat` / `x.flatten`."""
    if node.op == "call_module":
        return f"module `{node.target}`"
    if node.op == "call_method":
        return f"`.{node.target}()` (node `{node.name}`)"
    if node.op == "get_attr":
        return f"tensor `{node.target}`"
    target = getattr(node.target, "__name__", str(node.target))
    module = getattr(node.target, "__module__", "") or ""
    return f"`{module + '.' if module and module != '_operator' else ''}{target}` (node `{node.name}`)"


class Scopes:
    """Every call's ``Body`` from one trace; ``layer_of``/``function_of`` come from ``import_layers``."""

    def __init__(self, trace: Trace, layers: Any):
        self.trace, self.layers = trace, layers
        self.values = trace.values
        self.owner: dict[fx.Node, Call] = {}
        self.alias: dict[fx.Node, fx.Node] = {}
        self.bodies: dict[int, Body] = {}
        self.modules_used: dict[str, fx.Node] = {}
        # what import_layers.function_of reads: each tensor's per-sample shape (the batch axis left out)
        self.shapes = {n: tuple(v.shape[1:]) for n, v in self.values.items() if _tensor(v)}
        self._own(trace.root)

    def _own(self, call: Call) -> None:
        for node in self.trace.order[call.start:call.end]:
            self.owner[node] = call
        for child in call.children:
            self._own(child)

    def real(self, node: fx.Node) -> fx.Node:
        while node in self.alias:
            node = self.alias[node]
        return node

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        """The distinct tensors a node reads (a piece of ``x.chunk(2)`` reads ``x``: ``operands``)."""
        found: list[fx.Node] = []
        read = getattr(_functions(), "operands", None)
        for n in (read(node) if read is not None and node.op != "call_module" else _nodes((node.args, node.kwargs))):
            if _tensor(self.values.get(n)):
                if n.op == "get_attr":
                    raise ImportError_(f"{describe(node)} reads the model's tensor `{n.target}` directly; no "
                                       "skiptrain layer here holds it", node_location(node),
                                       "class tokens, position embeddings and layer scales import where they "
                                       "follow torchvision's patterns (`class_token`, `position_embedding`, "
                                       "`layer_scale` layers)")
                if self.real(n) not in found:
                    found.append(self.real(n))
        return found

    def one_input(self, node: fx.Node, what: str) -> fx.Node:
        inputs = self.tensor_inputs(node)
        if len(inputs) != 1:
            raise ImportError_(f"{what} takes {len(inputs)} tensors; a skiptrain layer takes one (merges: `+`, "
                               "`*`, `torch.cat`)", node_location(node))
        return inputs[0]

    # -- one call's body ------------------------------------------------------------------------
    def body(self, call: Call) -> Body:
        hoisted = {}
        for child in call.children:
            hoisted[child.start] = self._hoist(child, call)
            self.body(child)
        entries: list[Entry] = []
        skips: list[dict[str, Any]] = []
        inputs = {self.real(n) for n in call.inputs if _tensor(self.values.get(n))}
        if len(inputs) != 1:
            raise ImportError_(f"module `{call.path or '(the model)'}` ({call.cls.__name__}) is called with "
                               f"{len(inputs)} tensors; a block takes one", self._call_location(call),
                               "a module with several inputs cannot be a block: inline it into its parent")
        scope_input = inputs.pop()
        prev = scope_input
        children = {child.start: child for child in call.children}
        i = call.start
        while i < call.end:
            if i in children:
                child = children[i]
                if hoisted[i] is not None:  # DenseNet's torch.cat(inputs) of the child's list: the parent's
                    prev = self._direct(hoisted[i], call, prev, scope_input, entries, skips) or prev
                out = self._call_output(child)
                if self.real(self.one_input_of_call(child)) != prev:
                    entry = Entry("block", out, child.name, call=child, inputs=[self.one_input_of_call(child)])
                else:
                    entry = Entry("block", out, child.name, call=child)
                entries.append(entry)
                prev = out
                i = child.end
                continue
            node = self.trace.order[i]
            i += 1
            if self.owner.get(node) is not call:
                continue
            made = self._direct(node, call, prev, scope_input, entries, skips)
            if made is not None:
                prev = made
        output = self._call_output(call)
        body = Body(call, entries, skips, output)
        self.bodies[id(call)] = body
        return body

    def _hoist(self, child: Call, parent: Call) -> fx.Node | None:
        """A child called with several tensors (DenseNet's layer takes the list of earlier features) whose
        forward first concatenates them: that concat is the parent's, and its result the child's input."""
        inputs = {self.real(n) for n in child.inputs if _tensor(self.values.get(n))}
        if len(inputs) < 2:
            return None
        readers = {user for n in inputs for user in n.users if child.start <= self.trace.index[user] < child.end}
        if len(readers) != 1:
            return None
        cat = readers.pop()
        if not (_hashable(cat.target) and cat.target in CATS and self.owner.get(cat) is child
                and {self.real(n) for n in _nodes(cat.args[0])} == inputs):
            return None
        self.owner[cat] = parent
        child.inputs = [cat]
        return cat

    def one_input_of_call(self, call: Call) -> fx.Node:
        return next(self.real(n) for n in call.inputs if _tensor(self.values.get(n)))

    def _call_location(self, call: Call):
        node = self.trace.order[call.start] if call.start < len(self.trace.order) else None
        return node_location(node) if node is not None else None

    def _call_output(self, call: Call) -> fx.Node:
        out = call.output
        node = out.node if isinstance(out, fx.Proxy) else out
        if not isinstance(node, fx.Node) or not _tensor(self.values.get(node)):
            raise ImportError_(f"module `{call.path or '(the model)'}` ({call.cls.__name__}) returns "
                               f"{type(self.values.get(node, out)).__name__}, not one tensor",
                               self._call_location(call), "a block (and the model) returns one tensor")
        return self.real(node)

    def _direct(self, node: fx.Node, call: Call, prev: fx.Node, scope_input: fx.Node,
                entries: list[Entry], skips: list[dict[str, Any]]) -> fx.Node | None:
        """The entry (or skip) for one of the call's own nodes; the node now holding the chain's value."""
        value = self.values.get(node)
        if node.op in ("placeholder", "output", "get_attr"):
            return None
        if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node) \
                and node.args[0].op == "call_module" and isinstance(self.values.get(node.args[0]), tuple):
            if node.args[1] != 0 and not node.users:  # `x, _ = attention(...)`: the weights, unread
                return None
            if node.args[1] != 0:  # torch's attention returns (output, weights): the output is the layer's
                raise ImportError_(f"{describe(node)} reads item {node.args[1]} of what {describe(node.args[0])} "
                                   "returns; its skiptrain layer gives only the first", node_location(node))
            self.alias[node] = node.args[0]
            return prev
        if node.op == "call_module":  # attention's (output, weights) too: its getitem 0 is the layer's value
            return self._module(node, call, prev, entries)
        if not _tensor(value):
            return None  # sizes and assertions: what the layers need of them, function_of reads as numbers
        if _param_of(node) is not None:
            return None  # `class_token.expand(n, -1, -1)`: part of the layer that reads it
        if any(_param_of(n) is not None for n in _nodes(node.args)):
            return self._tensor_layer(node, call, prev, entries)
        merge = next((name for targets, name in MERGE_OF if _hashable(node.target) and node.target in targets), None)
        if merge is not None and sum(_tensor(self.values.get(n)) for n in _nodes(node.args)) >= 2:
            return self._merge(node, merge, prev, scope_input, entries, skips)
        found = self.layers.function_of(node, self.shapes)
        if found is None:
            why = getattr(_functions(), "why_not", lambda *a: None)(node, self.shapes)
            raise ImportError_(f"{describe(node)} has no skiptrain layer type{': ' + why if why else ''}",
                               node_location(node), "see docs/layers.md for the layer types; a plugin can "
                                                    "register one (docs/plugins.md)")
        if found[0] == "identity":  # x.contiguous(): the value is its operand's
            self.alias[node] = self.one_input(node, describe(node))
            return prev
        if found[0] == "merge":
            return self._merge(node, found[1], prev, scope_input, entries, skips)
        layer_type, args = found
        source = self.one_input(node, describe(node))
        entries.append(Entry("layer", node, None, layer_type, dict(args), None if source == prev else [source]))
        return node

    def _tensor_layer(self, node: fx.Node, call: Call, prev: fx.Node, entries: list[Entry]) -> fx.Node:
        """A model's own tensor read by ``+`` (a position embedding), ``*`` (a layer scale) or prepended by
        ``torch.cat`` (a class token): the learnable-tensor layer whose id is the tensor's attribute."""
        from .layers.tensors import ClassToken, LayerScale, PositionEmbedding

        args = [n for n in _nodes(node.args) if _tensor(self.values.get(n))]
        params = [n for n in args if _param_of(n) is not None]
        others = [self.real(n) for n in args if _param_of(n) is None]
        if len(params) != 1 or len(others) != 1:
            raise ImportError_(f"{describe(node)} reads the model's tensors in a way no skiptrain layer does",
                               node_location(node))
        param, x = _param_of(params[0]), others[0]
        weight, sample = tuple(self.values[param].shape), tuple(self.values[x].shape[1:])
        layer, layer_args = None, {}
        if _hashable(node.target) and node.target in ADDS and weight == (1, *sample):
            layer = PositionEmbedding
        elif _hashable(node.target) and node.target in MULS:
            dims = [d for d in range(len(sample)) if weight == (sample[d], *(1,) * (len(sample) - d - 1))]
            if dims:
                layer = LayerScale
                dim = dims[0] - len(sample) if dims[0] == len(sample) - 1 and dims[0] else dims[0]
                layer_args = {"dim": dim} if dim else {}
        elif (_hashable(node.target) and node.target in CATS and len(sample) == 2 and weight == (1, 1, sample[-1])
              and args[0] is params[0] and node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) == 1):
            layer = ClassToken
        relative = str(param.target)[len(call.path) + 1:] if call.path else str(param.target)
        if layer is None or "." in relative:
            raise ImportError_(f"{describe(node)} reads the model's tensor `{param.target}` {list(weight)} in a way "
                               "no skiptrain layer does", node_location(node),
                               "learnable tensors import as a position embedding (x + p, p [1, *sample]), a "
                               "layer scale (p * x, p [C, 1, 1]) or a class token (cat([p.expand(n, -1, -1), x], 1)), "
                               "read in the forward of the module that holds them")
        name = next(n for n, t in LAYERS.items() if t.factory is layer)
        entries.append(Entry("layer", node, relative, name, layer_args, None if x == prev else [x]))
        return node

    def _module(self, node: fx.Node, call: Call, prev: fx.Node, entries: list[Entry]) -> fx.Node:
        module = self.trace.model.get_submodule(str(node.target))
        gap = getattr(self.layers, "call_gap", lambda n: None)(node)  # attention called with a mask
        if gap:
            raise ImportError_(f"{describe(node)} ({type(module).__name__}): {gap}", node_location(node))
        inputs = self.tensor_inputs(node)
        # the shape of what the module reads, not of its alias: a concat folded into an earlier one as skips
        # (DenseNet's `x = cat([x, d2])`) stands for that one's node, whose own value lacks the skips
        read = [n for n in _nodes((node.args, node.kwargs)) if _tensor(self.values.get(n))]
        in_shape = self.shapes.get(read[0]) if len(inputs) == 1 and read else None
        try:  # `match` says why no layer type fits; with the input shape it also checks a forward
            found = self.layers.match(module, in_shape) if hasattr(self.layers, "match") else \
                self.layers.layer_of(module)
        except ConfigError as error:
            found, why = None, getattr(error, "reason", error.message)
        else:
            why = None
        if found is None:
            raise ImportError_(f"{describe(node)} ({type(module).__name__}) has no skiptrain layer type"
                               + (f": {why}" if why else ""), node_location(node),
                               "see docs/layers.md; a plugin can register one (docs/plugins.md)")
        layer_type, args = found
        path = str(node.target)
        relative = path[len(call.path) + 1:] if call.path else path
        if "." in relative:
            raise ImportError_(f"{describe(node)} is called from `{call.path or '(the model)'}`, not from its parent "
                               f"module; its id would need a dot", node_location(node),
                               "call submodules from their own parent's forward (an nn.Sequential that is "
                               "called, not indexed)")
        node_id: str | None = relative
        if path in self.modules_used:
            if any(True for _ in module.parameters(recurse=True)) or any(True for _ in module.buffers()):
                raise ImportError_(f"{describe(node)} is called twice: its weights are shared", node_location(node),
                                   "skiptrain shares weights with `tie:`, which import does not write yet")
            node_id = None  # a second call of a module without weights (torchvision's one `relu`): a new layer
        self.modules_used[path] = node
        source = self.one_input(node, describe(node))
        entries.append(Entry("layer", node, node_id, layer_type, dict(args), None if source == prev else [source]))
        return node

    def _merge(self, node: fx.Node, merge: str, prev: fx.Node, scope_input: fx.Node,
               entries: list[Entry], skips: list[dict[str, Any]]) -> fx.Node:
        MERGES.get(merge)
        raw = [self.real(n) for n in _nodes(node.args[0] if merge == "concat" else node.args[:2])]
        mixed = len(raw) != len(_nodes(node.args)) and merge != "concat"
        if mixed or any(not _tensor(self.values.get(n)) for n in raw):
            raise ImportError_(f"{describe(node)} mixes tensors with other values", node_location(node))
        if set(node.kwargs) - {"dim"} or (merge != "concat" and len(node.args) > 2):
            raise ImportError_(f"{describe(node)} takes arguments that skiptrain's `{merge}` has not "
                               f"({', '.join(map(str, node.kwargs)) or 'alpha'})", node_location(node))
        axis = None
        if merge == "concat":
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            rank = self.values[node].dim()
            dim = dim % rank
            if dim == 0:
                raise ImportError_(f"{describe(node)} concatenates along the batch axis", node_location(node))
            axis = dim - 1
        elif self.values[raw[0]].dim() != self.values[raw[1]].dim():
            raise ImportError_(f"{describe(node)} broadcasts tensors of different ranks "
                               f"{list(self.values[raw[0]].shape)} and {list(self.values[raw[1]].shape)}",
                               node_location(node), "skiptrain's merges broadcast samples of one rank")
        if (len(raw) == 2 and prev in raw and prev != scope_input and raw[0] != raw[1]
                and entries and entries[-1].kind == "layer" and self._single_reader(prev, node)):
            other = raw[1] if raw[0] == prev else raw[0]
            skip: dict[str, Any] = {"from": other, "to": prev, "merge": merge}
            if merge == "concat":
                if raw[1] == prev:
                    skip["order"] = "from_first"
                skip["axis"] = axis
            skips.append(skip)
            self.alias[node] = prev
            return prev
        entries.append(Entry("layer", node, None, merge, {}, raw, axis=axis))
        return node

    def _single_reader(self, value: fx.Node, reader: fx.Node) -> bool:
        """Whether ``reader`` is all that reads ``value`` (a skip into it changes it for every reader)."""
        same = [n for n in self.trace.order if self.real(n) == value]  # the value and its aliases
        users = {user for n in same for user in n.users if self.real(user) != value}
        return users == {reader}
