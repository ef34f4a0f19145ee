"""Gate-and-scale math shared by the eager SE, ECA and gate_scale ops."""

from __future__ import annotations

import torch

from ..._act import gate_backward, gate_forward
from ..._validate import memory_format_of
from ._common import acc_dtype


def pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pool (N,C,H,W) -> (N,C) in the accumulation dtype."""
    return x.to(acc_dtype(x)).mean((2, 3))


def gate_scale_forward(x: torch.Tensor, logits: torch.Tensor, gate: str) -> torch.Tensor:
    g = gate_forward(gate, logits.to(acc_dtype(x))).to(x.dtype)
    return (x * g[:, :, None, None]).contiguous(memory_format=memory_format_of(x))


def gate_scale_backward(dy, x, logits, gate, need_x: bool):
    """(dx through the scale only, dlogits (N,C) in the accumulation dtype)."""
    dt = acc_dtype(x)
    la = logits.to(dt)
    dx = None
    if need_x:
        dx = dy * gate_forward(gate, la).to(dy.dtype)[:, :, None, None]
    dgate = (dy.to(dt) * x.to(dt)).sum((2, 3))
    return dx, gate_backward(gate, la, dgate)


def add_pool_grad(dx: torch.Tensor, dpooled: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dx += d(mean over H, W) for pooled's gradient dpooled (N,C)."""
    hw = x.shape[2] * x.shape[3]
    dx = dx + (dpooled / hw).to(dx.dtype)[:, :, None, None]
    return dx.contiguous(memory_format=memory_format_of(x))
