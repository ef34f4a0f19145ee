"""fastblocks::bn_act — BatchNorm -> activation (no conv), one fused op (in-place-ABN style)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import _dispatch
from .._act import canonical_act
from .._validate import check_input, memory_format_of
from ..backends import reference
from .._recompute import offer
from ..backends.eager._common import bn_act_forward as recompute_bn_act
from ._batchnorm import check_batch_count, check_bn_args, update_running_stats
from ._fused_op import fused_op
from ._graph_backward import graph_backward, graph_requested
from ._plumbing import fake_slot, from_slot, grad_slot, needs, reference_serves, run_backward, run_forward

Tensor = torch.Tensor
OP = "bn_act"


@fused_op("fastblocks::bn_act")
def _forward(x: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
             running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool,
             eps: float, act: str, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, mean, var) as fastblocks::dwconv_bn_act does."""
    return run_forward(OP, backend, (x, bn_weight, bn_bias, running_mean, running_var, training, eps, act))


@_forward.register_fake
def _forward_fake(x, bn_weight, bn_bias, running_mean, running_var, training, eps, act, backend):
    stats = x.new_empty((x.shape[1],), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return x.new_empty(x.shape).contiguous(memory_format=memory_format_of(x)), stats, torch.empty_like(stats)


@fused_op("fastblocks::bn_act_backward")
def _backward_op(dy: Tensor, x: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                 mean: Tensor, var: Tensor, training: bool, eps: float, act: str,
                 mask: Sequence[bool], backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (x, bn_weight, bn_bias); empty tensors where mask is False."""
    fwd = (x, bn_weight, bn_bias, None, None, training, eps, act)
    grads = run_backward(OP, backend, fwd, (dy, x, bn_weight, bn_bias, mean, var, training, eps, act, list(mask)))
    return tuple(grad_slot(g, like, x, m) for g, like, m in zip(grads, (x, bn_weight, bn_bias), mask))


@_backward_op.register_fake
def _backward_fake(dy, x, bn_weight, bn_bias, mean, var, training, eps, act, mask, backend):
    return tuple(fake_slot(like, x, m) for like, m in zip((x, bn_weight, bn_bias), mask))


def _setup_context(ctx, inputs, output):
    x, bn_weight, bn_bias, _rm, _rv, training, eps, act, backend = inputs
    _, mean, var = output
    ctx.save_for_backward(x, bn_weight, bn_bias, mean, var)  # input + per-channel stats only
    ctx.config = (training, eps, act)
    ctx.backend = backend


def _autograd_backward(ctx, dy, _dmean, _dvar):
    x, bn_weight, bn_bias, mean, var = ctx.saved_tensors
    if graph_requested():
        training, eps, act = ctx.config
        stats = (None, None) if training else (mean.detach(), var.detach())

        def recompute(x, bn_weight, bn_bias):
            return reference.bn_act(x, bn_weight, bn_bias, *stats, training, 0.0, eps, act)
        return graph_backward(ctx, dy, recompute, (x, bn_weight, bn_bias), (0, 1, 2), 9)
    mask = needs(ctx, 0, 1, 2)
    if not any(mask):
        return (None,) * 9
    grads = _backward_op(dy, x, bn_weight, bn_bias, mean, var, *ctx.config, mask, ctx.backend)
    return tuple(from_slot(g, m) for g, m in zip(grads, mask)) + (None,) * 6


_dispatch.register_training_arg(OP, 5)
_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def bn_act(x: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
           running_mean: Optional[Tensor], running_var: Optional[Tensor], *, training: bool = False,
           momentum: float = 0.1, eps: float = 1e-5, act: str = "silu",
           backend: Optional[str] = None) -> Tensor:
    """BatchNorm2d -> activation.

    Shapes: x (N, C, H, W); bn_weight, bn_bias, running_mean, running_var (C,) or None (x's dtype or
    float32). training / momentum / eps / act as in :func:`fastblocks.ops.dwconv_bn_act`
    (act="identity" gives a plain BatchNorm). Returns y like x (dtype, memory format).
    Saved for backward (non-reference backends): x, the affine params and per-channel mean / var.
    """
    check_input(x, "x")
    c = x.shape[1]
    training, momentum, eps = check_bn_args(x, c, bn_weight, bn_bias, running_mean, running_var,
                                            training, momentum, eps)
    act = canonical_act(act)
    count = x.numel() // c
    if training:
        check_batch_count(count)
    name = _dispatch.requested(backend)
    if name == "reference" or reference_serves(x):
        return reference.bn_act(x, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps, act)
    y, mean, var = _forward(x, bn_weight, bn_bias, None if training else running_mean,
                            None if training else running_var, training, eps, act, name)
    if training:
        update_running_stats(running_mean, running_var, mean, var, momentum, count)
    offer(y, recompute_bn_act, (x, bn_weight, bn_bias, mean, var), (eps, act))
    return y
