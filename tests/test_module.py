from __future__ import annotations

import copy
import inspect
import io
import pickle
import traceback

import pytest
import torch
from torch import nn

import skiptrain

RESNET_BLOCK = {
    "input": [4, 8, 8],
    "blocks": {"basic": {"args": {"c": 4, "s": 1}, "layers": [
        {"id": "conv1", "type": "conv2d", "out_channels": "${c}", "kernel_size": 3, "stride": "${s}",
         "padding": 1, "bias": False},
        {"id": "bn1", "type": "batchnorm2d"}, {"type": "relu"},
        {"id": "conv2", "type": "conv2d", "out_channels": "${c}", "kernel_size": 3, "padding": 1, "bias": False},
        {"id": "bn2", "type": "batchnorm2d"}, {"type": "relu"}],
        "skips": [{"from": "input", "to": "bn2"}]}},
    "layers": [{"id": "down", "block": "basic", "args": {"c": 8, "s": 2}},
               {"type": "global_avgpool"}, {"id": "fc", "type": "linear", "out_features": 3}],
}


class HandWritten(nn.Module):
    """The same network as RESNET_BLOCK, written the torchvision way."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.downsample = nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))
        return self.fc(out.mean(dim=(2, 3)))


def test_parameter_names_carry_node_ids():
    model = skiptrain.build_model(RESNET_BLOCK)
    names = set(model.state_dict())
    assert {"down.conv1.weight", "down.bn2.running_mean", "down.bn2_proj.0.weight",
            "down.bn2_proj.1.weight", "fc.weight", "fc.bias"} <= names


def test_computes_the_same_as_the_network_written_by_hand():
    torch.manual_seed(0)
    model = skiptrain.build_model(RESNET_BLOCK)
    hand = HandWritten()
    mapping = {"conv1": "down.conv1", "bn1": "down.bn1", "conv2": "down.conv2", "bn2": "down.bn2",
               "downsample.0": "down.bn2_proj.0", "downsample.1": "down.bn2_proj.1", "fc": "fc"}
    state = {}
    for key, value in hand.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        state[f"{mapping[prefix]}.{leaf}"] = value
    model.load_state_dict(state, strict=True)
    x = torch.randn(5, 4, 8, 8)
    for mode in (True, False):
        model.train(mode), hand.train(mode)
        torch.testing.assert_close(model(x), hand(x))
    model(x).square().sum().backward()
    hand(x).square().sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for key, p in hand.named_parameters():
        prefix, _, leaf = key.rpartition(".")
        torch.testing.assert_close(grads[f"{mapping[prefix]}.{leaf}"], p.grad)


def test_in_place_shortcuts_never_touch_a_value_read_twice():
    """`+=` and ReLU(inplace) only where torchvision uses them; shared values stay intact."""
    model_cfg = {"input": [3, 6, 6], "layers": [
        {"id": "a", "type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"id": "r", "type": "relu"},  # a is also read by the skip below: no in-place ReLU
        {"id": "c", "type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"id": "s", "type": "sigmoid"},  # sigmoid's backward reads its output: no `+=` into it
        {"id": "r2", "type": "relu"}],
        "skips": [{"from": "a", "to": "c"}, {"from": "r", "to": "s"}]}
    torch.manual_seed(0)
    model = skiptrain.build_model(model_cfg)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)

    def reference(x):
        a = model.a(x)
        r = torch.relu(a)
        c = model.c(r) + a
        s = torch.sigmoid(c) + r
        return torch.relu(s)

    torch.testing.assert_close(model(x), reference(x))
    (g_model,) = torch.autograd.grad(model(x).sum(), x)
    (g_ref,) = torch.autograd.grad(reference(x).sum(), x)
    torch.testing.assert_close(g_model, g_ref)
    assert not model.r.inplace and "c += a" in model.code and "s +=" not in model.code


def test_generated_code_is_printable_and_frees_values():
    model = skiptrain.build_model(RESNET_BLOCK)
    code = model.code
    assert "down = m['down']._modules" in code and "down['conv1'](x)" in code
    assert "down_bn2_proj = down['bn2_proj'](x)" in code
    assert "; x = None" in code  # values are dropped after their last use
    print(model)  # the module tree prints like any nn.Module


def test_builds_on_the_meta_device_and_trains():
    meta = skiptrain.build_model(RESNET_BLOCK, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    model = skiptrain.build_model(RESNET_BLOCK)
    loss = model(torch.randn(2, 4, 8, 8)).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_metadata_travels_with_the_module():
    model = skiptrain.build_model(RESNET_BLOCK)
    assert model.meta["skiptrain"]["input_shape"] == [4, 8, 8]
    assert model.meta["skiptrain"]["output_shape"] == [3]


def test_concat_merges_in_the_order_written():
    model = skiptrain.build_model({"input": [2], "layers": [
        {"id": "a", "type": "identity"}, {"id": "b", "type": "identity", "input": "input"},
        {"id": "c", "type": "concat", "input": ["a", "b", "input"]}]})
    x = torch.tensor([[1.0, 2.0]])
    assert model(x).tolist() == [[1.0, 2.0, 1.0, 2.0, 1.0, 2.0]]


def test_mul_and_add_merges():
    model = skiptrain.build_model({"input": [3], "layers": [
        {"id": "a", "type": "relu"}, {"id": "m", "type": "mul", "input": ["a", "input"]},
        {"id": "s", "type": "add", "input": ["m", "input"]}]})
    x = torch.tensor([[-1.0, 2.0, 3.0]])
    assert model(x).tolist() == [[-1.0, 6.0, 12.0]]


@pytest.mark.slow
def test_torch_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = skiptrain.build_model(RESNET_BLOCK).eval()
    compiled = torch.compile(model)
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_dynamo_traces_without_graph_breaks():
    model = skiptrain.build_model(RESNET_BLOCK).eval()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 4, 8, 8))
    assert explanation.graph_break_count == 0


# -- found by tests/test_fuzz.py ---------------------------------------------------------------------

def test_a_merge_layer_does_not_add_in_place_into_a_value_read_again():
    """`s = add(a, input)` compiled to `a += x`, and `add(s, a)` then read the changed `a`."""
    model = skiptrain.build_model({"input": [4], "layers": [
        {"id": "a", "type": "linear", "out_features": 4},
        {"id": "s", "type": "add", "input": ["a", "input"]},
        {"id": "o", "type": "add", "input": ["s", "a"]}]}).eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        a = model.a(x)
        torch.testing.assert_close(model(x), (a + x) + a)


def test_a_skip_that_promotes_the_dtype_is_not_added_in_place():
    """`ids_maxpooled += floats` cannot write float values into an int64 tensor."""
    model = skiptrain.build_model({"input": [1, 4, 4], "input_dtype": "int64", "layers": [
        {"id": "e", "type": "embedding", "num_embeddings": 10, "embedding_dim": 1},
        {"id": "f", "type": "flatten", "start_dim": 3},
        {"id": "p", "type": "maxpool2d", "kernel_size": 1, "input": "input"}],
        "skips": [{"from": "f", "to": "p"}]}).eval()
    x = torch.randint(0, 10, (2, 1, 4, 4))
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, x.float() + model.e(x).flatten(3))


def test_a_written_inplace_is_ignored_where_it_would_change_a_value_still_read():
    model = skiptrain.build_model({"input": [4], "layers": [
        {"id": "a", "type": "linear", "out_features": 4},
        {"id": "r", "type": "relu", "inplace": True},
        {"id": "s", "type": "add", "input": ["r", "a"]},
        {"id": "d", "type": "dropout", "inplace": True, "input": "input"}],
        "skips": [{"from": "input", "to": "s"}], "output": "s"}).eval()
    x = torch.randn(2, 4)
    before = x.clone()
    with torch.no_grad():
        a = model.a(x)
        torch.testing.assert_close(model(x), a.relu() + a + x)
    assert torch.equal(x, before)  # the caller's input is never written
    assert not model.r.inplace and not model.d.inplace
    sole = skiptrain.build_model({"input": [4], "layers": [
        {"type": "linear", "out_features": 4}, {"id": "r", "type": "relu", "inplace": True}]})
    assert sole.r.inplace  # where it is safe, it is kept


# -- issue 13: generated forwards are told apart, pickled and copied ----------------------------------

def _named(layer_id: str) -> nn.Module:
    return skiptrain.build_model({"name": "twin", "input": [4], "layers": [
        {"id": layer_id, "type": "linear", "out_features": 3}]})


def test_two_models_with_one_name_show_their_own_source():
    first, second = _named("alpha"), _named("beta")
    assert inspect.getsource(first._forward) == first.code
    assert inspect.getsource(second._forward) == second.code
    with pytest.raises(RuntimeError) as info:
        first(torch.randn(2, 5))  # the wrong width fails inside the generated forward
    generated = [f for f in traceback.extract_tb(info.value.__traceback__) if f.filename.startswith("<skiptrain")]
    assert generated and "alpha" in generated[-1].line and "twin" in generated[-1].filename


def _same_outputs(model: nn.Module, copied: nn.Module) -> None:
    assert type(copied) is type(model) and copied.code == model.code and copied.meta == model.meta
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(copied.eval()(x), model.eval()(x))
    assert inspect.getsource(copied._forward) == copied.code


def test_torch_save_and_load_a_whole_model():
    model = skiptrain.build_model(RESNET_BLOCK)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    _same_outputs(model, torch.load(buffer, weights_only=False))
    _same_outputs(model, pickle.loads(pickle.dumps(model)))


def test_deepcopy_gives_an_independent_model():
    model = skiptrain.build_model(RESNET_BLOCK)
    copied = copy.deepcopy(model)
    _same_outputs(model, copied)
    with torch.no_grad():
        copied.fc.weight.add_(1.0)
    assert not torch.equal(copied.fc.weight, model.fc.weight)
