"""Fused depthwise conv -> BatchNorm -> activation module."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .. import ops
from ..ops.sync_batchnorm import need_sync
from .._act import canonical_act
from ._common import autocast_input, bn_arguments


class DWConvBNAct(nn.Module):
    """Depthwise k x k conv, BatchNorm and activation in one op (``fastblocks.ops.dwconv_bn_act``).

    Parameters ``weight`` (C, 1, k, k) and optional ``bias`` (C,) keep the conv's names. The BN
    lives in ``bn`` (a BatchNorm2d, usually an :class:`AbsorbedBatchNorm2d` left at the original
    BN's place in the model so state_dict keys do not change); it is referenced, not registered,
    when ``own_bn=False``. Input (N, C, H, W) -> (N, C, H_out, W_out). Saves x and per-channel
    statistics for backward.
    """

    def __init__(self, weight: nn.Parameter, bias: Optional[nn.Parameter], bn: nn.modules.batchnorm._BatchNorm,
                 stride: int, padding: Union[str, int], act: str = "silu", own_bn: bool = False,
                 backend: Optional[str] = None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias
        if own_bn:
            self.bn = bn
        else:
            object.__setattr__(self, "_bn_ref", bn)
        self.stride = stride
        self.padding = padding
        self.act = canonical_act(act)
        self.backend = backend

    @property
    def batchnorm(self) -> nn.modules.batchnorm._BatchNorm:
        return self._modules["bn"] if "bn" in self._modules else self._bn_ref

    @classmethod
    def create(cls, channels: int, kernel_size: int = 3, stride: int = 1, padding: Union[str, int] = "same",
               act: str = "silu", eps: float = 1e-5, momentum: Optional[float] = 0.1,
               backend: Optional[str] = None) -> "DWConvBNAct":
        """A standalone block that owns its conv weight and BatchNorm (keys: weight, bn.*)."""
        weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))
        nn.init.kaiming_normal_(weight, mode="fan_out")
        bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
        return cls(weight, None, bn, stride, padding, act, own_bn=True, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.batchnorm
        x, weight, bias = autocast_input(x, self.weight, self.bias)
        if bn.training and getattr(bn, "synchronised", False) and need_sync(bn.process_group):
            # SyncBatchNorm absorbed: statistics all-reduced over its process group.
            args = bn_arguments(bn, True)
            return ops.sync_dwconv_bn_act(x, weight, args["bn_weight"], args["bn_bias"], args["running_mean"],
                                          args["running_var"], conv_bias=bias, stride=self.stride,
                                          padding=self.padding, momentum=args["momentum"], eps=args["eps"],
                                          act=self.act, process_group=bn.process_group, backend=self.backend)
        return ops.dwconv_bn_act(x, weight, conv_bias=bias, stride=self.stride, padding=self.padding,
                                 act=self.act, backend=self.backend, **bn_arguments(bn, bn.training))

    def extra_repr(self) -> str:
        c, _, k, _ = self.weight.shape
        return f"{c}, kernel_size={k}, stride={self.stride}, padding={self.padding!r}, act={self.act!r}"
