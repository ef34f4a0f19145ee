"""fastblocks::gate_scale — y = x * gate(logits), the memory-heavy half of SE / ECA."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import _dispatch
from .._act import canonical_gate
from .._validate import check_input, check_tensor, memory_format_of
from .._recompute import offer
from ..backends import reference
from ..backends.eager._gating import gate_scale_forward
from ._capture import active_form
from ._fused_op import fused_op
from ._graph_backward import graph_backward, graph_requested
from ._plumbing import fake_slot, from_slot, grad_slot, needs, reference_serves, run_backward, run_forward

Tensor = torch.Tensor
OP = "gate_scale"


@fused_op("fastblocks::gate_scale")
def _forward(x: Tensor, logits: Tensor, gate: str, backend: str) -> Tensor:
    return run_forward(OP, backend, (x, logits, gate))


@_forward.register_fake
def _forward_fake(x, logits, gate, backend):
    return x.new_empty(x.shape).contiguous(memory_format=memory_format_of(x))


@fused_op("fastblocks::gate_scale_backward")
def _backward_op(dy: Tensor, x: Tensor, logits: Tensor, gate: str, mask: Sequence[bool],
                 backend: str) -> tuple[Tensor, Tensor]:
    grads = run_backward(OP, backend, (x, logits, gate), (dy, x, logits, gate, list(mask)))
    return tuple(grad_slot(g, like, x, m) for g, like, m in zip(grads, (x, logits), mask))


@_backward_op.register_fake
def _backward_fake(dy, x, logits, gate, mask, backend):
    return tuple(fake_slot(like, x, m) for like, m in zip((x, logits), mask))


def _setup_context(ctx, inputs, output):
    x, logits, gate, backend = inputs
    ctx.save_for_backward(x, logits)
    ctx.gate, ctx.backend = gate, backend


def _autograd_backward(ctx, dy):
    x, logits = ctx.saved_tensors
    if graph_requested():
        gate = ctx.gate
        return graph_backward(ctx, dy, lambda x, logits: reference.gate_scale(x, logits, gate), (x, logits),
                              (0, 1), 4)
    mask = needs(ctx, 0, 1)
    if not any(mask):
        return None, None, None, None
    grads = _backward_op(dy, x, logits, ctx.gate, mask, ctx.backend)
    return tuple(from_slot(g, m) for g, m in zip(grads, mask)) + (None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def gate_scale(x: Tensor, logits: Tensor, *, gate: str = "sigmoid", backend: Optional[str] = None) -> Tensor:
    """y = x * gate(logits)[:, :, None, None].

    Shapes: x (N, C, H, W); logits (N, C) (or (N, C, 1, 1)), x's dtype or float32. gate: "sigmoid" or
    "hard_sigmoid". Used by SE variants whose excitation MLP is unusual (e.g. ReXNet's BN inside SE):
    the MLP stays in PyTorch, the full-size scale is fused. Saves x and logits for backward.
    """
    check_input(x, "x")
    n, c = x.shape[:2]
    given = logits
    if isinstance(logits, Tensor) and logits.dim() == 4 and tuple(logits.shape[2:]) == (1, 1):
        logits = logits.flatten(1)
    check_tensor(logits, "logits", x, (n, c))
    gate = canonical_gate(gate)
    name = _dispatch.requested(backend)
    if name == "reference" or reference_serves(x):
        return reference.gate_scale(x, logits, gate)
    form = active_form(f"fastblocks::{OP}")
    if form is not None:  # exporting: plain torch ops on the logits as given, no (N, C) round trip
        return form(x, given, gate, name)
    y = _forward(x, logits, gate, name)
    offer(y, gate_scale_forward, (x, logits), (gate,))
    return y
