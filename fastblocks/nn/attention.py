"""Fused squeeze-and-excitation and efficient-channel-attention modules.

Each wraps the original 1x1 convs / Conv1d as child modules under their original names, so
state_dict keys and parameter tensors are unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from .._act import canonical_act, canonical_gate
from ._common import NotScriptable


class SqueezeExcite(NotScriptable, nn.Module):
    """pool -> reduce (1x1 conv) -> act -> expand (1x1 conv) -> gate -> scale, fused
    (``fastblocks.ops.squeeze_excite``). Input (N, C, H, W) -> same. Saves x and two (N, C) tensors.

    ``names`` gives the attribute names of the reduce / expand convs (e.g. ("conv_reduce",
    "conv_expand") for timm, ("fc1", "fc2") for torchvision).
    """

    def __init__(self, reduce: nn.Conv2d, expand: nn.Conv2d, act: str = "relu", gate: str = "sigmoid",
                 names: tuple = ("conv_reduce", "conv_expand"), backend: Optional[str] = None) -> None:
        super().__init__()
        self.names = tuple(names)
        self.add_module(self.names[0], reduce)
        self.add_module(self.names[1], expand)
        self.act = canonical_act(act)
        self.gate = canonical_gate(gate)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduce, expand = (getattr(self, n) for n in self.names)
        return ops.squeeze_excite(x, reduce.weight, reduce.bias, expand.weight, expand.bias,
                                  act=self.act, gate=self.gate, backend=self.backend)

    def extra_repr(self) -> str:
        return f"act={self.act!r}, gate={self.gate!r}"


class _PooledGateScale(NotScriptable, nn.Module):
    """SE variants whose excitation is not reduce -> act -> expand: the (N, C) part runs in
    PyTorch (``_logits`` of the pooled input), the full-size scale is fused
    (``fastblocks.ops.gate_scale``), which saves x and the (N, C) logits only."""

    def _logits(self, pooled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self._logits(x.mean((2, 3), keepdim=True))
        return ops.gate_scale(x, logits, gate=self.gate_name, backend=self.backend)

    def extra_repr(self) -> str:
        return f"gate={self.gate_name!r}"


class SqueezeExciteWithNorm(_PooledGateScale):
    """SE with a BatchNorm between the reduce conv and the activation (ReXNet): pool -> fc1 -> bn
    -> act -> fc2 -> gate -> scale. The BN needs batch statistics over N, so the MLP stays in
    PyTorch. Input (N, C, H, W) -> same; saves x and the (N, C) logits."""

    def __init__(self, fc1: nn.Conv2d, bn: nn.Module, act: nn.Module, fc2: nn.Conv2d, gate: str = "sigmoid",
                 backend: Optional[str] = None) -> None:
        super().__init__()
        self.fc1, self.bn, self.act, self.fc2 = fc1, bn, act, fc2
        self.gate_name = canonical_gate(gate)
        self.backend = backend

    def _logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.bn(self.fc1(pooled))))


class EffectiveSqueezeExcite(_PooledGateScale):
    """'Effective' SE (CenterMask; timm ``EffectiveSEModule`` in VoVNet / RDNet / CSPNeXt, HGNet's
    ``EseModule``): pool -> one full-width 1x1 conv (C -> C) -> gate -> scale. The conv is kept as
    child ``name`` ("fc" for timm's, "conv" for HGNet's). Input (N, C, H, W) -> same; saves x and
    the (N, C) logits."""

    def __init__(self, fc: nn.Conv2d, gate: str = "hard_sigmoid", name: str = "fc",
                 backend: Optional[str] = None) -> None:
        super().__init__()
        self.name = name
        self.add_module(name, fc)
        self.gate_name = canonical_gate(gate)
        self.backend = backend

    def _logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.name)(pooled)


class EfficientChannelAttention(NotScriptable, nn.Module):
    """ECA: pool -> Conv1d(1, 1, k) across channels -> gate -> scale, fused (``fastblocks.ops.eca``).
    The Conv1d is kept as child ``conv``. Saves x and two (N, C) tensors."""

    def __init__(self, conv: nn.Conv1d, gate: str = "sigmoid", backend: Optional[str] = None) -> None:
        super().__init__()
        self.conv = conv
        self.gate = canonical_gate(gate)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.eca(x, self.conv.weight, gate=self.gate, backend=self.backend)

    def extra_repr(self) -> str:
        return f"k={self.conv.weight.shape[-1]}, gate={self.gate!r}"
