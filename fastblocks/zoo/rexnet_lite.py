"""ReXNet-lite (ReXNetV1_lite, Han et al. CVPR 2021), seed 004.

Differences from ReXNet (timm ``rexnet_*``): no SE, ReLU6 everywhere (no SiLU),
channel counts rounded with ``make_divisible(., 8)``, final block width 164
(base), and a ``1280 -> 1024`` 1x1 conv/BN/ReLU6 head before the classifier.

16 linear bottlenecks (stages of 1, 2, 2, 3, 3, 5 blocks; strides 1, 2, 2, 2,
1, 2; expansion 1 for the first block, 6 otherwise).  Channels grow linearly
from 16 by ``164 / 15`` per block.  A block whose input is narrower than its
output adds the input to its first ``in_channels`` output channels
("partial" residual) when the stride is 1.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List

import torch
import torch.nn as nn

from .layers import check_drop_rate, check_num_classes, check_positive, conv_bn_act, init_weights, make_divisible
from .registry import register_model

__all__ = [
    "RexLinearBottleneck",
    "ReXNetLite",
    "rexnet_lite",
    "rexnet_lite_1_0",
    "rexnet_lite_1_3",
    "rexnet_lite_1_5",
    "rexnet_lite_2_0",
]


class RexLinearBottleneck(nn.Module):
    """ReXNet-lite inverted bottleneck (no SE).

    ``self.conv`` is an ``nn.Sequential`` with children ``expand``
    (conv1x1/bn/ReLU6; absent when ``expand_ratio == 1``), ``dw`` (depthwise
    conv kxk stride/bn/ReLU6) and ``project`` (conv1x1/bn).  When
    ``self.use_shortcut`` (stride 1 and ``in_channels <= out_channels``) the
    input is added to the first ``in_channels`` output channels.

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int = 3, stride: int = 1
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_shortcut = stride == 1 and in_channels <= out_channels
        dw = in_channels * expand_ratio
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        if expand_ratio != 1:
            layers["expand"] = conv_bn_act(in_channels, dw, 1, act=nn.ReLU6(inplace=True))
        layers["dw"] = conv_bn_act(dw, dw, kernel_size, stride, groups=dw, act=nn.ReLU6(inplace=True))
        layers["project"] = conv_bn_act(dw, out_channels, 1)
        self.conv = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if not self.use_shortcut:
            return out
        if self.in_channels == self.out_channels:
            return out + x
        c = self.in_channels
        return torch.cat((out[:, :c] + x, out[:, c:]), dim=1)


