"""Shared building blocks for the :mod:`fastblocks.zoo` models.

Structural conventions (relied on by the fused-op patcher):

* Every convolution followed by batch norm (and optionally an activation) is a
  plain :class:`torch.nn.Sequential` whose children are named ``conv``, ``bn``
  and ``act`` (built by :func:`conv_bn_act`).  The children are therefore both
  consecutive ``nn.Sequential`` children *and* reachable as attributes.
* Depthwise convolutions are ``nn.Conv2d(C, C, k, stride, padding=k // 2,
  groups=C, bias=False)``.
* Activations are plain modules (``nn.ReLU``, ``nn.ReLU6``, ``nn.SiLU``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn

__all__ = [
    "ChannelShuffle",
    "EcaLayer",
    "SqueezeExcite",
    "check_drop_rate",
    "check_num_classes",
    "check_positive",
    "conv_bn_act",
    "eca_kernel_size",
    "init_weights",
    "make_divisible",
]


# --------------------------------------------------------------------------- #
# argument validation helpers
# --------------------------------------------------------------------------- #
def check_num_classes(num_classes: int) -> int:
    """Validate a class count; returns it unchanged or raises ``ValueError``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def check_positive(name: str, value: float) -> float:
    """Validate a strictly positive finite number (e.g. a width multiplier)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_drop_rate(drop_rate: float) -> float:
    """Validate a dropout probability in ``[0, 1)``."""
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be a number in [0, 1), got {drop_rate!r}")
    return float(drop_rate)


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (TF-slim rule).

    The result is at least ``min_value`` (default ``divisor``) and never more
    than 10% below ``value``.
    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


# --------------------------------------------------------------------------- #
# conv / bn / act
# --------------------------------------------------------------------------- #
def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    stride: int = 1,
    groups: int = 1,
    act: Optional[nn.Module] = None,
    bias: bool = False,
) -> nn.Sequential:
    """``Conv2d -> BatchNorm2d [-> act]`` as a plain ``nn.Sequential``.

    Children are named ``conv``, ``bn`` and (when ``act`` is given) ``act``.
    Padding is ``kernel_size // 2`` ("same" for odd kernels at stride 1).

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, ceil(H / stride),
    ceil(W / stride))`` for odd ``kernel_size``.
    """
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    layers["conv"] = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding=kernel_size // 2,
        groups=groups,
        bias=bias,
    )
    layers["bn"] = nn.BatchNorm2d(out_channels)
    if act is not None:
        layers["act"] = act
    return nn.Sequential(layers)


def init_weights(model: nn.Module) -> None:
    """Standard initialisation: Kaiming-normal (fan_out) convs, unit BN, N(0, 0.01) Linear.

    ``nn.Conv1d`` (the ECA kernel) keeps PyTorch's default init.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- #
# attention layers
# --------------------------------------------------------------------------- #
def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """Adaptive ECA kernel size (ECA-Net paper, Eq. 12).

    ``t = int(abs((log2(C) + beta) / gamma))``; ``k = t`` if ``t`` is odd else
    ``t + 1``.  E.g. C=64 -> 3, C=128..1024 -> 5, C=2048 -> 7.
    """
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


class EcaLayer(nn.Module):
    """Efficient Channel Attention (ECA-Net).

    ``y = mean_{H,W}(x)`` -> 1-D conv of size ``k`` across the channel axis
    (no bias) -> sigmoid -> ``x * y``.

    Args:
        channels: number of input channels ``C``; used for the adaptive kernel
            size when ``kernel_size`` is None.
        kernel_size: odd 1-D kernel size; ``None`` selects it adaptively from
            ``channels`` with :func:`eca_kernel_size`.
        gamma, beta: parameters of the adaptive rule.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.

    The only submodule is ``self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2,
    bias=False)``; the layer has exactly ``k`` parameters.
    """

    def __init__(
        self,
        channels: Optional[int] = None,
        kernel_size: Optional[int] = None,
        gamma: float = 2,
        beta: float = 1,
    ) -> None:
        super().__init__()
        if kernel_size is None:
            if channels is None:
                raise ValueError("EcaLayer needs `channels` or `kernel_size`")
            kernel_size = eca_kernel_size(channels, gamma, beta)
        if (
            isinstance(kernel_size, bool)
            or not isinstance(kernel_size, int)
            or kernel_size < 1
            or kernel_size % 2 == 0
        ):
            raise ValueError(f"EcaLayer kernel_size must be a positive odd int, got {kernel_size!r}")
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    @property
    def kernel_size(self) -> int:
        """The 1-D kernel size ``k``."""
        return int(self.conv.kernel_size[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        y = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        y = self.conv(y.view(n, 1, c))  # (N, 1, C): channels are the 1-D axis
        y = torch.sigmoid(y).view(n, c, 1, 1)
        return x * y


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation with 1x1 convolutions (SENet).

    ``s = mean_{H,W}(x)`` -> ``fc1`` (C->R, bias) -> ReLU -> ``fc2`` (R->C,
    bias) -> sigmoid -> ``x * s``.

    Args:
        channels: ``C``.
        reduced_channels: ``R``; defaults to ``max(1, channels // reduction)``.
        reduction: channel reduction ratio used when ``reduced_channels`` is None.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.  Parameters: ``2*C*R + R + C``.

    Attributes: ``fc1 = nn.Conv2d(C, R, 1)``, ``act = nn.ReLU(inplace=True)``,
    ``fc2 = nn.Conv2d(R, C, 1)``, ``gate = nn.Sigmoid()``.
    """

    def __init__(self, channels: int, reduced_channels: Optional[int] = None, reduction: int = 16) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if reduced_channels is None:
            if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
                raise ValueError(f"reduction must be a positive int, got {reduction!r}")
            reduced_channels = max(1, channels // reduction)
        if isinstance(reduced_channels, bool) or not isinstance(reduced_channels, int) or reduced_channels < 1:
            raise ValueError(f"reduced_channels must be a positive int, got {reduced_channels!r}")
        self.fc1 = nn.Conv2d(channels, reduced_channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced_channels, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.fc2(self.act(self.fc1(s)))
        return x * self.gate(s)


class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle: ``(N, g*c, H, W)`` viewed as ``(N, g, c, H, W)``,
    transposed to ``(N, c, g, H, W)`` and flattened back.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``; ``C`` must be divisible by ``groups``.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = self.groups
        return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
