"""Fuzzing strategies for tests/test_fuzz.py: small graphs from scratch, and example YAML files edited as text."""
from __future__ import annotations

from hypothesis import note
from hypothesis import strategies as st

from skiptrain.merges import MERGES as MERGE_REGISTRY
from skiptrain.projection_kinds import policies

from .conftest import CONFIGS, EXAMPLES

# the registries' names (every one valid); the fuzz draws invalid ones from other lists
MERGES = list(MERGE_REGISTRY.names())
POLICIES = list(policies())
ORDERS = ["to_first", "from_first"]


def _pick(draw, items):
    return items[draw(st.integers(0, len(items) - 1))]


# -- graphs from scratch ---------------------------------------------------------------------------

small = st.integers(1, 12)
kernel = st.integers(1, 4)
axes = st.integers(-2, 2)
windows = st.integers(1, 3) | st.lists(st.integers(1, 3), min_size=2, max_size=2)
inits = st.sampled_from(["zeros", "ones", "normal", "trunc_normal", 0.5, "1e-6", "twos"])


def _layer(kind: str, required: dict, optional: dict):
    return st.fixed_dictionaries({"type": st.just(kind), **required}, optional=optional)


def _conv(n: int):
    sizes = kernel | st.lists(kernel, min_size=n, max_size=n)
    return _layer(f"conv{n}d", {"out_channels": small, "kernel_size": sizes},
                  {"stride": st.integers(1, 3), "padding": st.integers(0, 2) | st.sampled_from(["same", "valid"]),
                   "dilation": st.integers(1, 2), "groups": st.integers(1, 2), "bias": st.booleans(),
                   "padding_mode": st.sampled_from(["zeros", "reflect", "circular", "replicate"])})


