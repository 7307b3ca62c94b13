"""Fuzzing strategies for tests/test_fuzz.py: the example configs, mutated a few times each."""
from __future__ import annotations

import copy

from hypothesis import note
from hypothesis import strategies as st

from skiptrain.config import load_config, plain
from skiptrain.errors import SkiptrainError

from .conftest import CONFIGS, EXAMPLES
from .fuzz_scratch import MERGES, POLICIES, _pick, scratch_configs


# -- the configs to mutate -----------------------------------------------------------------------

def _load_bases() -> list[dict]:
    bases = []
    for path in [*EXAMPLES, *CONFIGS]:
        try:
            bases.append(plain(load_config(path).model))
        except SkiptrainError:
            continue
    return bases


BASES = _load_bases()
DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32"]
LAYER_TYPES = ["conv1d", "conv2d", "Conv2d", "linear", "relu", "gelu", "batchnorm1d", "batchnorm2d", "layernorm",
               "groupnorm", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "global_avgpool", "flatten",
               "self_attention", "dropout", "add", "concat", "mul", "mean", "permute", "transpose", "reshape",
               "identity", "upsample", "embedding", "conv_transpose2d", "softmax", "transformer_encoder_layer",
               # the layers for modern architectures (issue 14)
               "select", "slice", "chunk", "split", "roll", "window_partition", "window_reverse", "class_token",
               "position_embedding", "pos_embedding", "layer_scale", "stochastic_depth", "drop_path",
               "squeeze_excitation", "conv2d_norm_activation", "mlp", "window_attention", "channel_shuffle",
               "patch_merging", "shifted_window_attention", "frozen_batch_norm2d", "drop_block2d",
               # a decoder's pieces (issue 17)
               "causal_self_attention", "token_positions"]
ARG_NAMES = ["out_channels", "out_features", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
             "p", "num_heads", "dim", "dims", "shape", "start_dim", "end_dim", "axis", "input", "id", "scale",
             "output_size", "scale_factor", "eps", "momentum", "affine", "num_groups", "in_channels",
             "in_features", "normalized_shape", "padding_mode", "ceil_mode", "keepdim", "inplace", "type",
             "block", "repeat", "args", "first_args", "projection", "merge", "from", "to", "🦜", "",
             "when", "order", "copy_id", "index", "chunks", "sizes", "start", "end", "step", "shifts",
             "window_size", "size", "shift_size", "init", "std", "hidden_channels", "squeeze_channels",
             "activation_layer", "norm_layer", "scale_activation", "mode", "input_channels", "input_shape",
             "tie", "num_positions", "proj_dropout", "embedding_dim", "num_embeddings"]
HUGE = [0, -1, -(2 ** 31), 2 ** 31, 2 ** 62, 2 ** 63, 2 ** 64, 10 ** 30, -(10 ** 30), 10 ** 400]
NAMES = ["", " ", "input", "input.x", "a.b", ".", "..", "stem", "stage1.0", "stage1.9.bn2", "head", "bn", "wte",
         "wte.weight", "h.0.attn.c_attn.weight",
         "relu_1", "conv2d_1", "🔥", "ñandú", "日本", "\x00", "a" * 300, "${channels}", "None", "null"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
    st.sampled_from(NAMES + LAYER_TYPES + MERGES + POLICIES + DTYPES),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(ARG_NAMES) | st.text(max_size=6),
                                                                inner, max_size=4),
    max_leaves=8)
sizes = st.integers(1, 64)
shapes = st.one_of(
    st.lists(sizes, min_size=1, max_size=4),
    sizes,
    st.lists(st.sampled_from([0, -1, 2 ** 31, 2 ** 40, 1.5, "8", None, True]), min_size=1, max_size=6),
)
_ATOMS = ["0", "1", "2", "3", "16", "-1", "channels", "stride", "c", "planes", "dim", "heads", "hidden", "x",
          "9" * 25, "2 ** 8", "1 / 2", "1.5", "'a'", "None", "True", "channels.real", "c[0]", "f(1)",
          # what `${...}` grew (docs/config-language.md): floats, booleans, functions, shapes, counters
          "0.25", "1e-6", "true", "false", "not True", "-(1)", "in_channels", "in_features", "in_shape[0]",
          "in_shape[-1]", "in_shape[9]", "in_shape", "shape(input)", "channels(input)", "shape('a')", "channels(a)",
          "repeat_index", "repeat_count", "block_index", "block_count", "min(c, 2)", "max(1, in_channels)",
          "abs(-3)", "round(2.5)", "floor(c / 3)", "ceil(7 / 2)", "int(2.7)", "make_divisible(in_channels, 8)",
          "make_divisible(c * 0.25, 4, 1)", "min()", "round(1, 2)", "int('3')", "(c if c > 1 else 1)",
          "(1 if block_index == 0 else 2)", "(in_channels // 2 if in_channels > 2 else 1)"]
