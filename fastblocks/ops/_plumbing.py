"""Glue shared by the op files: backend dispatch inside custom ops (through
:mod:`fastblocks.ops._capture`), grad-slot conventions.

Custom ops cannot return None, so a gradient that is not needed (or whose input is None) travels
as an empty tensor on x's device and becomes None again in the autograd formula.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._validate import memory_format_of
from ._capture import run
from ._fused_op import differentiating_transform

Tensor = torch.Tensor


def run_forward(op: str, backend: str, args: tuple):
    """Resolve ``backend`` for this call (at run time inside the custom op, or when graph capture
    traces it) and run its forward."""
    return run(op, backend, args, lambda impl: impl.forward(*args))


def run_backward(op: str, backend: str, forward_args: tuple, args: tuple):
    """Run the backward of the backend that ran the forward (same resolution, same inputs)."""
    return run(op, backend, forward_args, lambda impl: impl.backward(*args))


def reference_serves(x: Tensor) -> bool:
    """Calls the fused ops leave to the reference composition, which treats them exactly as the
    unpatched layers do: an empty batch (N = 0: detection heads, dynamic pipelines), meta tensors
    (shape inference, deferred initialisation) and differentiating ``torch.func`` transforms
    (:func:`._fused_op.differentiating_transform`). A symbolic batch size is never taken for empty."""
    n = x.shape[0]
    return x.is_meta or (isinstance(n, int) and n == 0) or differentiating_transform()


def grad_slot(grad: Optional[Tensor], like: Optional[Tensor], x: Tensor, needed: bool) -> Tensor:
    if grad is None or like is None or not needed:
        return x.new_empty(0)
    return grad.to(like.dtype).reshape(like.shape).contiguous(memory_format=memory_format_of(like))


def fake_slot(like: Optional[Tensor], x: Tensor, needed: bool) -> Tensor:
    """Fake-impl counterpart of :func:`grad_slot`."""
    if like is None or not needed:
        return x.new_empty(0)
    return like.new_empty(like.shape).contiguous(memory_format=memory_format_of(like))


def from_slot(grad: Tensor, needed: bool) -> Optional[Tensor]:
    return grad if needed and grad.numel() > 0 else None


def needs(ctx, *indices: int) -> list[bool]:
    return [bool(ctx.needs_input_grad[i]) for i in indices]