LAYERS = {
    "conv1d": _conv(1),
    "conv2d": _conv(2),
    "linear": _layer("linear", {"out_features": st.integers(1, 24)}, {"bias": st.booleans()}),
    "relu": _layer("relu", {}, {"inplace": st.booleans()}),
    "gelu": _layer("gelu", {}, {"approximate": st.sampled_from(["none", "tanh"])}),
    "batchnorm1d": _layer("batchnorm1d", {}, {"affine": st.booleans(), "track_running_stats": st.booleans()}),
    "batchnorm2d": _layer("batchnorm2d", {}, {"momentum": st.floats(0, 1), "eps": st.floats(1e-6, 1e-2)}),
    "layernorm": _layer("layernorm", {}, {"elementwise_affine": st.booleans(), "bias": st.booleans()}),
    "maxpool2d": _layer("maxpool2d", {"kernel_size": kernel},
                        {"stride": st.integers(1, 3), "padding": st.integers(0, 1), "ceil_mode": st.booleans()}),
    "avgpool2d": _layer("avgpool2d", {"kernel_size": kernel}, {"stride": st.integers(1, 2)}),
    "adaptive_avgpool2d": _layer("adaptive_avgpool2d", {"output_size": st.integers(1, 4)}, {}),
    "global_avgpool": _layer("global_avgpool", {}, {}),
    "flatten": _layer("flatten", {}, {"start_dim": st.integers(-2, 3), "end_dim": st.integers(-2, 3)}),
    "self_attention": _layer("self_attention", {}, {"num_heads": st.integers(1, 4), "bias": st.booleans()}),
    "dropout": _layer("dropout", {}, {"p": st.floats(0, 1)}),
    "identity": _layer("identity", {}, {}),
    "mean": _layer("mean", {"dim": st.integers(-3, 3) | st.lists(st.integers(-2, 2), min_size=1, max_size=2)},
                   {"keepdim": st.booleans()}),
    "transpose": _layer("transpose", {"dims": st.lists(st.integers(-3, 3), min_size=2, max_size=2)}, {}),
    "permute": _layer("permute", {"dims": st.permutations([0, 1, 2])}, {}),
    "reshape": _layer("reshape", {"shape": st.lists(st.integers(-1, 16), min_size=1, max_size=3)}, {}),
    "upsample": _layer("upsample", {"scale_factor": st.integers(1, 2)},
                       {"mode": st.sampled_from(["nearest", "linear"])}),
    "embedding": _layer("embedding", {"num_embeddings": st.integers(1, 12), "embedding_dim": st.integers(1, 12)}, {}),
    "conv3d": _conv(3),
    "conv_transpose2d": _layer("conv_transpose2d", {"out_channels": small, "kernel_size": kernel},
                               {"stride": st.integers(1, 2), "output_padding": st.integers(0, 1)}),
    "groupnorm": _layer("groupnorm", {"num_groups": st.integers(1, 3)}, {"affine": st.booleans()}),
    "instancenorm1d": _layer("instancenorm1d", {}, {"affine": st.booleans()}),
    "batchnorm3d": _layer("batchnorm3d", {}, {}),
    "maxpool1d": _layer("maxpool1d", {"kernel_size": kernel}, {"stride": st.integers(1, 2)}),
    "avgpool1d": _layer("avgpool1d", {"kernel_size": kernel}, {"ceil_mode": st.booleans()}),
    "adaptive_maxpool1d": _layer("adaptive_maxpool1d", {"output_size": st.integers(1, 4)}, {}),
    "softmax": _layer("softmax", {}, {"dim": st.integers(-2, 2)}),
    "leakyrelu": _layer("leakyrelu", {}, {"negative_slope": st.floats(0, 1), "inplace": st.booleans()}),
    "hardtanh": _layer("hardtanh", {}, {"inplace": st.booleans()}),
    "prelu": _layer("prelu", {}, {}),
    "silu": _layer("silu", {}, {"inplace": st.booleans()}),
    "transformer_encoder_layer": _layer("transformer_encoder_layer", {"nhead": st.integers(1, 2)},
                                        {"dim_feedforward": st.integers(1, 16), "dropout": st.just(0.0),
                                         "norm_first": st.booleans()}),
    "pixel_shuffle": _layer("pixelshuffle", {"upscale_factor": st.integers(1, 2)}, {}),
    "unflatten": _layer("unflatten", {"dim": st.integers(-1, 2), "unflattened_size": st.lists(
        st.integers(-1, 4), min_size=1, max_size=3)}, {}),
    # the layers for modern architectures (issue 14): indexing, learnable tensors, torchvision's blocks
    "select": _layer("select", {"index": st.integers(-2, 3)}, {"dim": axes}),
    "slice": _layer("slice", {}, {"start": st.integers(-3, 3), "end": st.none() | st.integers(-2, 6),
                                  "step": st.integers(1, 3), "dim": axes}),
    "chunk": _layer("chunk", {"chunks": st.integers(1, 3), "index": st.integers(0, 2)}, {"dim": axes}),
    "split": _layer("split", {"sizes": st.integers(1, 4) | st.lists(st.integers(1, 6), min_size=1, max_size=3),
                              "index": st.integers(0, 2)}, {"dim": axes}),
    "roll": _layer("roll", {"shifts": st.integers(-3, 3), "dims": axes}, {}),
    "window_partition": _layer("window_partition", {"window_size": windows}, {}),
    "window_reverse": _layer("window_reverse", {"window_size": windows,
                                                "size": st.lists(st.integers(1, 8), min_size=2, max_size=2)}, {}),
    "window_attention": _layer("window_attention", {"window_size": windows, "num_heads": st.integers(1, 2)},
                               {"shift_size": st.integers(0, 2), "size": st.lists(st.integers(2, 8), min_size=2,
                                                                                  max_size=2)}),
    "channel_shuffle": _layer("channel_shuffle", {"groups": st.integers(1, 3)}, {}),
    "class_token": _layer("class_token", {}, {"init": inits}),
    "position_embedding": _layer("position_embedding", {}, {"init": inits, "std": st.floats(0.01, 1)}),
    "layer_scale": _layer("layer_scale", {}, {"dim": axes, "init": inits}),
    "stochastic_depth": _layer("stochastic_depth", {"p": st.floats(0, 1)}, {"mode": st.sampled_from(["row", "batch"])}),
    "drop_block2d": _layer("drop_block2d", {"p": st.floats(0, 1), "block_size": st.integers(1, 3)}, {}),
    "squeeze_excitation": _layer("squeeze_excitation", {"squeeze_channels": st.integers(1, 8)},
                                 {"scale_activation": st.sampled_from(["sigmoid", "hardsigmoid"])}),
    "conv2d_norm_activation": _layer("conv2d_norm_activation", {"out_channels": small},
                                     {"kernel_size": st.integers(1, 3), "stride": st.integers(1, 2),
                                      "activation_layer": st.sampled_from(["relu", "hardswish", None]),
                                      "norm_layer": st.sampled_from(["batchnorm2d", None, {"type": "batchnorm2d",
                                                                                           "eps": 0.001}])}),
    "mlp": _layer("mlp", {"hidden_channels": st.lists(st.integers(1, 8), min_size=1, max_size=3)},
                  {"activation_layer": st.sampled_from(["gelu", "relu"]), "dropout": st.just(0.0)}),
}
# what usually fits a sample of each rank (the rest is drawn now and then, to be refused)
BY_RANK = {
    1: ["linear", "relu", "gelu", "dropout", "layernorm", "batchnorm1d", "identity", "reshape", "softmax", "prelu",
        "leakyrelu", "silu", "stochastic_depth", "mlp", "layer_scale", "position_embedding", "slice", "split",
        "chunk", "roll"],
    2: ["conv1d", "linear", "relu", "batchnorm1d", "layernorm", "self_attention", "transpose", "mean", "flatten",
        "global_avgpool", "dropout", "instancenorm1d", "maxpool1d", "avgpool1d", "adaptive_maxpool1d",
        "transformer_encoder_layer", "hardtanh", "groupnorm", "class_token", "position_embedding", "select",
        "slice", "chunk", "mlp", "layer_scale", "roll"],
    3: ["conv2d", "batchnorm2d", "relu", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "global_avgpool", "flatten",
        "upsample", "permute", "gelu", "conv_transpose2d", "groupnorm", "pixel_shuffle", "leakyrelu",
        "squeeze_excitation", "conv2d_norm_activation", "window_partition", "window_reverse", "window_attention",
        "channel_shuffle", "layer_scale", "stochastic_depth", "drop_block2d", "select", "split", "roll"],
    4: ["flatten", "relu", "mean", "reshape", "identity", "conv3d", "batchnorm3d", "global_avgpool", "select",
        "slice"],
}
RANK_AFTER = {"flatten": 1, "global_avgpool": 1, "mean": None, "reshape": None, "unflatten": None,
              "embedding": "+1", "select": "-1"}


