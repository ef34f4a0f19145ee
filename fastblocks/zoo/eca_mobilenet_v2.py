"""ECA-MobileNetV2 (ECA-Net, Wang et al. CVPR 2020), as in seed 002.

MobileNetV2 in which every inverted residual gets an :class:`EcaLayer` right
after its linear projection (1x1 conv -> BN), before the residual add.  The ECA
kernel size is 1 for blocks whose (unscaled) output channels are < 96 and 3
otherwise; the classifier dropout is 0.25.  Channel widths follow the seed /
official ECA-Net code: ``int(c * width_mult)`` (no rounding to multiples of 8).

With ``num_classes=1000`` the model has 3,504,903 trainable parameters
(torchvision ``mobilenet_v2``: 3,504,872, plus 10 ECA layers with k=1 and 7
with k=3) and 3,539,015 counting BN running mean/var -- exactly the seed's
Paddle summary.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List

import torch
import torch.nn as nn

from .layers import EcaLayer, check_drop_rate, check_num_classes, check_positive, conv_bn_act, init_weights
from .registry import register_model

__all__ = ["EcaInvertedResidual", "EcaMobileNetV2", "eca_mobilenet_v2"]

# t (expansion), c (output channels), n (repeats), s (first stride)
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class EcaInvertedResidual(nn.Module):
    """MobileNetV2 inverted residual with ECA after the projection.

    ``self.conv`` is an ``nn.Sequential`` with children
    ``expand`` (conv1x1/bn/ReLU6; absent when ``expand_ratio == 1``),
    ``dw`` (depthwise conv3x3/bn/ReLU6), ``project`` (conv1x1/bn) and
    ``eca`` (:class:`EcaLayer`).  ``self.use_res`` is True when
    ``stride == 1 and in_channels == out_channels``; then
    ``out = x + self.conv(x)``.

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, eca_kernel_size: int
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_res = stride == 1 and in_channels == out_channels
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        if expand_ratio != 1:
            layers["expand"] = conv_bn_act(in_channels, hidden, 1, act=nn.ReLU6(inplace=True))
        layers["dw"] = conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6(inplace=True))
        layers["project"] = conv_bn_act(hidden, out_channels, 1)
        layers["eca"] = EcaLayer(out_channels, eca_kernel_size)
        self.conv = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


class EcaMobileNetV2(nn.Module):
    """ECA-MobileNetV2 classifier.

    Args:
        num_classes: classifier outputs.
        width_mult: channel width multiplier (> 0).
        drop_rate: dropout before the classifier (seed: 0.25).

    Shapes: ``(N, 3, H, W) -> (N, num_classes)`` (any ``H, W >= 1``; the
    reference resolution is 224x224, giving a 7x7 final feature map).

    Structure: ``features`` = ``nn.Sequential(stem conv3x3/bn/ReLU6 (stride 2),
    17 x EcaInvertedResidual, head conv1x1/bn/ReLU6)``; global average pool;
    ``classifier`` = ``nn.Sequential(Dropout, Linear)``.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, drop_rate: float = 0.25) -> None:
        super().__init__()
        check_num_classes(num_classes)
        check_positive("width_mult", width_mult)
        check_drop_rate(drop_rate)
        in_ch = int(32 * width_mult)
        self.last_channel = int(1280 * max(1.0, width_mult))
        if in_ch < 1 or any(int(c * width_mult) < 1 for _, c, _, _ in _SETTINGS):
            raise ValueError(f"width_mult={width_mult!r} is too small: some layer would have 0 channels")
        features: List[nn.Module] = [conv_bn_act(3, in_ch, 3, 2, act=nn.ReLU6(inplace=True))]
        for t, c, n, s in _SETTINGS:
            out_ch = int(c * width_mult)
            k = 1 if c < 96 else 3
            for i in range(n):
                features.append(EcaInvertedResidual(in_ch, out_ch, s if i == 0 else 1, t, k))
                in_ch = out_ch
        features.append(conv_bn_act(in_ch, self.last_channel, 1, act=nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(self.last_channel, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.mean((2, 3))
        return self.classifier(x)


@register_model
def eca_mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, drop_rate: float = 0.25) -> EcaMobileNetV2:
    """ECA-MobileNetV2; ``(N, 3, 224, 224) -> (N, num_classes)``.

    3,504,903 trainable parameters at ``num_classes=1000, width_mult=1.0``.
    """
    return EcaMobileNetV2(num_classes=num_classes, width_mult=width_mult, drop_rate=drop_rate)
