"""Pre-activation SE-ResNet-18 ("SENet18" of seed 003).

CIFAR-style ResNet-18 body (3x3 stride-1 stem conv/BN/ReLU, no max-pool,
stages 64/128/256/512 with strides 1/2/2/2, two blocks each) built from
pre-activation basic blocks with squeeze-and-excitation (reduction 16, 1x1
convs with bias, exactly as the seed -- the seed also uses ``nn.Conv2d`` rather
than ``nn.Linear`` for the SE FCs, so parameter counts are identical).
Projection shortcuts are a bare 1x1 conv applied to the pre-activated input.

Head: by default global average pool + ``Linear(512, num_classes)``, which
works for any input (native 32x32 CIFAR input gives a 4x4 final map).  The seed
instead hard-codes ``avg_pool2d(4)`` + flatten + ``Linear(25088, num_classes)``,
which only works for 224x224 inputs (28x28 final map -> 7x7 after pooling);
``seed_head=True`` reproduces that exactly (36,344,224 parameters with 1000
classes vs 11,768,224 with the default head; 11,260,354 with 10 classes).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional

import torch
import torch.nn as nn

from .layers import SqueezeExcite, check_num_classes, conv_bn_act, init_weights
from .registry import register_model

__all__ = ["PreActSEBlock", "PreActSEResNet", "preact_se_resnet18"]


def _bn_act(channels: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(channels), act=nn.ReLU(inplace=True)))


class PreActSEBlock(nn.Module):
    """Pre-activation basic block with SE.

    ``a = pre1(x)`` (bn/ReLU); ``out = conv1(a)`` (conv3x3 stride);
    ``out = conv2(pre2(out))`` (bn/ReLU then conv3x3); ``out = se(out)``;
    ``return out + (shortcut(a) if shortcut is not None else x)`` with
    ``shortcut`` a bias-free conv1x1 stride.  No activation after the add.

    Shapes: ``(N, in_channels, H, W) -> (N, planes, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1, reduction: int = 16) -> None:
        super().__init__()
        self.pre1 = _bn_act(in_channels)
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, padding=1, bias=False)
        self.pre2 = _bn_act(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.se = SqueezeExcite(planes, planes // reduction)
        self.shortcut: Optional[nn.Conv2d] = None
        if stride != 1 or in_channels != planes:
            self.shortcut = nn.Conv2d(in_channels, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre1(x)
        shortcut = x if self.shortcut is None else self.shortcut(a)
        out = self.conv2(self.pre2(self.conv1(a)))
        return self.se(out) + shortcut


class PreActSEResNet(nn.Module):
    """Pre-activation SE-ResNet (CIFAR-style stem).

    Args:
        layers: blocks per stage (4 stages, widths 64/128/256/512).
        num_classes: classifier outputs.
        seed_head: use the seed's ``AvgPool2d(4)`` + flatten +
            ``Linear(512*7*7, num_classes)`` head (224x224 input only).

    Shapes: ``(N, 3, H, W) -> (N, num_classes)``; total stride 8 (32x32 ->
    4x4).  With ``seed_head=True`` the input must be 224x224.

    Structure: ``stem`` (conv3x3/bn/ReLU) -> ``layer1..4`` -> pool -> ``fc``.
    """

    def __init__(self, layers: List[int], num_classes: int = 1000, seed_head: bool = False) -> None:
        super().__init__()
        check_num_classes(num_classes)
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive ints, got {layers!r}")
        self.seed_head = bool(seed_head)
        self.stem = conv_bn_act(3, 64, 3, 1, act=nn.ReLU(inplace=True))
        in_ch = 64
        stages: List[nn.Sequential] = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(PreActSEBlock(in_ch, planes, 2 if (i > 0 and j == 0) else 1))
                in_ch = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AvgPool2d(4) if self.seed_head else None
        self.fc = nn.Linear(512 * 7 * 7 if self.seed_head else 512, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.seed_head and tuple(x.shape[-2:]) != (224, 224):
            raise ValueError(f"seed_head=True needs 224x224 input, got {tuple(x.shape[-2:])}")
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.pool is not None:
            x = self.pool(x).flatten(1)
        else:
            x = x.mean((2, 3))
        return self.fc(x)


@register_model
def preact_se_resnet18(num_classes: int = 1000, seed_head: bool = False) -> PreActSEResNet:
    """Pre-activation SE-ResNet-18 (seed 003's SENet18);
    ``(N, 3, 32, 32) -> (N, num_classes)`` (any size with the default head)."""
    return PreActSEResNet([2, 2, 2, 2], num_classes=num_classes, seed_head=seed_head)