def _skip_fields(draw, skip: dict) -> dict:
    """A skip's merge, concat order, named projection, policy and condition, each now and then."""
    if draw(st.booleans()):
        skip["merge"] = draw(st.sampled_from(MERGES))
        if MERGE_REGISTRY.get(skip["merge"]).ordered:
            skip["order"] = draw(st.sampled_from(ORDERS))  # the reference forward follows it
    if draw(st.integers(0, 3)) == 0:
        skip["id"] = draw(st.sampled_from(["downsample", "proj", "0", "7"]))  # a named projection
    if draw(st.integers(0, 2)) == 0:
        skip["projection"] = draw(st.sampled_from(POLICIES))
    if draw(st.integers(0, 5)) == 0:  # decided by the shape pass: a skip only where no projection is needed
        skip["when"] = draw(st.booleans() | st.just(f"${{shape({skip['from']!r}) == shape({skip['to']!r})}}"))
    return skip


def _broadcast_gate(draw, layers: list, ids: list, rank: int, i: int) -> list[dict]:
    """A gate with size 1 on some axes (a mean that keeps them), merged into the value before it by
    `mul` or `add`, either way round: the gate broadcasts, or the node's value grows to the other's shape."""
    x = layers[-1].setdefault("id", f"g{i}x") if layers and isinstance(layers[-1], dict) else "input"
    squeezed = draw(st.sampled_from([[a] for a in range(rank)] + [list(range(1, rank)) or [0], list(range(rank))]))
    gate = [{"id": f"g{i}", "type": "mean", "dim": squeezed, "keepdim": True, "input": x}]
    if draw(st.booleans()):
        gate.append({"type": draw(st.sampled_from(["sigmoid", "hardsigmoid", "relu", "layer_scale"]))})
    if rank == 3 and 0 not in squeezed and draw(st.integers(0, 2)) == 0:  # squeeze widths read from the shape
        gate[1:] = [{"type": "conv2d", "out_channels": "${make_divisible(max(1, in_channels // 4), 2)}",
                     "kernel_size": 1}, {"type": "relu"},
                    {"type": "conv2d", "out_channels": f"${{channels({x!r})}}", "kernel_size": 1}, {"type": "sigmoid"}]
    if len(gate) > 1:
        gate[-1]["id"] = f"g{i}s"
    pair = [x, gate[-1]["id"]]
    if draw(st.booleans()):
        pair.reverse()
    ids += [x, f"g{i}m"] if x not in ids else [f"g{i}m"]
    return gate + [{"id": f"g{i}m", "type": draw(st.sampled_from(["mul", "add"])), "input": pair}]


