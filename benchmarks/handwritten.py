"""ResNet-20 for CIFAR written by hand the way torchvision writes ResNets (``BasicBlock``, a
1x1-conv + BN ``downsample`` where stride or width change), and the maps from its and
torchvision's ResNet-18 state-dict keys to skiptrain's node ids: the baselines that
benchmarks/model_overhead.py times the YAML-built nets against."""
from __future__ import annotations

import re

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: conv3x3-bn-relu-conv3x3-bn, add the (downsampled) input, relu."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class CifarResNet(nn.Module):
    """He et al. (2016) sec. 4.2 ResNet for CIFAR, with 1x1-conv + BN (option B) shortcuts
    where the shape changes, as ``projection: auto`` does in resnet20_cifar10.yaml."""

    def __init__(self, layers: list[int], num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = conv3x3(3, self.inplanes)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[2] * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        for _ in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet([3, 3, 3], num_classes)


def resnet20_key(key: str) -> str:
    """Hand-written ResNet-20 state-dict key -> the key in the model built from resnet20_cifar10.yaml.

    conv1/bn1 -> stem/batchnorm2d_1, fc -> head; layer1.K -> stage1.K; the first (stride-2) block
    of layer2/layer3 is the YAML's down2/down3 (its downsample is the inserted projection
    ``bn2_proj``), and the rest are stage2/stage3 numbered from 0.
    """
    key = re.sub(r"^conv1\.", "stem.", key)
    key = re.sub(r"^bn1\.", "batchnorm2d_1.", key)
    key = re.sub(r"^fc\.", "head.", key)
    key = re.sub(r"^layer1\.(\d+)\.", r"stage1.\1.", key)

    def later_stage(m: re.Match) -> str:
        stage, k = int(m.group(1)), int(m.group(2))
        return f"down{stage}." if k == 0 else f"stage{stage}.{k - 1}."

    key = re.sub(r"^layer([23])\.(\d+)\.", later_stage, key)
    return re.sub(r"^(down[23])\.downsample\.", r"\1.bn2_proj.", key)


def resnet18_key(key: str) -> str:
    """torchvision ResNet-18 key -> configs/imagenet/resnet18.yaml key: the same key (its skips are
    named `downsample`, so its state dict is torchvision's)."""
    return key


