"""Memory-efficient activation modules (save the input only)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import _dispatch, ops
from .._act import canonical_act
from ..backends import reference
from ..ops._fused_op import plain_eager
from ._common import NotScriptable


class MemoryEfficientAct(NotScriptable, nn.Module):
    """Element-wise activation through ``fastblocks.ops.activation``: saves x only for backward,
    where PyTorch's autograd for e.g. x * sigmoid(x) would keep extra tensors."""

    def __init__(self, act: str = "silu", backend: Optional[str] = None) -> None:
        super().__init__()
        self.act = canonical_act(act)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Nothing to save when no gradient is needed: PyTorch's own activation, without the custom
        # op's dispatch (~14 us a call, the whole cost of e.g. a network head's activation at batch 1).
        if not (torch.is_grad_enabled() and x.requires_grad) and _dispatch.requested(self.backend) == "auto" \
                and plain_eager((x,)):
            return reference.activation(x, self.act)
        return ops.activation(x, self.act, backend=self.backend)

    def extra_repr(self) -> str:
        return repr(self.act)


def SiLU(backend: Optional[str] = None) -> MemoryEfficientAct:  # noqa: N802  (module-like factory)
    """Memory-efficient SiLU / swish module."""
    return MemoryEfficientAct("silu", backend)


def HardSwish(backend: Optional[str] = None) -> MemoryEfficientAct:  # noqa: N802
    """Memory-efficient hard-swish module."""
    return MemoryEfficientAct("hardswish", backend)