def _shifted_windows(draw, i: int) -> list[dict]:
    """roll -> window_partition -> window_attention -> window_reverse -> roll on a [C, H, W] map turned
    [H, W, C], the windows (2 where a side is even) and heads read from shapes with `a if c else b`."""
    hw, shift = f"w{i}", draw(st.integers(0, 1))
    window = [f"${{2 if shape('{hw}')[{a}] % 2 == 0 else 1}}" for a in (0, 1)]
    size = [f"${{shape('{hw}')[{a}]}}" for a in (0, 1)]
    attention = draw(st.sampled_from([
        {"type": "window_attention", "window_size": window, "shift_size": shift, "size": size,
         "num_heads": "${2 if in_features % 2 == 0 else 1}"},
        {"type": "self_attention", "num_heads": "${min(2, in_features) if in_features % 2 == 0 else 1}"}]))
    return [{"id": hw, "type": "permute", "dims": [1, 2, 0]},
            {"type": "roll", "shifts": [-shift, -shift], "dims": [0, 1]},
            {"type": "window_partition", "window_size": window}, attention,
            {"type": "window_reverse", "window_size": window, "size": size},
            {"type": "roll", "shifts": [shift, shift], "dims": [0, 1]}, {"type": "permute", "dims": [2, 0, 1]}]


