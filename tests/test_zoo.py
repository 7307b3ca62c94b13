"""The zoo (`skiptrain/zoo/`, also `configs/zoo/`): torchvision's architectures written natively.

For every zoo config (configs/imagenet/ links to its three ResNets), against
`torchvision.models.<name>(weights=None)`:
(a) exactly torchvision's parameter count, from `check_model` (meta tensors only);
(b) the same state-dict keys and shapes: torchvision's state dict loads
    with `strict=True` and no key mapping;
(c) eval-mode outputs bitwise equal to torchvision's on CPU at batch 2, after every tensor of
    torchvision's state dict (BN statistics, tokens, layer scales included) was given a random
    value of its own and loaded into both, so a wrong pairing of same-shaped tensors shows;
(d) `skiptrain export` writes an ONNX file whose verification passes;
(e) `skiptrain init <name>` writes it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import skiptrain
from skiptrain.starter import template_text, zoo_names

from .conftest import ROOT, invoke

torchvision = pytest.importorskip("torchvision")

ZOO = ROOT / "skiptrain" / "zoo"
IMAGENET = ROOT / "configs" / "imagenet"
# sum(p.numel() for p in torchvision.models.<name>(weights=None).parameters()), torchvision 0.29
PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnext50_32x4d": 25_028_904, "wide_resnet50_2": 68_883_240, "squeezenet1_1": 1_235_496,
    "densenet121": 7_978_856, "mobilenet_v2": 3_504_872, "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032, "efficientnet_b0": 5_288_548, "regnet_y_400mf": 4_344_144,
    "convnext_tiny": 28_589_128, "vit_b_16": 86_567_656, "swin_t": 28_288_354, "shufflenet_v2_x1_0": 2_278_604,
}
# Every architecture the zoo promises (issue 14's list), each written natively.
WANTED = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "squeezenet1_1", "densenet121",
          "mobilenet_v2", "shufflenet_v2_x1_0",
          "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny",
          "vit_b_16", "swin_t"]
SMALL = {"squeezenet1_1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x1_0",
         "efficientnet_b0", "regnet_y_400mf", "resnet18"}  # forwards of well under a second: default suite
ZOO_NAMES = zoo_names()
ALL = ZOO_NAMES


def config(name: str) -> Path:
    return ZOO / f"{name}.yaml"


def heavy(names, light=SMALL):
    """Parameters for names, the ones outside `light` marked slow."""
    return [pytest.param(n, marks=() if n in light else pytest.mark.slow) for n in names]


def torchvision_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None)


def randomized_state(model: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """Every floating tensor redrawn around its own mean and spread (at least 0.1): constants such as
    fresh BN statistics, zero class tokens or 1e-6 layer scales become distinct random values;
    variances stay positive."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            mean = tensor.mean().item()
            spread = max(tensor.std().item() if tensor.numel() > 1 else 0.0, 0.1 * max(abs(mean), 1.0))
            tensor = mean + spread * torch.randn(tensor.shape, generator=gen)
            if key.endswith("running_var"):
                tensor = tensor.abs() + 0.1
        state[key] = tensor
    return state


def test_the_zoo_holds_every_wanted_model_and_configs_zoo_is_it():
    assert ZOO_NAMES == sorted(WANTED)
    assert (ROOT / "configs" / "zoo").resolve() == ZOO.resolve()  # configs/zoo is the packaged zoo


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_header_names_the_torchvision_model_and_its_size(name):
    first = config(name).read_text().splitlines()[0]
    assert first.startswith("# ") and f"torchvision.models.{name}" in first and f"{PARAMS[name]:,}" in first


@pytest.mark.parametrize("name", ALL)
def test_a_parameter_count_is_torchvisions(name):
    report = skiptrain.check_model(config(name))
    assert report.params == PARAMS[name]
    assert tuple(report.output_shape) == (1000,)


@pytest.mark.parametrize("name", ALL)
def test_every_projection_is_one_torchvision_has(name):
    # nothing added silently: the only projections are the skips named for torchvision's modules
    names = {p.id.rsplit(".", 1)[-1] for p in skiptrain.check_model(config(name)).projections.values()}
    assert names <= {"downsample", "proj"}


@pytest.mark.parametrize("name", ALL)
def test_b_state_dict_keys_are_torchvisions(name):
    tv = torchvision_model(name)
    sk = skiptrain.build_model(config(name))
    # the same keys and shapes (the order may differ: torchvision registers RegNet's `proj` before `f`)
    assert {k: tuple(v.shape) for k, v in sk.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    sk.load_state_dict(tv.state_dict(), strict=True)
    # what the state dict does not hold: dropout and stochastic-depth rates (ConvNeXt's rise over the blocks)
    modules = dict(sk.named_modules())
    rates = [(path, module.p) for path, module in tv.named_modules() if isinstance(getattr(module, "p", None), float)]
    assert [(path, modules[path].p) for path, _ in rates if path in modules] == \
        [(path, p) for path, p in rates if path in modules]  # EfficientNet leaves out the unused ones


@pytest.mark.parametrize("name", heavy(ALL))
def test_c_outputs_are_bitwise_torchvisions(name):
    tv = torchvision_model(name)
    state = randomized_state(tv)
    tv.load_state_dict(state, strict=True)
    sk = skiptrain.build_model(config(name))
    sk.load_state_dict(state, strict=True)
    tv.eval()
    sk.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = tv(x)
        got = sk(x)
    assert expected.shape == (2, 1000) and torch.isfinite(expected).all() and expected.std() > 0
    assert torch.equal(got, expected), f"max difference {(got - expected).abs().max().item()}"


@pytest.mark.parametrize("name", heavy(ALL, light={"squeezenet1_1"}))
def test_d_onnx_export_verifies(name, tmp_path):
    report = skiptrain.api.export(config(name), tmp_path / f"{name}.onnx")
    assert (tmp_path / f"{name}.onnx").is_file()
    assert report["checks"] and all(c["max_abs"] <= 1e-3 for c in report["checks"])  # a failed check raises


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_e_init_writes_it(name, tmp_path):
    target = tmp_path / f"{name}.yaml"
    result = invoke("init", name, "--output", target)
    assert result.exit_code == 0, result.output
    assert target.read_text() == config(name).read_text() == template_text(name)


def test_init_lists_the_zoo():
    result = invoke("init", "--list")
    assert result.exit_code == 0, result.output
    for name in ZOO_NAMES:
        assert name in result.output


def test_every_zoo_config_passes_the_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    from skiptrain.schema import config_schema

    validator = jsonschema.Draft202012Validator(config_schema())
    for name in ALL:
        errors = [f"{list(e.absolute_path)}: {e.message[:200]}"
                  for e in validator.iter_errors(yaml.safe_load(config(name).read_text()))]
        assert not errors, (name, errors[:3])


def test_configs_imagenet_links_to_the_zoos_resnets():
    for name in ("resnet18", "resnet34", "resnet50"):
        assert (IMAGENET / f"{name}.yaml").resolve() == (ZOO / f"{name}.yaml").resolve()
