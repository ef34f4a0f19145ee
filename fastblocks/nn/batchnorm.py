"""Fused BatchNorm(+activation) modules that keep nn.BatchNorm2d's parameter and buffer names."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from ..ops.sync_batchnorm import need_sync
from .._act import canonical_act
from ._common import NotScriptable, bn_arguments, share_bn_tensors


class BatchNormAct2d(NotScriptable, nn.BatchNorm2d):
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


class AbsorbedBatchNorm2d(NotScriptable, nn.BatchNorm2d):
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


class SyncBatchNormAct2d(BatchNormAct2d):
    """Replacement for nn.SyncBatchNorm (optionally + activation), synchronising on any device.

    In training mode with an initialised process group of more than one rank it runs
    :func:`fastblocks.ops.sync_bn_act` (statistics all-reduced over ``process_group``, default the
    whole world; running stats updated with the global count); otherwise it is exactly
    :class:`BatchNormAct2d` (eval mode: running statistics, no collectives), as nn.SyncBatchNorm.
    Deliberately *not* an nn.SyncBatchNorm subclass: DistributedDataParallel refuses CPU models
    containing SyncBatchNorm. Keys as nn.BatchNorm2d. Inputs of any rank >= 2 (SyncBatchNorm
    accepts converted BatchNorm1d/3d layers); non-4D inputs run as (N, C, L, 1).
    """

    synchronised = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, act: str = "identity",
                 process_group=None, backend: Optional[str] = None, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, act, backend, device, dtype)
        self.process_group = process_group

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, act: str = "identity",
                       backend: Optional[str] = None) -> "SyncBatchNormAct2d":
        m = super().from_batchnorm(bn, act, backend)
        m.process_group = getattr(bn, "process_group", None)
        return m

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        shape = x.shape
        if x.dim() != 4:
            x = x.reshape(shape[0], shape[1], -1, 1)
        if self.training and need_sync(self.process_group):
            args = bn_arguments(self, True)
            y = ops.sync_bn_act(x, args["bn_weight"], args["bn_bias"], args["running_mean"], args["running_var"],
                                momentum=args["momentum"], eps=args["eps"], act=self.act,
                                process_group=self.process_group, backend=self.backend)
        else:
            y = ops.bn_act(x, act=self.act, backend=self.backend, **bn_arguments(self, self.training))
        return y if y.shape == shape else y.reshape(shape)


class AbsorbedSyncBatchNorm2d(AbsorbedBatchNorm2d):
    """:class:`AbsorbedBatchNorm2d` for an nn.SyncBatchNorm: keeps its ``process_group``, so the
    fused conv owning it (:class:`fastblocks.nn.DWConvBNAct`) synchronises its statistics."""

    synchronised = True
    process_group = None

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> "AbsorbedSyncBatchNorm2d":
        m = super().from_batchnorm(bn)
        m.process_group = getattr(bn, "process_group", None)
        return m