_OPS = [" + ", " - ", " * ", " // ", " / ", " ** ", " % ", " ", "", " == ", " != ", " < ", " <= ", " > ",
        " >= ", " and ", " or ", " if True else ", " if c > 1 else ", " in ", " is ", " & "]
# Found by this fuzzer and fixed (tests/test_expr.py): a zero or fractional make_divisible divisor, and
# min/max of one number, were tracebacks.
NASTY = [
    "${}", "${", "}", "$${c}", "${${c}}", "${c", "${c}}", "x${c}y${stride}z", "${c}${c}", "${ channels }",
    "${__import__('os').system('true')}", "${().__class__.__mro__}", "${open('/etc/passwd')}", "${lambda: 1}",
    "${c if c else 1}", "${[1, 2]}", "${'a' * 10}", "${1\x00}", "${\n1\n}", "${𝔠}", "${ĉhannels}", "${1_000}",
    "${0x10}", "${True}", "${None}", "${-channels}", "${+-+-1}", "${channels // 0}", "${2 * 2 * 4611686018427387904}",
    "${" + "(" * 150 + "1" + ")" * 150 + "}", "${" + "(" * 300 + "1" + ")" * 300 + "}",
    "${" + "-" * 3000 + "1}", "${" + " + ".join(["1"] * 3000) + "}", "${" + "9" * 5000 + "}",
    "${" + "-" * 100_000 + "1}",
    "${1 < 2 < 3}", "${1 < 'a'}", "${1.0 / 0}", "${1 % 0}", "${1e308 * 10}", "${round(1e300)}", "${int(1e300)}",
    "${make_divisible(8, -1)}", "${make_divisible(v=8)}", "${floor(-0.0)}", "${make_divisible(0, 0)}",
    "${make_divisible(8, 2.5)}", "${max(1)}", "${min(2.5)}", "${max(in_shape)}",
    "${max(1, 'a')}", "${abs(True)}", "${not 1}", "${1 and 2}", "${True and 1}", "${1 if 2 else 3}",
    "${1 if True}", "${in_shape[1:]}", "${in_shape[True]}", "${shape()}", "${shape(input, 2)}",
    "${channels('no.such.id')}", "${shape('input')[0] * 2}", "${block_count - block_count}",
    "${rate * block_index / (block_count - 1)}", "${repeat_index // 0}", "x${in_channels}",
    "${" + " if True else ".join(["1"] * 400) + "}", "${" + " and ".join(["True"] * 2000) + "}",
    "${" + "not " * 2000 + "True}", "${" + "1 < " * 1000 + "2}", "${" + "max(1, " * 200 + "1" + ")" * 200 + "}",
]


@st.composite
def expressions(draw):
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(NASTY))
    tokens = [draw(st.sampled_from(_ATOMS))]
    for _ in range(draw(st.integers(0, 3))):
        tokens += [draw(st.sampled_from(_OPS)), draw(st.sampled_from(_ATOMS))]
    text = "".join(tokens)
    if draw(st.booleans()):
        text = f"({text})"
    return "${" + text + "}" + draw(st.sampled_from(["", "", "", "px", "${c}"]))


def slots(value, out=None) -> list:
    """(container, key) for every mapping entry and list item, at any depth."""
    out = [] if out is None else out
    if isinstance(value, dict):
        for key in list(value):
            out.append((value, key))
            slots(value[key], out)
    elif isinstance(value, list):
        for i in range(len(value)):
            out.append((value, i))
            slots(value[i], out)
    return out


def layer_lists(model: dict) -> list[list]:
    lists = [model["layers"]] if isinstance(model.get("layers"), list) else []
    blocks = model.get("blocks")
    if isinstance(blocks, dict):
        lists += [b["layers"] for b in blocks.values() if isinstance(b, dict) and isinstance(b.get("layers"), list)]
    return [lst for lst in lists if lst]


def layer_entries(model: dict) -> list[dict]:
    return [entry for lst in layer_lists(model) for entry in lst if isinstance(entry, dict)]


