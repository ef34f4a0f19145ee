"""fastblocks::activation — memory-efficient element-wise activations (silu, hard_swish, ...)."""

from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from .._act import canonical_act
from ..backends import reference
from ._fused_op import fused_op
from ._graph_backward import graph_backward, graph_requested
from ._plumbing import reference_serves, run_backward, run_forward

Tensor = torch.Tensor
OP = "activation"


@fused_op("fastblocks::activation")
def _forward(x: Tensor, act: str, backend: str) -> Tensor:
    return run_forward(OP, backend, (x, act))


@_forward.register_fake
def _forward_fake(x, act, backend):
    return torch.empty_like(x)


@fused_op("fastblocks::activation_backward")
def _backward_op(dy: Tensor, x: Tensor, act: str, backend: str) -> Tensor:
    return run_backward(OP, backend, (x, act), (dy, x, act))


@_backward_op.register_fake
def _backward_fake(dy, x, act, backend):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, act, backend = inputs
    ctx.save_for_backward(x)  # x only: the activation output is not kept
    ctx.act, ctx.backend = act, backend


def _autograd_backward(ctx, dy):
    (x,) = ctx.saved_tensors
    if graph_requested():
        act = ctx.act
        return graph_backward(ctx, dy, lambda x: reference.activation(x, act), (x,), (0,), 3)
    return _backward_op(dy, x, ctx.act, ctx.backend), None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def activation(x: Tensor, act: str, *, backend: Optional[str] = None) -> Tensor:
    """Element-wise activation that saves only x for backward (recomputes in backward).

    x: any shape, floating dtype. act: "silu", "relu", "relu6", "hardswish", "leaky_relu" (slope 0.01),
    "gelu", "gelu_tanh", "identity".
    Returns a tensor like x.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    act = canonical_act(act)
    name = _dispatch.requested(backend)
    if name == "reference" or reference_serves(x):
        return reference.activation(x, act)
    return _forward(x, act, name)


def silu(x: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Memory-efficient SiLU / swish, x * sigmoid(x): saves x only."""
    return activation(x, "silu", backend=backend)


def hard_swish(x: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Memory-efficient hard swish, x * relu6(x + 3) / 6: saves x only."""
    return activation(x, "hardswish", backend=backend)
