"""Expand a model section into a flat graph: blocks, args, ``${...}``, repeat, multipliers.

Ids are hierarchical and stable: block instance ``stage2b`` repeated twice holds
``stage2b.0.conv1`` and ``stage2b.1.conv1``; an unnamed layer gets ``<type>_<k>``,
counted per type within its scope.
"""
from __future__ import annotations

import re
from typing import Any

from .config import LocatedDict, where
from .errors import ConfigError, Location, choices_hint
from .conditions import BlockCopies, ScopeShapes, mentions, present, skip_condition
from .expr import substitute
from .graph import INPUT, Graph, Node, Skip
from .merges import DEFAULT as DEFAULT_MERGE, MERGES, TO_FIRST, skip_order
from .projection_kinds import NONE, policies
from .spec_keys import BLOCK_KEYS, INSTANCE_KEYS, LAYER_META_KEYS, MODEL_KEYS, SKIP_KEYS  # noqa: F401

POLICIES = policies()  # auto, those the projection kinds answer to, none
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32")
WIDTH_ARGS = ("out_channels", "out_features")
MAX_NODES = 100_000  # nested repeats multiply: refuse a graph that would take minutes to check (25x ResNet-1202)
_PREFIX = "."  # key in a scope's local names holding the scope's id prefix (never a valid id)
_ID = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_-]*|0|[1-9][0-9]*)\Z")  # a name, or a Sequential-style index
_ID_HINT = ("ids are names like `conv1`, `stage2` or `block1-0` (letters, digits, _ and -; no dots), or indices "
            "like `0` or `12` (torchvision's `features.3`); `input` is reserved")


def written_id(value: Any, loc: Location | None) -> str:
    """An id as written (`conv1`, `3`, YAML's int `3`) as the string used in paths; refuses the rest."""
    if type(value) is int and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not _ID.match(value) or value == INPUT:
        raise ConfigError(f"invalid id `{value}`", loc, _ID_HINT)
    return value


def check_keys(mapping: dict, allowed: tuple[str, ...], what: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"unknown key `{key}` in {what}", where(mapping, key) and
                              (mapping.where(key, of_key=True) if isinstance(mapping, LocatedDict) else None),
                              choices_hint(key, allowed, "keys"))


def expand(model: dict, strict: bool = False) -> Graph:
    """The model section as a checked ``Graph`` (no shapes yet)."""
    if not (isinstance(model, dict) and mentions(model, "block_count")):
        return _Expander(model, strict).run()
    counting = _Expander(model, strict)  # a first pass counts each block's copies for ${block_count}
    counting.run()
    expander = _Expander(model, strict, counting.copies)
    graph = expander.run()
    if expander.copies != counting.copies:
        raise ConfigError("the number of copies of a block depends on `block_count`", getattr(model, "loc", None),
                          "`block_count` may set layer arguments, not `repeat:` or `when:`")
    return graph


