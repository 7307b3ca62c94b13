"""The reference configs in configs/ build the networks they claim to.

* ImageNet ResNet-18/34/50 have exactly torchvision's parameter counts and state-dict
  layout, and the YAML ResNet-18 computes torchvision's outputs given its weights.
* The CIFAR ResNets have the paper's sizes (He et al. 2016, sec. 4.2, option A
  shortcuts), and each plain-N has exactly resnet-N's parameters.
* Every YAML file under configs/ passes `skiptrain.check_model`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import skiptrain

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))

# torchvision.models.resnet{18,34,50}(weights=None): sum(p.numel() for p in m.parameters())
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
CIFAR_DEPTHS = [20, 32, 44, 56, 110]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sample_shape(shape) -> tuple:
    return tuple(int(d) for d in shape)


# --------------------------------------------------------------------------- ImageNet


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_imagenet_resnet_parameter_count(name):
    path = CONFIGS / "imagenet" / f"{name}.yaml"
    expected = TORCHVISION_PARAMS[name]
    report = skiptrain.check_model(path)
    assert report.params == expected
    assert sample_shape(report.output_shape) == (1000,)
    assert n_params(skiptrain.build_model(path)) == expected


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_imagenet_resnet_state_dict_is_torchvisions(name):
    # No key mapping: the skips' `id: downsample` name the projections as torchvision does.
    torchvision = pytest.importorskip("torchvision")
    tv = getattr(torchvision.models, name)(weights=None)
    assert n_params(tv) == TORCHVISION_PARAMS[name]
    sk = skiptrain.build_model(CONFIGS / "imagenet" / f"{name}.yaml")
    assert list(sk.state_dict()) == list(tv.state_dict())
    sk.load_state_dict(tv.state_dict(), strict=True)


def test_imagenet_resnet18_computes_torchvision_outputs():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    # Fresh BatchNorms are identities in eval mode; give every tensor a random value so a
    # BN or conv paired with the wrong one cannot go unnoticed.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in tv.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen) if "running_var" in name else
                             0.1 * torch.randn(tensor.shape, generator=gen))
    sk = skiptrain.build_model(CONFIGS / "imagenet" / "resnet18.yaml")
    sk.load_state_dict(tv.state_dict(), strict=True)
    tv.eval()
    sk.eval()
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        expected = tv(x)
        got = sk(x)
    assert got.shape == expected.shape == (2, 1000)
    assert torch.equal(got, expected)


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_cifar_plain_has_resnet_parameter_count(depth):
    # Option A shortcuts (`projection: pad`) add no parameters, so the skips are free.
    resnet = skiptrain.check_model(CONFIGS / "cifar" / f"resnet{depth}.yaml")
    plain = skiptrain.check_model(CONFIGS / "cifar" / f"plain{depth}.yaml")
    assert resnet.params == plain.params
    assert sample_shape(resnet.output_shape) == sample_shape(plain.output_shape) == (10,)


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_cifar_resnet_depth_and_size(depth):
    # depth = 6n + 2 weighted layers: the stem, 2 convs in each of 3n blocks, the classifier.
    model = skiptrain.build_model(CONFIGS / "cifar" / f"resnet{depth}.yaml")
    weighted = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weighted) == depth
    assert n_params(model) == skiptrain.check_model(CONFIGS / "cifar" / f"resnet{depth}.yaml").params


def projections(report) -> list:
    found = report.projections
    return list(found.values()) if isinstance(found, dict) else list(found)


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_cifar_shortcuts_are_option_a(depth):
    # Only the two stride-2 blocks need a shortcut projection, and it is the parameter-free zero-pad.
    resnet = projections(skiptrain.check_model(CONFIGS / "cifar" / f"resnet{depth}.yaml"))
    assert sorted(p.id for p in resnet) == ["down2.bn2_proj", "down3.bn2_proj"]
    assert all(p.kind == "pad" and p.params == 0 for p in resnet)
    assert projections(skiptrain.check_model(CONFIGS / "cifar" / f"plain{depth}.yaml")) == []


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_imagenet_projections_are_torchvisions_downsamples(name):
    report = skiptrain.check_model(CONFIGS / "imagenet" / f"{name}.yaml")
    stages = ["layer1.0", "layer2.0", "layer3.0", "layer4.0"] if name == "resnet50" else \
        ["layer2.0", "layer3.0", "layer4.0"]
    found = projections(report)
    assert sorted(p.id for p in found) == [f"{s}.downsample" for s in stages]
    assert all(p.kind == "conv_bn" for p in found)


def test_cifar_resnet20_has_the_papers_0_27M_parameters():
    assert 260_000 <= skiptrain.check_model(CONFIGS / "cifar" / "resnet20.yaml").params <= 280_000


def test_cifar_resnet110_has_the_papers_1_7M_parameters():
    assert 1_650_000 <= skiptrain.check_model(CONFIGS / "cifar" / "resnet110.yaml").params <= 1_750_000


def test_cifar_resnet20_forward():
    model = skiptrain.build_model(CONFIGS / "cifar" / "resnet20.yaml").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


# --------------------------------------------------------------------------- every config

EXPECTED_OUTPUT = {
    "unet.yaml": (3, 64, 64),
    "transformer.yaml": (10,),
    "quickstart.yaml": (10,),
    "mnist1d_resnet.yaml": (10,),
}


def test_configs_exist():
    names = {str(p.relative_to(CONFIGS)) for p in ALL_CONFIGS}
    for depth in CIFAR_DEPTHS:
        assert f"cifar/resnet{depth}.yaml" in names
        assert f"cifar/plain{depth}.yaml" in names
    for name in TORCHVISION_PARAMS:
        assert f"imagenet/{name}.yaml" in names
    assert set(EXPECTED_OUTPUT) <= names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_passes_check_model(path):
    report = skiptrain.check_model(path)
    assert report.params > 0
    rel = str(path.relative_to(CONFIGS))
    if rel.startswith("cifar/"):
        expected = (10,)
    elif rel.startswith("imagenet/"):
        expected = (1000,)
    else:
        expected = EXPECTED_OUTPUT.get(rel)
    if expected is not None:
        assert sample_shape(report.output_shape) == expected


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_starts_with_a_comment(path):
    assert path.read_text().startswith("# "), f"{path} should open with a comment saying what it is"
