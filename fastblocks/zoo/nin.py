"""Network in Network (Lin et al. 2013), ImageNet variant as in seed 003.

Four NiN blocks (conv kxk -> ReLU -> conv1x1 -> ReLU -> conv1x1 -> ReLU, all
biased, no BN): 3->96 (11x11 s4 p0), 96->256 (5x5 p2), 256->384 (3x3 p1) and
384->num_classes (3x3 p1), with 3x3 stride-2 max-pools after the first three
and dropout 0.5 before the last; global average pooling gives the logits.
The 11x11/4 stem needs inputs of at least 67x67 (seed: 224x224, giving a 5x5
final map).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from .layers import check_drop_rate, check_num_classes, init_weights
from .registry import register_model

__all__ = ["NiN", "nin", "nin_block", "MIN_INPUT_SIZE"]

MIN_INPUT_SIZE = 67


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    """NiN block: ``nn.Sequential`` with children ``conv1, act1, conv2, act2,
    conv3, act3`` (kxk conv, then two 1x1 convs, each followed by ReLU).

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H', W')`` with
    ``H' = (H + 2 * padding - kernel_size) // stride + 1``.
    """
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
            act1=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(out_channels, out_channels, 1),
            act2=nn.ReLU(inplace=True),
            conv3=nn.Conv2d(out_channels, out_channels, 1),
            act3=nn.ReLU(inplace=True),
        )
    )


class NiN(nn.Module):
    """Network in Network classifier.

    Args:
        num_classes: outputs (= channels of the last NiN block).
        drop_rate: dropout before the last block (seed: 0.5).

    Shapes: ``(N, 3, H, W) -> (N, num_classes)`` for ``H, W >= 67``.

    Structure: ``features`` = ``nn.Sequential(block1, pool1, block2, pool2,
    block3, pool3, drop, block4)``; output = spatial mean.
    """

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.5) -> None:
        super().__init__()
        check_num_classes(num_classes)
        check_drop_rate(drop_rate)
        self.features = nn.Sequential(
            OrderedDict(
                block1=nin_block(3, 96, 11, 4, 0),
                pool1=nn.MaxPool2d(3, stride=2),
                block2=nin_block(96, 256, 5, 1, 2),
                pool2=nn.MaxPool2d(3, stride=2),
                block3=nin_block(256, 384, 3, 1, 1),
                pool3=nn.MaxPool2d(3, stride=2),
                drop=nn.Dropout(drop_rate),
                block4=nin_block(384, num_classes, 3, 1, 1),
            )
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < MIN_INPUT_SIZE or x.shape[-2] < MIN_INPUT_SIZE:
            raise ValueError(
                f"NiN needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got {tuple(x.shape[-2:])}"
            )
        return self.features(x).mean((2, 3))


@register_model
def nin(num_classes: int = 1000, drop_rate: float = 0.5) -> NiN:
    """Network in Network; ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return NiN(num_classes=num_classes, drop_rate=drop_rate)