def known_ids(model: dict) -> list[str]:
    """Ids written in the config, with block paths a skip could name (`stage1.0.bn2`)."""
    ids = ["input"]
    for entry in layer_entries(model):
        if isinstance(entry.get("id"), str):
            ids.append(entry["id"])
    for entry in model["layers"] if isinstance(model.get("layers"), list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and "block" in entry:
            ids += [f"{entry['id']}.0", f"{entry['id']}.0.bn2", f"{entry['id']}.1.conv1", f"{entry['id']}.bn"]
    return ids


def skip_lists(model: dict) -> list[list]:
    lists = [model["skips"]] if isinstance(model.get("skips"), list) else []
    blocks = model.get("blocks")
    if isinstance(blocks, dict):
        lists += [b["skips"] for b in blocks.values() if isinstance(b, dict) and isinstance(b.get("skips"), list)]
    return lists


def m_delete(draw, model):
    found = slots(model)
    if found:
        container, key = _pick(draw, found)
        del container[key]


def m_replace(draw, model):
    found = slots(model)
    if found:
        container, key = _pick(draw, found)
        container[key] = draw(values)


def m_expression(draw, model):
    found = [(c, k) for c, k in slots(model) if not isinstance(c[k], (dict, list))]
    if found:
        container, key = _pick(draw, found)
        container[key] = draw(expressions())


def m_input(draw, model):
    model["input"] = draw(shapes)


def m_dtype(draw, model):
    model["input_dtype"] = draw(st.sampled_from(DTYPES) | scalars)


def m_add_skip(draw, model):
    ids = known_ids(model)
    name = st.sampled_from(ids) | st.sampled_from(NAMES) | st.text(max_size=8)
    skip = {"from": draw(name), "to": draw(name)}
    for key, strategy in (("merge", st.sampled_from(MERGES) | scalars), ("projection", st.sampled_from(POLICIES)),
                          ("axis", st.integers(-4, 4) | scalars), ("order", orders), ("id", skip_ids),
                          ("when", conditions())):
        if draw(st.integers(0, 2)) == 0:
            skip[key] = draw(strategy)
    lists = skip_lists(model)
    if lists and draw(st.booleans()):
        _pick(draw, lists).append(skip)
    else:
        if not isinstance(model.get("skips"), list):
            model["skips"] = []
        model["skips"].append(skip)


orders = st.sampled_from(["to_first", "from_first", "from-first", "first", "", "${'from_first'}"])
skip_ids = st.sampled_from(["downsample", "proj", "0", "1", "12", "01", "-1", "a.b", "input", "training", "forward",
                            "eval", "${'down' + 'sample'}", "${repeat_index}", "stem", "head", "bn2"]) | scalars
_CONDITIONS = ["${stride == 1}", "${c > 2}", "${in_channels == c}", "${shape(input) == shape(bn2)}",
               "${channels(input) == in_channels}", "${repeat_index > 0}", "${repeat_index == repeat_count - 1}",
               "${block_index % 2 == 0}", "${block_count > 1}", "${not (stride != 1)}", "${1 < 2 <= 2}",
               "${c != 1 and stride == 1}", "${False or True}", "${'a' < 'b'}", "${1 == 1.0}"]


@st.composite
def conditions(draw):
    """A `when:` value: mostly booleans and comparisons, now and then anything (to be refused)."""
    kind = draw(st.integers(0, 5))
    if kind < 2:
        return draw(st.booleans())
    if kind < 4:
        return draw(st.sampled_from(_CONDITIONS))
    if kind == 4:
        return draw(expressions())
    return draw(st.sampled_from([1, 0, "true", "yes", None, "${1}", "${c}", [True], {}]) | scalars)


@st.composite
def copy_ids(draw):
    """A `copy_id:` value: torchvision's spellings, and ids that clash, are invalid or are not ids at all."""
    return draw(st.sampled_from(["denselayer${repeat_index + 1}", "layer_${repeat_index}", "b${repeat_index}-x",
                                 "${repeat_index}", "${repeat_count - repeat_index}", "${repeat_index * 2}",
                                 "same", "${0}", "a.${repeat_index}", "${repeat_index - 1}", "-${repeat_index}",
                                 "${block_index}", "${'x' + 'y'}", "input"]) | expressions() | scalars)


def m_when(draw, model):
    """Put a `when:` on a layer, a block instance or a skip (`conditions.py`)."""
    targets = layer_entries(model) + [s for lst in skip_lists(model) for s in lst if isinstance(s, dict)]
    if targets:
        _pick(draw, targets)["when"] = draw(conditions())


def m_copy_id(draw, model):
    """Name a repeated instance's copies (`copy_id:`), often with the `repeat:` it needs."""
    instances = [e for e in layer_entries(model) if "block" in e]
    if instances:
        instance = _pick(draw, instances)
        instance["copy_id"] = draw(copy_ids())
        if draw(st.integers(0, 3)) > 0:
            instance["repeat"] = draw(st.integers(1, 3))


def m_skip_field(draw, model):
    targets = [s for lst in skip_lists(model) for s in lst if isinstance(s, dict)]
    targets += [e for e in layer_entries(model) if e.get("type") in MERGES or "block" in e]
    targets.append(model)
    target = _pick(draw, targets)
    key = draw(st.sampled_from(["merge", "projection", "axis", "from", "to", "order", "id", "when", "copy_id"]))
    target[key] = draw(st.sampled_from(MERGES + POLICIES) | st.integers(-4, 4) | st.sampled_from(known_ids(model))
                       | orders | skip_ids | conditions() | copy_ids() | scalars)


def m_duplicate_layer(draw, model):
    lists = layer_lists(model)
    if lists:
        lst = _pick(draw, lists)
        entry = copy.deepcopy(_pick(draw, lst))
        if isinstance(entry, dict) and draw(st.booleans()):
            entry.pop("id", None)
        lst.insert(draw(st.integers(0, len(lst))), entry)


def m_drop_layer(draw, model):
    lists = layer_lists(model)
    if lists:
        lst = _pick(draw, lists)
        lst.pop(draw(st.integers(0, len(lst) - 1)))


def m_layer_type(draw, model):
    entries = layer_entries(model)
    if entries:
        _pick(draw, entries)["type"] = draw(st.sampled_from(LAYER_TYPES) | st.sampled_from(NAMES) | scalars)


def m_layer_arg(draw, model):
    entries = layer_entries(model)
    if entries:
        key = draw(st.sampled_from(ARG_NAMES))
        _pick(draw, entries)[key] = draw(st.integers(-2, 8) | st.lists(st.integers(-1, 4), max_size=4)
                                         | st.sampled_from(known_ids(model)) | values)


def m_input_ref(draw, model):
    entries = layer_entries(model)
    if entries:
        ids = st.sampled_from(known_ids(model))
        _pick(draw, entries)["input"] = draw(ids | st.lists(ids, max_size=3))


def m_repeat(draw, model):
    entries = [e for e in layer_entries(model) if "block" in e] or layer_entries(model)
    if entries:
        _pick(draw, entries)["repeat"] = draw(st.integers(-1, 6) | st.sampled_from(
            [0, 100_001, 10 ** 30, "3", 2.0, True, None, "${2 * 2}", "${c}", [2]]))


def m_multiplier(draw, model):
    key = draw(st.sampled_from(["width_multiplier", "depth_multiplier"]))
    model[key] = draw(st.floats(0.05, 3.0) | st.sampled_from([0, -1, 1000, 1001, float("nan"), float("inf"),
                                                              "2", True, None]))


def m_output(draw, model):
    model["output"] = draw(st.sampled_from(known_ids(model)) | st.sampled_from(NAMES) | scalars)


def m_block(draw, model):
    """Change a block definition's arguments, projection or output."""
    blocks = model.get("blocks")
    if isinstance(blocks, dict) and blocks:
        block = blocks[_pick(draw, list(blocks))]
        if isinstance(block, dict):
            key = draw(st.sampled_from(["args", "projection", "output", "skips", "layers"]))
            block[key] = draw(st.sampled_from(POLICIES) | st.sampled_from(known_ids(model)) | values)


MUTATIONS = [m_delete, m_replace, m_expression, m_input, m_dtype, m_add_skip, m_skip_field, m_duplicate_layer,
             m_drop_layer, m_layer_type, m_layer_arg, m_input_ref, m_repeat, m_multiplier, m_output, m_block,
             m_when, m_when, m_copy_id]


@st.composite
def mutated_configs(draw):
    model = draw(scratch_configs()) if draw(st.integers(0, 4)) == 4 else copy.deepcopy(_pick(draw, BASES))
    for _ in range(draw(st.integers(1, 4))):
        mutation = draw(st.sampled_from(MUTATIONS))
        note(mutation.__name__)
        mutation(draw, model)
    return model
