"""Fused BatchNorm(+activation) modules that keep nn.BatchNorm2d's parameter and buffer names."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from .._act import canonical_act
from ._common import bn_arguments, share_bn_tensors


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an activation, one fused op (``fastblocks.ops.bn_act``).

    Same parameters / buffers / state_dict keys as nn.BatchNorm2d (weight, bias, running_mean,
    running_var, num_batches_tracked). Input (N, C, H, W); output like the input. Saves only the
    input and per-channel statistics for backward.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, act: str = "identity",
                 backend: Optional[str] = None, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.act = canonical_act(act)
        self.backend = backend

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, act: str = "identity",
                       backend: Optional[str] = None) -> "BatchNormAct2d":
        """A fused module sharing ``bn``'s parameter and buffer tensors."""
        m = cls(bn.num_features, act=act, backend=backend, device="meta")
        share_bn_tensors(m, bn)
        m.train(bn.training)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return ops.bn_act(x, act=self.act, backend=self.backend, **bn_arguments(self, self.training))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act={self.act!r}"


class AbsorbedBatchNorm2d(nn.BatchNorm2d):
    """Holds a BatchNorm2d's parameters and buffers (keys unchanged) whose math now runs inside a
    preceding fused conv (:class:`fastblocks.nn.DWConvBNAct`); its forward passes x through."""

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> "AbsorbedBatchNorm2d":
        m = cls(bn.num_features, device="meta")
        share_bn_tensors(m, bn)
        m.train(bn.training)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return super().extra_repr() + ", absorbed into the preceding fused conv"