class ReXNetLite(nn.Module):
    """ReXNetV1-lite classifier.

    Args:
        multiplier: width multiplier (> 0); official sizes 1.0, 1.3, 1.5, 2.0.
        num_classes: classifier outputs.
        drop_rate: dropout before the classifier (seed: 0.2).
        kernel_conf: 6 odd digits, depthwise kernel size per stage (seed: "333333").
        fix_head_stem: keep stem (32) and penultimate (1280) widths fixed for any multiplier.
        input_ch, final_ch: channel schedule (start 16, total growth 164).

    Shapes: ``(N, 3, H, W) -> (N, num_classes)``; reference input 224x224
    (total stride 32).

    Structure: ``features`` = ``nn.Sequential(stem conv3x3 s2/bn/ReLU6,
    16 x RexLinearBottleneck, conv1x1/bn/ReLU6 to pen_channels)``; global
    average pool; ``output`` = ``nn.Sequential(conv (1x1, pen->1024, bias),
    bn, act (ReLU6), drop, fc (1x1 conv 1024->num_classes, bias))``.
    """

    def __init__(
        self,
        multiplier: float = 1.0,
        num_classes: int = 1000,
        drop_rate: float = 0.2,
        kernel_conf: str = "333333",
        fix_head_stem: bool = False,
        input_ch: int = 16,
        final_ch: int = 164,
        divisible_value: int = 8,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        multiplier = check_positive("multiplier", multiplier)
        check_drop_rate(drop_rate)
        if not isinstance(kernel_conf, str) or len(kernel_conf) != 6 or any(ch not in "13579" for ch in kernel_conf):
            raise ValueError(f"kernel_conf must be 6 odd digits such as '333333', got {kernel_conf!r}")
        layers = (1, 2, 2, 3, 3, 5)
        stage_strides = (1, 2, 2, 2, 1, 2)
        strides = [s if i == 0 else 1 for n, s in zip(layers, stage_strides) for i in range(n)]
        kernels = [int(k) for n, k in zip(layers, kernel_conf) for _ in range(n)]
        ts = [1] * layers[0] + [6] * sum(layers[1:])
        num_blocks = sum(layers)

        def div(v: float) -> int:
            return make_divisible(int(round(v * multiplier)), divisible_value)

        planes = input_ch / multiplier if multiplier < 1.0 else float(input_ch)
        first = 32 / multiplier if (multiplier < 1.0 or fix_head_stem) else 32.0
        first_ch = div(first)
        in_chs: List[int] = []
        out_chs: List[int] = []
        for i in range(num_blocks):
            if i == 0:
                in_chs.append(first_ch)
                out_chs.append(div(planes))
            else:
                in_chs.append(div(planes))
                planes += final_ch / (num_blocks - 1)
                out_chs.append(div(planes))

        features: List[nn.Module] = [conv_bn_act(3, first_ch, 3, 2, act=nn.ReLU6(inplace=True))]
        for c_in, c_out, t, k, s in zip(in_chs, out_chs, ts, kernels, strides):
            features.append(RexLinearBottleneck(c_in, c_out, t, k, s))
        pen = int(1280 * multiplier) if (multiplier > 1.0 and not fix_head_stem) else 1280
        features.append(conv_bn_act(out_chs[-1], pen, 1, act=nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*features)
        self.num_features = pen
        self.output = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(pen, 1024, 1, bias=True),
                bn=nn.BatchNorm2d(1024),
                act=nn.ReLU6(inplace=True),
                drop=nn.Dropout(drop_rate),
                fc=nn.Conv2d(1024, num_classes, 1, bias=True),
            )
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.mean((2, 3), keepdim=True)
        return self.output(x).flatten(1)


@register_model
def rexnet_lite(
    multiplier: float = 1.0,
    num_classes: int = 1000,
    drop_rate: float = 0.2,
    kernel_conf: str = "333333",
    fix_head_stem: bool = False,
) -> ReXNetLite:
    """ReXNet-lite with any width ``multiplier``; ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return ReXNetLite(
        multiplier=multiplier,
        num_classes=num_classes,
        drop_rate=drop_rate,
        kernel_conf=kernel_conf,
        fix_head_stem=fix_head_stem,
    )


@register_model
def rexnet_lite_1_0(num_classes: int = 1000, drop_rate: float = 0.2) -> ReXNetLite:
    """ReXNet-lite x1.0 (4.74M params at 1000 classes); ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return ReXNetLite(1.0, num_classes=num_classes, drop_rate=drop_rate)


@register_model
def rexnet_lite_1_3(num_classes: int = 1000, drop_rate: float = 0.2) -> ReXNetLite:
    """ReXNet-lite x1.3; ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return ReXNetLite(1.3, num_classes=num_classes, drop_rate=drop_rate)


@register_model
def rexnet_lite_1_5(num_classes: int = 1000, drop_rate: float = 0.2) -> ReXNetLite:
    """ReXNet-lite x1.5; ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return ReXNetLite(1.5, num_classes=num_classes, drop_rate=drop_rate)


@register_model
def rexnet_lite_2_0(num_classes: int = 1000, drop_rate: float = 0.2) -> ReXNetLite:
    """ReXNet-lite x2.0; ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return ReXNetLite(2.0, num_classes=num_classes, drop_rate=drop_rate)