def _block(draw, model: dict, ids: list) -> dict:
    """A block with ${...} arguments (counters, shapes, conditions), and an instance of it, maybe repeated."""
    first = draw(st.sampled_from(["linear", "conv1d", "conv2d"]))
    width = draw(st.sampled_from(["${c * 2}", "${c * 2}", "${in_channels if repeat_index > 0 else c}",
                                  "${max(1, in_channels // 2)}", "${make_divisible(c * 1.5, 2)}",
                                  "${round(c / 2) + 1}", "${c + block_index}", "${ceil(c * 0.75)}"]))
    block = {
        "args": {"c": draw(st.integers(1, 8)), "k": 1, "rate": 0.5},
        "layers": [{"id": "a", "type": first, **({"out_features": width} if first == "linear" else
                                                {"out_channels": width, "kernel_size": "${k}"})},
                   {"id": "b", "type": draw(st.sampled_from(["relu", "batchnorm1d", "batchnorm2d", "layernorm"]))}],
        "skips": [_skip_fields(draw, {"from": "input", "to": draw(st.sampled_from(["a", "b"]))})],
    }
    if draw(st.integers(0, 2)) == 0:  # a layer that exists in some copies only
        block["layers"][1]["when"] = draw(st.sampled_from(["${repeat_index % 2 == 0}", "${c > 2}",
                                                           "${block_index < block_count - 1}", "${k == 1}"]))
    if draw(st.integers(0, 2)) == 0:  # stochastic depth rising over the blocks, as torchvision writes it
        block["layers"].append({"id": "sd", "type": "stochastic_depth", "mode": "row",
                                "p": "${rate * block_index / max(1, block_count - 1)}"})
    if draw(st.integers(0, 3)) == 3:
        block["output"] = "a"
    if draw(st.integers(0, 3)) == 3:
        block["projection"] = draw(st.sampled_from(POLICIES))
    model["blocks"] = {"blk": block}
    name = "blk"
    if draw(st.integers(0, 3)) == 3:  # a block that repeats the first one, with a skip into its copies
        model["blocks"]["outer"] = {
            "args": {"c": 2}, "layers": [{"id": "inner", "block": "blk", "args": {"c": "${c * 2}"},
                                          "repeat": draw(st.integers(1, 2))}, {"type": "relu"}],
            "skips": [{"from": "input", "to": draw(st.sampled_from(["inner.0.b", "inner.0", "inner"]))}]}
        name = "outer"
    instance = {"block": name, "args": {"c": draw(st.integers(1, 8) | st.sampled_from(
        ["${2 + 2}", "${in_channels}", "${max(1, in_features // 2)}", "${3 if repeat_index == 0 else 2}"]))}}
    copies = "0"
    if draw(st.booleans()):
        instance["repeat"] = draw(st.integers(1, 3))
        if draw(st.integers(0, 3)) == 3:
            instance["first_args"] = {"c": draw(st.integers(1, 8))}
        if draw(st.integers(0, 2)) == 0:
            instance["copy_id"] = draw(st.sampled_from(["layer${repeat_index}", "${repeat_index + 1}",
                                                        "b${repeat_count - repeat_index}"]))
            copies = {"layer${repeat_index}": "layer0", "${repeat_index + 1}": "1"}.get(instance["copy_id"], "b1")
    if draw(st.integers(0, 4)) == 0:  # a left-out instance stands for its input
        instance["when"] = draw(st.booleans() | st.just("${2 > 1}"))
    if draw(st.booleans()):
        instance["id"] = "blk0"
        ids.append("blk0")
        if name == "blk":
            ids.append(draw(st.sampled_from(["blk0.a", f"blk0.{copies}.b", f"blk0.{copies}"])))
    return instance


@st.composite
def scratch_configs(draw):
    rank = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(["float32"] * 8 + ["int64", "int32", "float64", "float16"]))
    model = {"input": draw(st.lists(st.integers(1, 12), min_size=rank, max_size=rank))}
    if dtype != "float32" or draw(st.integers(0, 9)) == 0:
        model["input_dtype"] = dtype
    layers, ids = [], ["input"]
    if dtype.startswith("int") and draw(st.integers(0, 3)) < 3:
        layers.append(draw(LAYERS["embedding"]) | {"id": "emb"})
        ids.append("emb")
        rank += 1
    for i in range(draw(st.integers(1, 7))):
        if draw(st.integers(0, 7)) == 0:  # squeeze-excite as a graph: a broadcasting merge
            layers += _broadcast_gate(draw, layers, ids, rank, i)
            continue
        if rank == 3 and draw(st.integers(0, 7)) == 0:  # Swin's attention, sized by reading shapes
            layers += _shifted_windows(draw, i)
            continue
        if len(ids) > 2 and draw(st.integers(0, 6)) == 0:  # a merge layer
            kind = draw(st.sampled_from(MERGES))
            layer = {"type": kind, "input": draw(st.lists(st.sampled_from(ids), min_size=2, max_size=3))}
            if draw(st.integers(0, 3)) == 3:
                layer["axis"] = draw(st.integers(-3, 3))
        else:
            fitting = BY_RANK.get(rank, BY_RANK[4])
            kind = draw(st.sampled_from(sorted(LAYERS) if draw(st.integers(0, 4)) == 4 else fitting))
            layer = dict(draw(LAYERS[kind]))
            if draw(st.integers(0, 9)) == 9:
                layer["input"] = draw(st.sampled_from(ids))
            after = RANK_AFTER.get(kind, rank)
            rank = {"+1": rank + 1, "-1": max(rank - 1, 1)}.get(after) or after or draw(st.integers(1, 3))
        if draw(st.integers(0, 3)) < 3:
            layer["id"] = draw(st.sampled_from([f"n{i}", f"n{i}", str(i)]))  # digit-only ids are ids too
            ids.append(layer["id"])
        if draw(st.integers(0, 7)) == 0:  # a left-out layer stands for its input
            layer["when"] = draw(st.booleans() | st.sampled_from(["${1 < 2}", "${2 * 2 == 5}", "${not false}"]))
        layers.append(layer)
    if draw(st.integers(0, 3)) == 0:  # a block with ${...} arguments, repeated, with a skip
        layers.insert(draw(st.integers(0, len(layers))), _block(draw, model, ids))
    model["layers"] = layers
    skips = []
    for _ in range(draw(st.integers(0, 3)) if len(ids) > 1 else 0):
        if draw(st.integers(0, 5)) < 5:  # mostly forward, as a user would write them
            later = draw(st.integers(1, len(ids) - 1))
            skip = {"from": ids[draw(st.integers(0, later - 1))], "to": ids[later]}
        else:
            skip = {"from": draw(st.sampled_from(ids)), "to": draw(st.sampled_from(ids))}
        _skip_fields(draw, skip)
        if draw(st.integers(0, 4)) == 4:
            skip["axis"] = draw(st.integers(-3, 3))
        skips.append(skip)
    if skips:
        model["skips"] = skips
    if draw(st.integers(0, 4)) == 0:
        model["projection"] = draw(st.sampled_from(POLICIES))
    if draw(st.integers(0, 9)) == 9:
        model["output"] = draw(st.sampled_from(ids[1:] or ids))
    if draw(st.integers(0, 9)) == 9:
        model["width_multiplier"] = draw(st.sampled_from([0.25, 0.5, 1.5, 2.0]))
    return model


