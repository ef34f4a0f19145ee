"""ShuffleNet V1 (Zhang et al. CVPR 2018) as in seed 003 (groups 3 and 8).

Follows the seed's layout: a plain biased 3x3 stride-2 stem conv (no BN/ReLU),
3x3 max-pool, three stages of 4 / 8 / 4 ShuffleUnits (the first of each stage
is the stride-2 "concat" unit whose shortcut is a 3x3 average pool), global
average pool and a Linear classifier.  The grouped 1x1 convs are biased (as in
the seed) and followed by BN; the first unit of stage 2 uses a dense
(non-grouped) compress conv.  Stage widths for width 1.0: g=3 -> 240/480/960,
g=8 -> 384/768/1536; the bottleneck width is ``out_channels // 4``.

Differences from the seed: ``forward`` returns logits (the seed returns
``log_softmax``); an optional ``width_mult`` scales stage widths (rounded to a
multiple of ``4 * groups``; the 24-channel stem is kept).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List

import torch
import torch.nn as nn

from .layers import ChannelShuffle, check_num_classes, check_positive, conv_bn_act, init_weights
from .registry import register_model

__all__ = ["ShuffleUnit", "ShuffleNetV1", "shufflenet_v1", "shufflenet_v1_g3", "shufflenet_v1_g8"]

_STAGE_CHANNELS = {3: (240, 480, 960), 8: (384, 768, 1536)}
SUPPORTED_GROUPS = tuple(sorted(_STAGE_CHANNELS))
_STAGE_REPEATS = (3, 7, 3)  # units after the first (stride-2) unit of each stage
_STEM_CHANNELS = 24


class ShuffleUnit(nn.Module):
    """ShuffleNet V1 unit.

    ``compress`` (grouped conv1x1 (bias)/bn/ReLU) -> ``shuffle``
    (:class:`ChannelShuffle`) -> ``dw`` (depthwise conv3x3 stride/bn, no act)
    -> ``expand`` (grouped conv1x1 (bias)/bn, no act); then
    ``combine == "add"``: ``act(x + out)`` (stride 1, in == out channels) or
    ``combine == "concat"``: ``act(cat(pool(x), out))`` with
    ``pool = AvgPool2d(3, 2, 1)`` and stride 2; ``expand`` then produces
    ``out_channels - in_channels`` channels.

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H / s, W / s)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, groups: int, grouped_compress: bool = True, combine: str = "add"
    ) -> None:
        super().__init__()
        if combine not in ("add", "concat"):
            raise ValueError(f"combine must be 'add' or 'concat', got {combine!r}")
        if combine == "add" and in_channels != out_channels:
            raise ValueError("an 'add' ShuffleUnit needs in_channels == out_channels")
        self.combine = combine
        mid = out_channels // 4
        stride = 2 if combine == "concat" else 1
        expand_out = out_channels - in_channels if combine == "concat" else out_channels
        self.compress = conv_bn_act(
            in_channels, mid, 1, groups=groups if grouped_compress else 1, act=nn.ReLU(inplace=True), bias=True
        )
        self.shuffle = ChannelShuffle(groups)
        self.dw = conv_bn_act(mid, mid, 3, stride, groups=mid)
        self.expand = conv_bn_act(mid, expand_out, 1, groups=groups, bias=True)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if combine == "concat" else None
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.dw(self.shuffle(self.compress(x))))
        if self.pool is not None:
            out = torch.cat((self.pool(x), out), dim=1)
        else:
            out = x + out
        return self.act(out)


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 classifier.

    Args:
        groups: 1x1 group-conv groups, one of ``SUPPORTED_GROUPS`` (3, 8).
        num_classes: classifier outputs.
        width_mult: stage-width multiplier (> 0), paper's scale factor ``s``.

    Shapes: ``(N, 3, H, W) -> (N, num_classes)`` logits; reference input
    224x224 (total stride 32, 7x7 final map).

    Structure: ``conv1`` (plain biased conv3x3 s2) -> ``maxpool`` ->
    ``stage2..4`` (``nn.Sequential`` of :class:`ShuffleUnit`) -> global
    average pool -> ``fc``.
    """

    def __init__(self, groups: int = 3, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups not in _STAGE_CHANNELS:
            raise ValueError(f"shufflenet_v1 groups must be one of {SUPPORTED_GROUPS}, got {groups!r}")
        check_num_classes(num_classes)
        width_mult = check_positive("width_mult", width_mult)
        q = 4 * groups
        stage_ch = [max(q, int(round(c * width_mult / q)) * q) for c in _STAGE_CHANNELS[groups]]
        self.groups = groups
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, 3, stride=2, padding=1, bias=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = _STEM_CHANNELS
        stages: List[nn.Sequential] = []
        for idx, (out_ch, repeats) in enumerate(zip(stage_ch, _STAGE_REPEATS)):
            if out_ch <= in_ch:
                raise ValueError(f"width_mult={width_mult!r} is too small for groups={groups}")
            units: "OrderedDict[str, nn.Module]" = OrderedDict()
            units["unit0"] = ShuffleUnit(in_ch, out_ch, groups, grouped_compress=idx > 0, combine="concat")
            for r in range(repeats):
                units[f"unit{r + 1}"] = ShuffleUnit(out_ch, out_ch, groups, combine="add")
            stages.append(nn.Sequential(units))
            in_ch = out_ch
        self.stage2, self.stage3, self.stage4 = stages
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean((2, 3)))


@register_model
def shufflenet_v1(groups: int = 3, num_classes: int = 1000, width_mult: float = 1.0) -> ShuffleNetV1:
    """ShuffleNet V1 with ``groups`` in (3, 8); ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return ShuffleNetV1(groups=groups, num_classes=num_classes, width_mult=width_mult)


@register_model
def shufflenet_v1_g3(num_classes: int = 1000, width_mult: float = 1.0) -> ShuffleNetV1:
    """ShuffleNet V1, 3 groups; ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return ShuffleNetV1(groups=3, num_classes=num_classes, width_mult=width_mult)


@register_model
def shufflenet_v1_g8(num_classes: int = 1000, width_mult: float = 1.0) -> ShuffleNetV1:
    """ShuffleNet V1, 8 groups; ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return ShuffleNetV1(groups=8, num_classes=num_classes, width_mult=width_mult)
