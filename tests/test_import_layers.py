"""import_layers / import_functions: every leaf module and traced call of nine torchvision models as a layer.

Each result is rebuilt here through the registry on its own (not by the code under test): the same
state-dict keys and shapes, and bitwise-equal eval-mode outputs on a small random input.
"""
from __future__ import annotations

import functools
import operator
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from skiptrain import import_functions, registry
from skiptrain.import_layers import ImportGap, call_gap, function_of, is_leaf, layer_of, match
from skiptrain.merges import MERGES

torchvision = pytest.importorskip("torchvision")

MODELS = {  # name -> (constructor kwargs, input): small inputs keep it fast; vit at 32x32 has 4 patches
    "resnet18": ({}, (3, 32, 32)), "resnet50": ({}, (3, 32, 32)), "mobilenet_v2": ({}, (3, 32, 32)),
    "mobilenet_v3_small": ({}, (3, 32, 32)), "efficientnet_b0": ({}, (3, 32, 32)),
    "densenet121": ({}, (3, 32, 32)), "regnet_y_400mf": ({}, (3, 32, 32)), "convnext_tiny": ({}, (3, 32, 32)),
    "vit_b_16": ({"image_size": 32}, (3, 32, 32)), "swin_t": ({}, (3, 32, 32)),
}
# Calls the tracer maps itself, not to one layer: ViT's class token (`class_token.expand(n, -1, -1)`, then
# cat: the `class_token` layer). Unused nodes (attention's weights in `x, _ = self_attention(...)`) are dropped.
TRACER_OWN = {"vit_b_16": {"expand"}}


class Tracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return is_leaf(module)


def traced(name: str) -> tuple[nn.Module, fx.GraphModule]:
    kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    graph = fx.GraphModule(model, Tracer().trace(model))
    ShapeProp(graph).propagate(torch.randn(1, *shape))
    return model, graph


def sample_shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape[1:])


def rebuilt(kind: str, args: dict, in_shape: tuple[int, ...]) -> nn.Module:
    layer = registry.get(kind)
    return layer.build(layer.resolve_args(args, in_shape, "test", {}, None)).eval()


def outputs(module, x: torch.Tensor) -> torch.Tensor:
    out = module(x, x, x, need_weights=False) if type(module) is nn.MultiheadAttention else module(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture(scope="module")
def graphs() -> dict[str, tuple[nn.Module, fx.GraphModule]]:
    return {name: traced(name) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_every_leaf_module_rebuilds(graphs, name):
    model, graph = graphs[name]
    checked = set()
    for node in graph.graph.nodes:
        if node.op != "call_module":
            continue
        module = model.get_submodule(node.target)
        in_shape = sample_shape(node.args[0])
        key = (repr(module), in_shape, tuple(sorted((k, tuple(v.shape)) for k, v in module.state_dict().items())))
        if key in checked:
            continue
        checked.add(key)
        kind, args = match(module, in_shape)
        copy = rebuilt(kind, args, in_shape)
        assert {k: v.shape for k, v in copy.state_dict().items()} == \
            {k: v.shape for k, v in module.state_dict().items()}, node.target
        copy.load_state_dict(module.state_dict())
        x = torch.randn(2, *in_shape)
        with torch.no_grad():
            assert torch.equal(outputs(copy, x.clone()), outputs(module, x.clone())), (node.target, kind, args)
    assert checked


@pytest.mark.parametrize("name", MODELS)
def test_every_traced_call_is_a_layer_or_a_merge(graphs, name):
    _, graph = graphs[name]
    env = {}
    for node in graph.graph.nodes:
        if node.op not in ("call_function", "call_method") or import_functions.ignorable(node) or not node.users:
            continue
        result = function_of(node)
        if node.name in TRACER_OWN.get(name, set()) or (node.op == "call_method" and node.target in
                                                        TRACER_OWN.get(name, set())):
            assert result is None
            continue
        assert result is not None, (node.name, import_functions.why_not(node))
        operands = import_functions.operands(node)
        if result[0] == import_functions.MERGE:
            assert result[1] in MERGES and len(operands) >= 2, node.name
            continue
        kind, args = result
        if kind == "identity":
            continue
        in_shape = sample_shape(operands[0])
        x = torch.randn(2, *in_shape)
        env = {operands[0]: x}
        with torch.no_grad():
            expected = import_functions._run(node, env)
            if isinstance(expected, tuple):
                expected = expected[0]
            got = rebuilt(kind, args, in_shape)(x.clone())
        assert torch.equal(got, expected), (node.name, kind, args)


def test_the_layers_read_back():
    assert match(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)) == \
        ("conv2d", {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False})
    assert match(nn.Conv2d(3, 8, (1, 3), padding=(0, 1))) == \
        ("conv2d", {"out_channels": 8, "kernel_size": [1, 3], "padding": [0, 1]})
    assert match(nn.ReLU(inplace=True)) == ("relu", {})  # in place is skiptrain's choice
    assert match(nn.BatchNorm2d(8, eps=1e-3, momentum=0.01)) == ("batchnorm2d", {"eps": 1e-3, "momentum": 0.01})
    assert match(nn.LayerNorm((4, 5)), (3, 4, 5)) == ("layernorm", {"normalized_shape": [4, 5]})
    assert match(nn.MultiheadAttention(16, 4, batch_first=True)) == ("self_attention", {"num_heads": 4})
    from torchvision.models.convnext import LayerNorm2d
    assert match(LayerNorm2d(8, eps=1e-6), (8, 4, 4)) == ("layer_norm2d", {"eps": 1e-6})
    from torchvision.ops import StochasticDepth
    assert match(StochasticDepth(0.1, "row")) == ("stochastic_depth", {"p": 0.1})
    assert match(StochasticDepth(0.1, "batch")) == ("stochastic_depth", {"p": 0.1, "mode": "batch"})
    from torchvision.models.swin_transformer import PatchMerging, ShiftedWindowAttention
    attention = ShiftedWindowAttention(96, [7, 7], [3, 3], 3, proj_bias=False)  # keeps no `dim`, no `proj_bias`
    assert match(attention) == match(attention, (14, 14, 96)) == \
        ("shifted_window_attention", {"window_size": [7, 7], "shift_size": [3, 3], "num_heads": 3, "proj_bias": False})
    eps6 = PatchMerging(96, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))
    assert match(eps6, (8, 8, 96)) == ("patch_merging", {"norm_layer": {"type": "layernorm", "eps": 1e-6}})
    assert match(PatchMerging(96)) == ("patch_merging", {})  # its `norm_layer` is the `norm` it built


