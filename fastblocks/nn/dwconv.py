"""Fused depthwise conv -> BatchNorm -> activation module."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .. import ops
from ..ops.sync_batchnorm import need_sync
from .._act import canonical_act
from .._recompute import offer, offer_channel_slices
from .._validate import memory_format_of
from ..inference.depthwise import DepthwiseEval
from ..ops._fused_op import plain_eager
from ._common import NotScriptable, autocast_input, bn_arguments


class DWConvBNAct(NotScriptable, nn.Module):
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
        # The folded inference path is for plain eager calls; tracing (compile, export) sees the op.
        if not (self.training or bn.training) and plain_eager(()):
            y = self._eval_forward(x, bn)
            if y is not None:
                return y
        return self.run(x, bn_arguments(bn, bn.training))

    def eval_plan(self) -> Optional[DepthwiseEval]:
        """The inference path (:mod:`fastblocks.inference.depthwise`) when it runs now, else None
        (no running statistics, gradients needed, traced, autocast, ...)."""
        bn = self.batchnorm
        plan = self.__dict__.get("_eval_plan")
        if plan is None:
            plan = DepthwiseEval(self) if bn.running_mean is not None and bn.running_var is not None else False
            self.__dict__["_eval_plan"] = plan
        if plan is False or plan.module.batchnorm is not bn or not plan.active():
            return None
        return plan

    def _eval_forward(self, x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> Optional[torch.Tensor]:
        plan = self.eval_plan()
        return None if plan is None else plan(x)

    def train(self, mode: bool = True):
        self.__dict__.pop("_eval_plan", None)  # folded weights are an eval-mode cache
        return super().train(mode)

    def __getstate__(self) -> dict:  # copies and pickles never carry the eval cache
        state = dict(super().__getstate__())
        state.pop("_eval_plan", None)
        return state

    def run(self, x: torch.Tensor, args: dict) -> torch.Tensor:
        """The fused op on x with the BN call arguments ``args`` (:func:`bn_arguments`, counted once by
        the caller; sliced to this conv's channels when it is one group of a :class:`MixedDWConvBNAct`)."""
        bn = self.batchnorm
        x, weight, bias = autocast_input(x, self.weight, self.bias)
        if bn.training and getattr(bn, "synchronised", False) and need_sync(bn.process_group):
            # SyncBatchNorm absorbed: statistics all-reduced over its process group.
            return ops.sync_dwconv_bn_act(x, weight, args["bn_weight"], args["bn_bias"], args["running_mean"],
                                          args["running_var"], conv_bias=bias, stride=self.stride,
                                          padding=self.padding, momentum=args["momentum"], eps=args["eps"],
                                          act=self.act, process_group=bn.process_group, backend=self.backend)
        return ops.dwconv_bn_act(x, weight, conv_bias=bias, stride=self.stride, padding=self.padding,
                                 act=self.act, backend=self.backend, **args)

    def extra_repr(self) -> str:
        c, _, k, _ = self.weight.shape
        return f"{c}, kernel_size={k}, stride={self.stride}, padding={self.padding!r}, act={self.act!r}"


_PER_CHANNEL = ("bn_weight", "bn_bias", "running_mean", "running_var")


def _concat(*parts_and_format) -> torch.Tensor:
    *parts, fmt = parts_and_format
    return torch.cat(parts, 1).contiguous(memory_format=fmt)


class MixedDWConvBNAct(NotScriptable, nn.Module):
    """A mixed depthwise conv (MixNet's MixConv, timm ``MixedConv2d``: channel groups, each with its
    own kernel size) -> BatchNorm -> activation, as one ``dwconv_bn_act`` call per group on its
    channel slice, the outputs concatenated. BatchNorm is per channel, so slicing its parameters,
    running statistics and batch statistics by group is exact.

    Children ``"0"``, ``"1"``, ... are :class:`DWConvBNAct` holding each group's conv weight (the
    same keys as MixedConv2d's convs) and referencing the one BN ``bn`` over all channels (an
    :class:`AbsorbedBatchNorm2d` left at the original BN's place). ``num_batches_tracked`` counts
    once per forward. Input (N, C, H, W) -> (N, C, H_out, W_out) in x's memory format. Saves, per
    group, a dense copy of its channels and per-channel statistics for backward; in a patched model
    (recompute scope) the copies are recipes of x, which is kept once.
    """

    def __init__(self, groups: list[DWConvBNAct], bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        if not groups:
            raise ValueError("groups must hold at least one DWConvBNAct")
        strides = {g.stride for g in groups}
        if len(strides) != 1:
            raise ValueError(f"groups must share one stride, got {sorted(strides)}")
        if sum(g.weight.shape[0] for g in groups) != bn.num_features:
            raise ValueError(f"the groups' channels ({[g.weight.shape[0] for g in groups]}) must add up to "
                             f"the BatchNorm's num_features {bn.num_features}")
        for i, group in enumerate(groups):
            object.__setattr__(group, "_bn_ref", bn)
            self.add_module(str(i), group)
        object.__setattr__(self, "_bn_ref", bn)

    @property
    def batchnorm(self) -> nn.modules.batchnorm._BatchNorm:
        return self._bn_ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = list(self.children())
        sizes = [g.weight.shape[0] for g in groups]
        if x.dim() != 4 or x.shape[1] != sum(sizes):
            raise ValueError(f"x must have shape (N, {sum(sizes)}, H, W), got {tuple(x.shape)}")
        bn = self.batchnorm
        args = bn_arguments(bn, bn.training)
        fmt = memory_format_of(x)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        # Each group gets its channels as a dense tensor in x's layout (a channel slice of a
        # channels-last x is not channels-last contiguous, and the kernels would convert it). The
        # slices are offered as recipes of x, so what the groups save for backward is x itself (or
        # its own recipe) once, not a copy per group. torch.split, not one narrow per group: its
        # backward is one concatenation of the groups' gradients (a narrow's backward fills a
        # zero tensor of x's size per group).
        parts = [part.contiguous(memory_format=fmt) for part in torch.split(x, sizes, 1)]
        offer_channel_slices(parts, x, fmt)
        outs = []
        for group, part, start, size in zip(groups, parts, starts, sizes):
            sliced = {k: (v[start:start + size] if k in _PER_CHANNEL and v is not None else v)
                      for k, v in args.items()}
            outs.append(group.run(part, sliced))
        if len(outs) == 1:
            return outs[0].contiguous(memory_format=fmt)
        y = torch.cat(outs, 1).contiguous(memory_format=fmt)
        offer(y, _concat, tuple(outs), (fmt,), level="depthwise")  # each group's output is a recipe
        return y

    def extra_repr(self) -> str:
        return f"{self.batchnorm.num_features}, act={next(iter(self.children())).act!r}"