# -- YAML text -----------------------------------------------------------------------------------

TEXT_SOURCES = [(p.name, p.read_text(encoding="utf-8")) for p in [*EXAMPLES, *CONFIGS[:4]] if p.is_file()]
_LAUGHS = ("[&a [1, 1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
           "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], "
           "&e [*d, *d, *d, *d, *d, *d, *d, *d, *d], &f [*e, *e, *e, *e, *e, *e, *e, *e, *e], "
           "&g [*f, *f, *f, *f, *f, *f, *f, *f, *f], &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]]")
SNIPPETS = [
    "!!python/object/apply:os.system ['true']", "!!python/name:os.system", "&anchor", "*anchor", "*missing",
    "<<: *anchor", "!!set {a, b}", "!!binary aGk=", "2001-12-14", "!!float nan", ".inf", "~", "? [1, 2]",
    "{", "}", "[", "]", ":", ": :", "- ", "\t", "'", '"', "\\", "#", "%YAML 1.1", "---", "...", "|", ">",
    "9" * 5000, "-" + "9" * 400, "1e999", "0x7fffffffffffffff", "0o777", "1_000", "[" * 3000 + "]" * 3000,
    "{a: " * 500 + "1" + "}" * 500, "🔥", "ñ", "\u202e", "\ufeff", "\x00", "\x85", "${channels * 2}", "${",
    "null", "true", "-1", "[3, 0, 0]", _LAUGHS, "{type: relu}", "{block: basic, repeat: 3}", "input",
]


@st.composite
def yaml_texts(draw):
    name, text = _pick(draw, TEXT_SOURCES)
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "double", "splice", "replace_value", "truncate", "swap"]))
        note(action)
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if action == "drop":
            lines.pop(i)
        elif action == "double":
            lines.insert(i, lines[i])
        elif action == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif action == "truncate":
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
        elif action == "splice":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.sampled_from(SNIPPETS) | st.text(max_size=5)) + lines[i][at:]
        else:  # a value after `key: ` becomes a snippet
            head, sep, _ = lines[i].partition(": ")
            if sep:
                lines[i] = head + sep + draw(st.sampled_from(SNIPPETS))
    return name, "\n".join(lines) + "\n"