def test_what_does_not_rebuild_says_why():
    class Custom(nn.Module):
        def forward(self, x):
            return x * 2

    class Conv(nn.Conv2d):  # a subclass may compute anything: not torch.nn's conv2d
        pass

    for module in (Custom(), Conv(3, 4, 3)):
        assert layer_of(module) is None and not is_leaf(module)
        with pytest.raises(ImportGap, match="no registered layer type builds"):
            match(module)
    with pytest.raises(ImportGap, match="batch_first"):  # attention over the batch axis: not self_attention
        match(nn.MultiheadAttention(16, 4))
    assert is_leaf(nn.MultiheadAttention(16, 4))  # torch.nn's own: the tracer names it in its error
    with pytest.raises(ImportGap, match="in_channels"):  # the input shape disagrees with the module
        match(nn.Conv2d(3, 8, 3), (4, 8, 8))
    from torchvision.ops import SqueezeExcitation
    with pytest.raises(ImportGap, match="squeeze_channels"):  # not kept on the module: the tracer looks inside
        match(SqueezeExcitation(16, 4))
    assert not is_leaf(SqueezeExcitation(16, 4))


class Calls(nn.Module):
    def forward(self, x):  # x: [batch, 4, 6, 6]
        a = F.leaky_relu(x, 0.2) + F.gelu(x, approximate="tanh")
        first, second = x.chunk(2, dim=1)
        b = torch.cat([second, first], dim=-3)
        c = b.mean((2, 3), keepdim=True) * b
        d = c.view(c.size(0), -1)[:, 1:5]
        e = x.transpose(1, -1).contiguous()[..., 0]
        return (a, b, c, d, e, x * 0.5, x.reshape(2, -1), F.dropout(x, 0.3, training=False), torch.sigmoid(x),
                x + 1.0, x.mean(-1, keepdim=True))


def test_function_forms():
    graph = fx.symbolic_trace(Calls())
    ShapeProp(graph).propagate(torch.randn(2, 4, 6, 6))
    got = {node.name: function_of(node) for node in graph.graph.nodes
           if node.op in ("call_function", "call_method") and not import_functions.ignorable(node)}
    assert got["leaky_relu"] == ("leakyrelu", {"negative_slope": 0.2})
    assert got["gelu"] == ("gelu", {"approximate": "tanh"})
    assert got["add"] == ("merge", "add", {})
    assert got["getitem"] == ("chunk", {"chunks": 2, "index": 0})
    assert got["getitem_1"] == ("chunk", {"chunks": 2, "index": 1})
    assert got["cat"] == ("merge", "concat", {"axis": -3})  # as written: the third axis from the end
    assert got["mean"] == ("mean", {"dim": [1, 2], "keepdim": True})
    assert got["mul"] == ("merge", "mul", {})
    assert got["view"] == ("reshape", {"shape": [144]})
    assert got["getitem_2"] == ("slice", {"start": 1, "end": 5})
    assert got["transpose"] == ("transpose", {"dims": [0, -1]})
    assert got["mean_1"] == ("mean", {"dim": -1, "keepdim": True})
    assert got["contiguous"] == ("identity", {})
    assert got["getitem_3"] == ("select", {"index": 0, "dim": 2})
    assert got["dropout"] == ("dropout", {"p": 0.3})
    assert got["sigmoid"] == ("sigmoid", {})
    mean = next(n for n in graph.graph.nodes if n.name == "mean")  # shapes given, by node name or in order
    assert function_of(mean, {"cat": (4, 6, 6)}) == function_of(mean, [(4, 6, 6)]) == got["mean"]
    assert function_of(mean, {"cat": (4, 6)}) is None  # (4, 6) has no axis 2
    assert got["mul_1"] == ("scale", {"factor": 0.5})
    assert got["add_1"] is None  # adding a constant: no layer type
    add_1 = next(n for n in graph.graph.nodes if n.name == "add_1")
    assert "constants" in import_functions.why_not(add_1)
    assert got["reshape"] is None  # [2, -1] folds the batch in: the batch of 3 gives away
    reshape = next(n for n in graph.graph.nodes if n.name == "reshape")
    assert "batch" in import_functions.why_not(reshape)


