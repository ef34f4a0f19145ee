"""fastblocks::eca — efficient channel attention: pool -> 1-D conv over C -> gate -> scale."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import _dispatch
from .._act import canonical_gate
from .._validate import check_input, check_tensor, memory_format_of
from .._recompute import offer
from ..backends import reference
from ..backends.eager._gating import gate_scale_forward
from ._fused_op import fused_op
from ._graph_backward import graph_backward, graph_requested
from ._plumbing import fake_slot, from_slot, grad_slot, needs, reference_serves, run_backward, run_forward

Tensor = torch.Tensor
OP = "eca"


@fused_op("fastblocks::eca")
def _forward(x: Tensor, conv_weight: Tensor, gate: str, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, pooled (N,C), logits (N,C))."""
    return run_forward(OP, backend, (x, conv_weight, gate))


@_forward.register_fake
def _forward_fake(x, conv_weight, gate, backend):
    nc = x.new_empty(x.shape[:2], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return x.new_empty(x.shape).contiguous(memory_format=memory_format_of(x)), nc, torch.empty_like(nc)


@fused_op("fastblocks::eca_backward")
def _backward_op(dy: Tensor, x: Tensor, pooled: Tensor, logits: Tensor, conv_weight: Tensor, gate: str,
                 mask: Sequence[bool], backend: str) -> tuple[Tensor, Tensor]:
    grads = run_backward(OP, backend, (x, conv_weight, gate), (dy, x, pooled, logits, conv_weight, gate, list(mask)))
    return tuple(grad_slot(g, like, x, m) for g, like, m in zip(grads, (x, conv_weight), mask))


@_backward_op.register_fake
def _backward_fake(dy, x, pooled, logits, conv_weight, gate, mask, backend):
    return tuple(fake_slot(like, x, m) for like, m in zip((x, conv_weight), mask))


def _setup_context(ctx, inputs, output):
    x, conv_weight, gate, backend = inputs
    _, pooled, logits = output
    ctx.save_for_backward(x, pooled, logits, conv_weight)  # x and two (N, C) tensors
    ctx.gate, ctx.backend = gate, backend


def _autograd_backward(ctx, dy, _dpooled, _dlogits):
    x, pooled, logits, conv_weight = ctx.saved_tensors
    if graph_requested():
        gate = ctx.gate
        return graph_backward(ctx, dy, lambda x, w: reference.eca(x, w, gate), (x, conv_weight), (0, 1), 4)
    mask = needs(ctx, 0, 1)
    if not any(mask):
        return (None,) * 4
    grads = _backward_op(dy, x, pooled, logits, conv_weight, ctx.gate, mask, ctx.backend)
    return tuple(from_slot(g, m) for g, m in zip(grads, mask)) + (None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def eca(x: Tensor, conv_weight: Tensor, *, gate: str = "sigmoid", backend: Optional[str] = None) -> Tensor:
    """Efficient channel attention: y = x * gate(conv1d_k(mean_hw(x))) with zero padding (k-1)/2.

    Shapes: x (N, C, H, W); conv_weight (1, 1, k), k odd (x's dtype or float32). Returns y like x.
    Saved for backward (non-reference backends): x, the pooled (N, C) means and (N, C) logits.
    """
    check_input(x, "x")
    check_tensor(conv_weight, "conv_weight", x, None)
    if conv_weight.dim() != 3 or tuple(conv_weight.shape[:2]) != (1, 1):
        raise ValueError(f"conv_weight must have shape (1, 1, k), got {tuple(conv_weight.shape)}")
    if conv_weight.shape[-1] % 2 == 0:
        raise ValueError(f"conv_weight must have an odd kernel size k, got k={conv_weight.shape[-1]}")
    gate = canonical_gate(gate)
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"x must have a non-empty spatial extent to pool, got shape {tuple(x.shape)}")
    name = _dispatch.requested(backend)
    if name == "reference" or reference_serves(x):
        return reference.eca(x, conv_weight, gate)
    y, _, logits = _forward(x, conv_weight, gate, name)
    offer(y, gate_scale_forward, (x, logits), (gate,))
    return y