class _Expander(BlockCopies):
    def __init__(self, model: dict, strict: bool, totals: dict[str, int] | None = None):
        if not isinstance(model, dict):
            raise ConfigError("`model:` must be a mapping", where(model))
        check_keys(model, MODEL_KEYS, "model")
        self.model = model
        self.strict = strict
        self.blocks = model.get("blocks") or LocatedDict()
        if not isinstance(self.blocks, dict):
            raise ConfigError("`blocks:` must map block names to definitions", where(model, "blocks"))
        self.width = self._multiplier("width_multiplier")
        self.depth = self._multiplier("depth_multiplier")
        self.nodes: dict[str, Node] = {}
        self.skips: list[Skip] = []
        self.paths: dict[str, str] = {}  # every addressable path -> the node id holding its value
        self.position: dict[str, int] = {INPUT: -1}
        self.removed: set[str] = set()  # paths of layers and instances that `when:` left out
        self.totals = totals or {}  # block name -> its copies in the model (for ${block_count})
        self.copies: dict[str, int] = {}  # block name -> copies expanded so far (${block_index})
        self.scope: tuple[tuple[str, str], ...] = ()  # (instance path, block name) of the blocks being expanded
        self.instance_args: dict[str, dict[str, Any]] = {}  # instance path -> its block `args:`, resolved

    def _multiplier(self, key: str) -> float:
        value = self.model.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1000:
            raise ConfigError(f"`{key}` must be a positive number", where(self.model, key))
        return float(value)

    def policy(self, value: Any, loc: Location | None) -> str:
        if value not in POLICIES:
            raise ConfigError(f"unknown projection policy `{value}`", loc, choices_hint(value, POLICIES, "policies"))
        return NONE if self.strict else value

    def run(self) -> Graph:
        model = self.model
        name = model.get("name", "model")
        if isinstance(name, (dict, list)) or not str(name).isprintable():
            raise ConfigError("`name:` must be one line of printable text", where(model, "name"),
                              "for example `name: resnet20`")
        if any(sep in str(name) for sep in "/\\") or str(name) in (".", ".."):
            raise ConfigError(f"`name: {name}` is a path: a run directory is named `<name>-<time>` inside `out_dir`",
                              where(model, "name"), "use a plain name such as `resnet20`; "
                                                    "to put runs elsewhere, set `train.out_dir` or pass --run-dir")
        shape = input_shape(model)
        dtype = model.get("input_dtype", "float32")
        if dtype not in DTYPES:
            raise ConfigError(f"unknown input_dtype `{dtype}`", where(model, "input_dtype"),
                              choices_hint(dtype, DTYPES, "dtypes"))
        layers = model.get("layers")
        if not isinstance(layers, list) or not layers:
            raise ConfigError("`model.layers` must be a non-empty list of layers", where(model, "layers") or model.loc)
        policy = self.policy(model.get("projection", "auto"), where(model, "projection"))
        out, local = self.expand_list(layers, "", INPUT, {}, (), policy)
        self.add_skips(model.get("skips"), where(model, "skips"), local, {}, policy)
        output = self.resolve(model["output"], local, where(model, "output")) if "output" in model else out
        return Graph(str(name), shape, dtype, self.nodes, self.skips, output, getattr(model, "loc", None), self.instance_args)

    # -- lists of layers and block instances -------------------------------------------------
    def expand_list(self, layers: list, prefix: str, scope_input: str, env: dict,
                    stack: tuple[str, ...], policy: str) -> tuple[str, dict[str, str]]:
        """Expand one `layers:` list; returns its output node id and its local names."""
        declared: dict[str, Location | None] = {}
        ids: dict[int, str] = {}  # position -> its written id, as a string
        kept: dict[int, bool] = {}  # position -> whether its `when:` keeps it
        for i, entry in enumerate(layers):
            if not isinstance(entry, dict):
                raise ConfigError("a layer must be a mapping such as `{type: relu}`", where(layers, i))
            if "block" in entry:
                check_keys(entry, INSTANCE_KEYS, "a block instance")  # a left-out instance is checked too
            kept[i] = present(entry, env, "a block instance" if "block" in entry else "a layer")
            if "id" in entry:
                loc = where(entry, "id")
                layer_id = ids[i] = written_id(substitute(entry["id"], env, loc), loc)
                if layer_id in declared and kept[i]:
                    raise ConfigError(f"id `{layer_id}` is used twice in this scope", loc,
                                      f"the first is at {declared[layer_id]}; ids are unique among the layers "
                                      "that a block keeps (a layer left out by `when:` may share one)")
                if kept[i]:
                    declared[layer_id] = loc
        # a left-out layer's id stands for its input, unless a kept layer has it (torchvision's renumbered
        # Sequential: the depthwise conv is `conv.0` without the expansion conv, `conv.1` with it)
        for i, layer_id in ids.items():
            if not kept[i]:
                declared.setdefault(layer_id, where(layers[i], "id"))
        kept_ids = {ids[i] for i in ids if kept[i]}
        local: dict[str, str] = {INPUT: scope_input, _PREFIX: prefix}
        counters: dict[str, int] = {}
        prev = scope_input
        for i, entry in enumerate(layers):
            if not kept[i]:
                # left out: its id (if any) stands for what it would have read, and the chain goes on from
                # the previous layer that exists (not from a left-out layer's own `input:`)
                passed = self.inputs_of(entry, prev, local, declared)[0]
                if i in ids and ids[i] not in kept_ids:
                    local[ids[i]] = prefix + ids[i]
                    self.paths[prefix + ids[i]] = passed
                    self.removed.add(prefix + ids[i])
                continue
            local_id = ids[i] if i in ids else self.auto_id(entry, env, declared, counters, local)
            if "block" in entry:
                prev = self.expand_instance(entry, local_id, prefix, prev, env, stack, policy, local, declared)
            else:
                prev = self.expand_layer(entry, local_id, prefix, prev, env, policy, local, declared)
            local[local_id] = prefix + local_id
        return prev, local

    def auto_id(self, entry: dict, env: dict, declared: dict, counters: dict[str, int], local: dict) -> str:
        key = "block" if "block" in entry else "type"
        base = substitute(entry.get(key), env, where(entry, key))
        base = re.sub(r"[^A-Za-z0-9_]", "_", str(base)).lower() or "layer"
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base}_{counters[base]}"
            if candidate not in declared and candidate not in local:
                return candidate

    def inputs_of(self, entry: dict, prev: str, local: dict, declared: dict) -> list[str]:
        if "input" not in entry:
            return [prev]
        raw = entry["input"]
        refs = raw if isinstance(raw, list) else [raw]
        loc = where(entry, "input")
        if not refs:
            raise ConfigError("`input:` is an empty list", loc)
        resolved = []
        for ref in refs:
            head = str(ref).split(".")[0]
            if head in declared and head not in local:
                raise ConfigError(f"`input: {ref}` refers to a layer that comes later", loc,
                                  "a layer can only read earlier layers; move it, or use a skip")
            resolved.append(self.resolve(ref, local, loc))
        return resolved

    def expand_layer(self, entry: dict, local_id: str, prefix: str, prev: str, env: dict,
                     policy: str, local: dict, declared: dict) -> str:
        node_id = prefix + local_id
        if "type" not in entry:
            raise ConfigError("a layer needs `type:` (or `block:` for a block instance)", where(entry))
        layer_type = substitute(entry["type"], env, where(entry, "type"))
        if not isinstance(layer_type, str):
            raise ConfigError(f"`type:` must be a layer name, not {layer_type!r}", where(entry, "type"))
        scale = entry.get("scale", True)
        if not isinstance(scale, bool):
            raise ConfigError("`scale:` must be true or false", where(entry, "scale"))
        inputs = self.inputs_of(entry, prev, local, declared)
        shapes = ScopeShapes(self.resolve, local, inputs[0])  # `${in_channels // 2}`: resolved by shapes.infer
        args = {}
        for key, value in entry.items():
            if key in LAYER_META_KEYS:
                continue
            value = substitute(value, env, where(entry, key), shapes)
            if key in WIDTH_ARGS and scale and self.width != 1.0 and type(value) is int and value > 0:
                if value > 2**62:
                    raise ConfigError(f"`{key}` is too large to scale by `width_multiplier`", where(entry, key),
                                      "sizes go up to 2**62")
                value = max(1, round(value * self.width))
            args[key] = value
        arg_locs = {k: where(entry, k) for k in entry}
        if layer_type in MERGES:
            if not isinstance(entry.get("input"), list) or len(inputs) < 2:
                raise ConfigError(f"`{layer_type}` merges several inputs: give `input: [a, b, ...]`",
                                  where(entry, "input") or where(entry),
                                  "or skip into a layer with `skips: [{from: a, to: b}]`")
            keys = MERGES.get(layer_type).keys
            for key in args:
                if key not in keys:
                    raise ConfigError(f"`{layer_type}` takes only "
                                      f"{' and '.join(f'`{k}:`' for k in ('input', *keys))}, not `{key}`",
                                      entry.where(key, of_key=True) if isinstance(entry, LocatedDict) else where(entry),
                                      "set a projection policy on the model, the block, or a skip")
            axis = args.pop("axis", None)
            if axis is not None and type(axis) is not int:
                raise ConfigError("`axis:` must be an integer sample axis", where(entry, "axis"))
            for src in inputs[1:]:
                self.skips.append(Skip(src, node_id, layer_type, policy, axis, where(entry, "input"), implicit=True))
            inputs = inputs[:1]
        elif len(inputs) > 1:
            raise ConfigError(f"`{layer_type}` takes one input, not {len(inputs)}", where(entry, "input"),
                              f"merge several inputs with a merge layer ({', '.join(f'`type: {m}`' for m in MERGES.names())}), "
                              "or use skips")
        self.add_node(Node(node_id, layer_type, args, inputs, where(entry), arg_locs, tie=entry.get("tie"),
                           scope=self.scope))
        return node_id

    def add_node(self, node: Node) -> None:
        if len(self.nodes) >= MAX_NODES:
            raise ConfigError(f"the model expands to more than {MAX_NODES:,} layers", node.loc,
                              "check `repeat:`, `depth_multiplier` and nested repeats: they multiply")
        self.position[node.id] = len(self.nodes)
        self.nodes[node.id] = node
        self.paths[node.id] = node.id

    def expand_instance(self, entry: dict, local_id: str, prefix: str, prev: str, env: dict,
                        stack: tuple[str, ...], policy: str, local: dict, declared: dict) -> str:
        check_keys(entry, INSTANCE_KEYS, "a block instance")
        loc = where(entry, "block")
        name = substitute(entry["block"], env, loc)
        if not isinstance(name, str) or name not in self.blocks:
            raise ConfigError(f"unknown block `{name}`", loc,
                              choices_hint(name, self.blocks, "blocks") if self.blocks else
                              "define it under `model.blocks:`")
        if name in stack:
            raise ConfigError(f"block `{name}` uses itself: {' -> '.join(stack + (name,))}", loc,
                              "blocks may use other blocks, but not recursively")
        block = self.blocks[name]
        if not isinstance(block, dict) or not isinstance(block.get("layers"), list) or not block["layers"]:
            raise ConfigError(f"block `{name}` needs a non-empty `layers:` list", where(self.blocks, name))
        check_keys(block, BLOCK_KEYS, f"block `{name}`")
        if not isinstance(entry.get("first_args") or {}, dict):
            raise ConfigError("`first_args:` must be a mapping of names to values", where(entry, "first_args"))
        repeat = self.repeat(entry, env)
        inner_policy = policy
        for source in (block, entry):
            if "projection" in source:
                inner_policy = self.policy(substitute(source["projection"], env, where(source, "projection")),
                                           where(source, "projection"))
        inputs = self.inputs_of(entry, prev, local, declared)
        if len(inputs) > 1:
            raise ConfigError("a block instance takes one input", where(entry, "input"))
        out = inputs[0]
        base = prefix + local_id
        copies = self.copy_ids(entry, repeat, env)
        for copy in range(repeat if repeat is not None else 1):
            copy_prefix = f"{base}.{copies[copy]}." if repeat is not None else f"{base}."
            copy_env = self.copy_env(name, block, entry, env, local, out, copy, repeat or 1)
            self.instance_args[copy_prefix[:-1]] = {k: copy_env[k] for k in block.get("args") or {} if k in copy_env}
            outer, self.scope = self.scope, self.scope + ((copy_prefix[:-1], name),)
            out = self.expand_block(block, copy_prefix, out, copy_env, stack + (name,), inner_policy)
            self.scope = outer
            self.paths[copy_prefix[:-1]] = out
        self.paths[base] = out
        return out

    def copy_ids(self, entry: dict, repeat: int | None, env: dict) -> list[str]:
        """The name of each repeated copy: `0, 1, ...`, or `copy_id:` computed from `${repeat_index}`
        (torchvision's `denselayer${repeat_index + 1}`, `encoder_layer_${repeat_index}`)."""
        if repeat is None or "copy_id" not in entry:
            if "copy_id" in entry:
                raise ConfigError("`copy_id:` names the copies of a repeated block", where(entry, "copy_id"),
                                  "add `repeat:`, or name this instance with `id:`")
            return [str(k) for k in range(repeat or 1)]
        loc = where(entry, "copy_id")
        names: list[str] = []
        for k in range(repeat):
            copy_env = {**env, "repeat_index": k, "repeat_count": repeat}
            name = written_id(substitute(entry["copy_id"], copy_env, loc), loc)
            if name in names:
                raise ConfigError(f"`copy_id:` gives two copies the id `{name}`", loc,
                                  "use `${repeat_index}` in it, as in `denselayer${repeat_index + 1}`")
            names.append(name)
        return names

    def expand_block(self, block: dict, prefix: str, scope_input: str, env: dict,
                     stack: tuple[str, ...], policy: str) -> str:
        out, local = self.expand_list(block["layers"], prefix, scope_input, env, stack, policy)
        self.add_skips(block.get("skips"), where(block, "skips"), local, env, policy)
        if "output" in block:
            out = self.resolve(block["output"], local, where(block, "output"))
        return out

    # -- references and skips ---------------------------------------------------------------------
    def resolve(self, ref: Any, local: dict[str, str], loc: Location | None) -> str:
        prefix = local[_PREFIX]
        """The node id that a reference (``bn2``, ``stage1.2.bn2``, ``3``, ``input``) names in this scope."""
        if type(ref) is int and ref >= 0:  # YAML reads `input: 3` as an int
            ref = str(ref)
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"`{ref!r}` is not a node id", loc)
        head, _, rest = ref.partition(".")
        if head == INPUT and not rest:
            return local[INPUT]
        if head in local and head not in (INPUT, _PREFIX):
            path = local[head] + ("." + rest if rest else "")
            if path in self.paths:
                return self.paths[path]
        visible = [p[len(prefix):] for p in self.paths if p.startswith(prefix)] + [INPUT]
        if head in local and local[head] in self.removed:
            raise ConfigError(f"unknown id `{ref}`: `{head}` is left out by its `when:`", loc,
                              f"`{head}` itself stands for its input; nothing inside it exists")
        raise ConfigError(f"unknown id `{ref}`", loc, choices_hint(ref, visible, "ids here"))

    def add_skips(self, skips: Any, loc: Location | None, local: dict, env: dict, policy: str) -> None:
        if skips is None:
            return
        if not isinstance(skips, list):
            raise ConfigError("`skips:` must be a list of {from: ..., to: ...}", loc)
        for i, skip in enumerate(skips):
            if not isinstance(skip, dict) or "from" not in skip or "to" not in skip:
                raise ConfigError("a skip needs `from:` and `to:`", where(skips, i),
                                  "for example {from: stem, to: stage1.0.bn2}")
            check_keys(skip, SKIP_KEYS, "a skip")
            condition = skip_condition(skip, env, ScopeShapes(self.resolve, local, None))
            if condition is False:
                continue
            skip = {k: substitute(v, env, where(skip, k)) for k, v in skip.items() if k != "when"} | {"_src": skip}
            raw = skip["_src"]
            if skip["to"] == INPUT:
                raise ConfigError("a skip cannot go into `input`", where(raw, "to"),
                                  "`to:` names the later node whose output receives the skip")
            source = self.resolve(skip["from"], local, where(raw, "from"))
            target = self.resolve(skip["to"], local, where(raw, "to"))
            if self.left_out(skip["to"], local):
                raise ConfigError(f"skip `to: {skip['to']}` names a layer that its `when:` leaves out", where(raw, "to"),
                                  "give the skip the same `when:`, or point it at a layer that exists")
            merge = skip.get("merge", DEFAULT_MERGE)
            MERGES.get(merge, where(raw, "merge"))  # an unknown name: a ConfigError with a did-you-mean
            order = skip_order(merge, skip.get("order", TO_FIRST), where(raw, "order"))
            axis = skip.get("axis")
            if axis is not None and type(axis) is not int:
                raise ConfigError("`axis:` must be an integer sample axis", where(raw, "axis"))
            skip_policy = self.policy(skip["projection"], where(raw, "projection")) if "projection" in skip else policy
            if source == target:
                raise ConfigError(f"skip from `{skip['from']}` to itself", where(skips, i),
                                  "a skip joins an earlier node to a later one")
            if self.position[source] > self.position[target]:
                raise ConfigError(f"skip from `{skip['from']}` to `{skip['to']}` points backwards: "
                                  f"`{skip['to']}` comes before `{skip['from']}`", where(skips, i),
                                  "swap `from` and `to`; skips only go forward (no cycles)")
            name = local[_PREFIX] + written_id(skip["id"], where(raw, "id")) if "id" in skip else None
            self.skips.append(Skip(source, target, merge, skip_policy, axis, where(skips, i), name=name, order=order))
            if condition is not True:  # on shapes: shapes.infer keeps or drops it
                self.skips[-1].meta["when"] = condition

    def left_out(self, ref: Any, local: dict) -> bool:
        head, _, rest = str(ref).partition(".")
        return head in local and head != _PREFIX and local[head] + ("." + rest if rest else "") in self.removed


def input_shape(model: dict) -> tuple[int, ...]:
    if "input" not in model:
        raise ConfigError("`model.input` is missing", getattr(model, "loc", None),
                          "give the shape of one sample, channels first: [3, 32, 32], [1, 40] or [64, 128]")
    raw = model["input"]
    shape = [raw] if type(raw) is int else raw
    if (not isinstance(shape, list) or not shape or len(shape) > 5
            or any(type(d) is not int or not 1 <= d <= 2**31 for d in shape)):
        raise ConfigError(f"`model.input` must be a list of 1 to 5 positive integers, not {raw!r}",
                          where(model, "input"), "the shape of one sample, without the batch: [3, 32, 32]")
    return tuple(shape)