class MoreCalls(nn.Module):
    def forward(self, x):  # x: [batch, 4, 6, 6]
        return (F.interpolate(x, scale_factor=2.0), F.max_pool2d(x, 2), F.avg_pool2d(x, 3, 1, 1), F.softmax(x, -1),
                x.unsqueeze(1).squeeze(1), F.layer_norm(x, (6,)), x.flatten(2).unflatten(2, (6, 6)),
                F.adaptive_avg_pool2d(x, 1), torch.relu(x), x.sum(1), F.group_norm(x, 2))


def test_more_function_forms():
    graph = fx.symbolic_trace(MoreCalls())
    ShapeProp(graph).propagate(torch.randn(2, 4, 6, 6))
    got = {node.name: function_of(node) for node in graph.graph.nodes
           if node.op in ("call_function", "call_method") and not import_functions.ignorable(node)}
    assert got["interpolate"] == ("upsample", {"scale_factor": 2.0})
    assert got["max_pool2d"] == ("maxpool2d", {"kernel_size": 2})
    assert got["avg_pool2d"] == ("avgpool2d", {"kernel_size": 3, "stride": 1, "padding": 1})
    assert got["softmax"] == ("softmax", {"dim": -1})
    assert got["unsqueeze"] == ("reshape", {"shape": [1, 4, 6, 6]})
    assert got["squeeze"] == ("reshape", {"shape": [4, 6, 6]})
    assert got["unflatten"] == ("reshape", {"shape": [4, 6, 6]})
    assert got["adaptive_avg_pool2d"] == ("adaptive_avgpool2d", {"output_size": 1})
    assert got["relu"] == ("relu", {})
    assert got["layer_norm"] is None  # without weight and bias: nn.LayerNorm would add them
    assert got["sum_1"] is None
    assert got["group_norm"] is None  # nn.GroupNorm would learn a weight and a bias that the call has not
    group_norm = next(n for n in graph.graph.nodes if n.name == "group_norm")
    assert "parameters" in import_functions.why_not(group_norm)


def test_module_owned_functionals_are_gaps():
    class Owned(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4, 4, 1, 1))

        def forward(self, x):
            return F.conv2d(x, self.weight) - x

    graph = fx.symbolic_trace(Owned())
    ShapeProp(graph).propagate(torch.randn(2, 4, 3, 3))
    for node in graph.graph.nodes:
        if node.op in ("call_function", "call_method"):
            assert function_of(node) is None and import_functions.why_not(node), node.name
    assert operator.sub not in import_functions._MERGES


def test_module_calls_take_one_tensor():
    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x, y):
            return self.mha(x, x, x, need_weights=False)[0] + self.mha(x, y, y)[0] + self.mha(x, x, x, attn_mask=y)[0]

    calls = [node for node in fx.symbolic_trace(Attend()).graph.nodes if node.op == "call_module"]
    assert call_gap(calls[0]) is None
    assert "several tensors" in call_gap(calls[1]) and "several tensors" in call_gap(calls[2])


def test_an_ejected_copy_of_skiptrains_own_layer_is_that_layer(tmp_path, monkeypatch):
    """import -> eject -> import: the ejected file holds copies of skiptrain's classes, never skiptrain itself."""
    import importlib.util

    from skiptrain.eject import eject

    config = tmp_path / "model.yaml"
    config.write_text("model:\n  input: [5, 8]\n  layers:\n    - {id: attn, type: self_attention, num_heads: 2}\n"
                      "    - {id: halve, type: scale, factor: 0.5}\n")
    eject(config, tmp_path / "ejected.py")
    spec = importlib.util.spec_from_file_location("ejected_for_import_test", tmp_path / "ejected.py")
    ejected = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, ejected)  # imported as `skiptrain import` imports it
    spec.loader.exec_module(ejected)
    model = ejected.Model()
    assert type(model.attn).__module__ == "ejected_for_import_test"
    assert match(model.attn, (5, 8)) == ("self_attention", {"num_heads": 2}) and is_leaf(model.attn)
    assert match(model.halve) == ("scale", {"factor": 0.5})
