"""Weight tying declared in YAML: a layer's parameter IS another layer's (one tensor, counted once).

``tie: wte`` on a layer shares its ``weight`` with ``wte.weight``, as GPT-2 and nanoGPT share the
output head's weight with the token embedding; ``tie: {weight: wte.weight}`` names the parameters
(this layer's on the left, ``<id>.<parameter>`` on the right, ids as ``validate`` lists them). One
pass checks every tie once the shapes are known (``check``) and one function makes the modules
share the tensor (``share``), so ``validate``, the built model, the optimizer and the state dict
agree: one ``Parameter``, under both names in the state dict (as torch keeps them), yielded once by
``parameters()``, counted once in the totals. The shared tensor starts with the values of the layer
that declares ``tie:`` (nanoGPT's ``wte.weight = lm_head.weight`` keeps the head's initialization:
a head initialized as an embedding, N(0, 1), would start with huge logits).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import registry
from .errors import ConfigError, Location, choices_hint
from .graph import Graph, Node

HINT = "write `tie: <id>` (this layer's `weight` becomes that layer's `weight`) or `tie: {weight: <id>.weight}`"


def declared(graph: Graph, node: Node) -> dict[str, str]:
    """``tie:`` as {this layer's parameter: ``<id>.<parameter>``}; a malformed one is a located error.

    The short form names a layer (``tie: wte``) or one of its parameters (``tie: wte.weight``)."""
    tie, loc = node.tie, node.arg_locs.get("tie", node.loc)
    if isinstance(tie, str) and tie:
        return {"weight": f"{tie}.weight" if tie in graph.nodes else tie}
    if isinstance(tie, dict) and tie and all(isinstance(k, str) and isinstance(v, str) and v
                                             for k, v in tie.items()):
        return dict(tie)
    raise ConfigError(f"`tie: {tie!r}` of `{node.id}` names no layer", loc, HINT)


def _parameters(graph: Graph, node: Node, loc: Location | None) -> dict[str, torch.Size]:
    """The parameter shapes of a layer, built on the meta device (no memory, as the shape pass does)."""
    layer = registry.get(node.type, node.loc)
    if layer.passthrough or layer.tensor:
        what = "a merge" if layer.passthrough else "a learnable tensor"
        raise ConfigError(f"`{node.id}` is {what} (`{node.type}`): it cannot be tied", loc,
                          "tie layers that own parameters, such as `linear` and `embedding`")
    with torch.device("meta"):
        module = layer.build(node.meta["args"])
    return {name: p.shape for name, p in module.named_parameters()}


def _target(graph: Graph, path: str, loc: Location | None) -> tuple[str, str]:
    """``<id>.<parameter>`` split at the longest id the graph has (ids and parameter names both hold dots)."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        node_id = ".".join(parts[:cut])
        if node_id in graph.nodes:
            return node_id, ".".join(parts[cut:])
    head = path.rsplit(".", 1)[0] if "." in path else path  # `wte.weight` names `wte`; `wte` alone, itself
    raise ConfigError(f"`tie:` names `{path}`, and `{head}` is not a layer", loc,
                      choices_hint(head, graph.nodes, "layers") + "; " + HINT)


def check(graph: Graph) -> None:
    """Every tie names an existing parameter of the same shape; the tied copy is not counted twice.

    Writes ``meta["tied"]`` ({parameter: ``<id>.<parameter>``}) on the declaring node and takes the tied
    parameters out of its ``meta["params"]``."""
    ties = {node.id: declared(graph, node) for node in graph.order if node.tie is not None}
    for node_id, pairs in ties.items():
        node = graph.nodes[node_id]
        loc = node.arg_locs.get("tie", node.loc)
        own = _parameters(graph, node, loc)
        for name, path in pairs.items():
            target_id, target_name = _target(graph, path, loc)
            if target_id == node_id:
                raise ConfigError(f"`{node_id}` is tied to itself", loc, HINT)
            if name not in own:
                raise ConfigError(f"`{node_id}` (`{node.type}`) has no parameter `{name}` to tie", loc,
                                  choices_hint(name, own, "parameters"))
            theirs = _parameters(graph, graph.nodes[target_id], loc)
            if target_name not in theirs:
                raise ConfigError(f"`{target_id}` (`{graph.nodes[target_id].type}`) has no parameter "
                                  f"`{target_name}`", loc, choices_hint(target_name, theirs, "parameters"))
            if target_name in ties.get(target_id, {}):
                raise ConfigError(f"`{path}` is itself tied to `{ties[target_id][target_name]}`", loc,
                                  f"tie `{node_id}` to `{ties[target_id][target_name]}` directly")
            if own[name] != theirs[target_name]:
                raise ConfigError(f"`{node_id}.{name}` has shape {list(own[name])} and `{path}` has "
                                  f"{list(theirs[target_name])}: a tied parameter is one tensor", loc,
                                  "a linear head over an embedding of [V, C] takes `in_features` C and "
                                  "`out_features` V")
            node.meta.setdefault("tied", {})[name] = path
            node.meta["params"] -= own[name].numel()


def share(graph: Graph, modules: dict[str, nn.Module]) -> None:
    """Make each declaring layer's parameter the target's ``Parameter``, holding the declaring layer's values."""
    seeded: set[int] = set()
    for node in graph.order:
        for name, path in node.meta.get("tied", {}).items():
            target_id, target_name = _target(graph, path, node.loc)
            shared = modules[target_id].get_parameter(target_name)
            owner, _, leaf = name.rpartition(".")
            module = modules[node.id].get_submodule(owner)
            if id(shared) not in seeded:  # the first layer tied to it gives its initial values
                with torch.no_grad():
                    shared.copy_(getattr(module, leaf))
                seeded.add(id(shared))
            setattr(module, leaf, shared)


def describe(node: Node) -> str:
    """``weight tied to wte.weight``: what `validate` shows on the declaring layer's row ('' when none)."""
    return ", ".join(f"{name} tied to {path}" for name, path in node.meta.get("tied", {}).items())


def as_json(node: Node) -> dict[str, Any]:
    """``{"tied": {parameter: "<id>.<parameter>"}}`` for a node's JSON entry, ``{}`` when it ties nothing."""
    return {"tied": dict(node.meta["tied"])} if "tied" in node.meta else {}


def summary(graph: Graph) -> list[str]:
    """One `validate` line per tie: the totals above count each shared tensor once."""
    return [f"tied: `{node.id}.{name}` is `{path}` (one parameter, counted once)"
            for node in graph.order for name, path in node.meta.get("tied", {}).items()]


def aliases(model: nn.Module) -> dict[str, str]:
    """{second name: first name} of each tensor that two layers share: the state dict holds it twice."""
    first: dict[int, str] = {}
    found = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            found[name] = first[id(parameter)]
        else:
            first[id(parameter)] = name
    return found


def through_first_name(names: dict[str, str], aliases: dict[str, str]) -> dict[str, str]:
    """A weights file's {model key: file key}, with a tied tensor found under its first name even when the file
    holds it under the second only (safetensors keeps one name of a shared tensor)."""
    names = dict(names)
    for second, first in aliases.items():
        if second in names and first not in names:
            names[first] = names[second]
    return names
