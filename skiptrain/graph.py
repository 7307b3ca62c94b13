"""The network as plain data: nodes addressed by id, skip edges, a checked order.

Like ``torch.fx.Graph``: nodes are data, analyses write into ``node.meta``, the graph
checks itself and prints one line per node. Nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import merges
from .errors import ConfigError, Location

INPUT = "input"  # the id of the model's input everywhere in the graph


@dataclass
class Node:
    """One layer: its registry type, concrete arguments and the ids it reads."""

    id: str
    type: str
    args: dict[str, Any]
    inputs: list[str]
    loc: Location | None = None
    arg_locs: dict[str, Location] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # filled by the shape pass
    tie: Any = None  # `tie:` as written: parameters shared with another layer (skiptrain/tying.py)
    scope: tuple[tuple[str, str], ...] = ()  # the block instances it sits in, outermost first: (path, block name)


@dataclass
class Skip:
    """The output of ``source`` merged into the output of the later node ``target``."""

    source: str
    target: str
    merge: str = merges.DEFAULT  # a name in merges.MERGES
    projection: str = "auto"  # the policy for a mismatch
    axis: int | None = None  # sample axis for concat; None: the target's own axis
    loc: Location | None = None
    implicit: bool = False  # from a merge layer's `input:` list
    name: str | None = None  # the full module path its projection takes (a skip's `id:`); None: `<to>_proj`
    order: str = merges.TO_FIRST  # concat's operands: `to_first` cat([to, from]), or `from_first` cat([from, to])
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # filled by the shape pass


@dataclass
class Graph:
    name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    nodes: dict[str, Node]  # declaration order, which is also execution order
    skips: list[Skip]
    output: str
    loc: Location | None = None
    instance_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # block instance path -> its resolved `args:`

    def __post_init__(self) -> None:
        self.check()

    @property
    def order(self) -> list[Node]:
        return list(self.nodes.values())

    def skips_into(self, target: str) -> list[Skip]:
        """Skips merged into ``target``, in the order written (indexed once: graphs are built, not edited)."""
        if getattr(self, "_skips_by_target", None) is None or self._indexed != len(self.skips):
            self._skips_by_target: dict[str, list[Skip]] = {}
            for skip in self.skips:
                self._skips_by_target.setdefault(skip.target, []).append(skip)
            self._indexed = len(self.skips)
        return self._skips_by_target.get(target, [])

    def edges(self) -> list[tuple[str, str, str]]:
        """(source, target, kind) with kind `data` for layer inputs and `skip` for skips."""
        data = [(src, n.id, "data") for n in self.order for src in n.inputs]
        return data + [(s.source, s.target, "skip") for s in self.skips]

    def check(self) -> None:
        """Every reference names an earlier node: no unknown ids, no cycles, no self-loops."""
        position = {INPUT: -1, **{node_id: i for i, node_id in enumerate(self.nodes)}}
        for node in self.order:
            for src in node.inputs:
                if src not in position:
                    raise ConfigError(f"`{node.id}` reads `{src}`, which is not a node", node.loc)
                if position[src] >= position[node.id]:
                    raise ConfigError(f"`{node.id}` reads `{src}`, which does not come before it "
                                      "(that would be a cycle)", node.loc,
                                      "a layer can only take input from earlier layers")
        for skip in self.skips:
            for end in (skip.source, skip.target):
                if end not in position:
                    raise ConfigError(f"skip refers to `{end}`, which is not a node", skip.loc)
            if skip.source == skip.target:
                raise ConfigError(f"skip from `{skip.source}` to itself", skip.loc,
                                  "a skip joins an earlier node to a later one")
            if position[skip.source] > position[skip.target]:
                raise ConfigError(f"skip from `{skip.source}` to `{skip.target}` points backwards: "
                                  f"`{skip.target}` comes first", skip.loc,
                                  f"swap `from` and `to`, or skip from an earlier node into `{skip.target}`")
        if self.output not in self.nodes:
            raise ConfigError(f"output `{self.output}` is not a node", self.loc)

    def unused(self) -> list[str]:
        """Nodes whose value nothing reads (dead branches worth a warning)."""
        used = {src for src, _, _ in self.edges()} | {self.output}
        return [node_id for node_id in self.nodes if node_id not in used]

    def __str__(self) -> str:
        lines = [f"graph {self.name} (input {list(self.input_shape)} {self.input_dtype})"]
        for node in self.order:
            args = ", ".join(f"{k}={v}" for k, v in node.args.items())
            shape = node.meta.get("shape")
            lines.append(f"  {node.id} = {node.type}({', '.join(node.inputs)}"
                         f"{'; ' + args if args else ''})" + (f" -> {list(shape)}" if shape else ""))
            for skip in self.skips_into(node.id):
                lines.append(f"    {skip.merge} <- {skip.source} (projection: {skip.projection})")
        lines.append(f"  output {self.output}")
        return "\n".join(lines)
