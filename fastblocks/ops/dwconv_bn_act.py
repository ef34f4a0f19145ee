"""fastblocks::dwconv_bn_act — depthwise conv -> BatchNorm -> activation, one fused op."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import _dispatch
from .._act import canonical_act
from .._validate import (check_input, check_optional, check_tensor, conv_out_hw,
                         memory_format_of, padding_spec, scalar_int)
from ..backends import reference
from .._recompute import offer
from ._batchnorm import check_batch_count, check_bn_args, update_running_stats
from ._fused_op import fused_op
from ._graph_backward import graph_backward, graph_requested
from ._plumbing import fake_slot, from_slot, grad_slot, needs, reference_serves, run_backward, run_forward

Tensor = torch.Tensor
OP = "dwconv_bn_act"


def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@fused_op("fastblocks::dwconv_bn_act")
def _forward(x: Tensor, weight: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
             running_mean: Optional[Tensor], running_var: Optional[Tensor], conv_bias: Optional[Tensor],
             stride: int, padding_mode: str, padding: int, dilation: int, training: bool, eps: float,
             act: str, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, mean, var): y in x's dtype and memory format; per-channel mean and biased
    variance (batch statistics when training, else the running ones) in float32/float64."""
    args = (x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
            stride, padding_mode, padding, dilation, training, eps, act)
    return run_forward(OP, backend, args)


@_forward.register_fake
def _forward_fake(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                  stride, padding_mode, padding, dilation, training, eps, act, backend):
    n, c, h, w = x.shape
    k = weight.shape[-1]
    ho, wo = conv_out_hw(padding_mode, padding, k, stride, dilation, h, w)
    y = x.new_empty((n, c, ho, wo)).contiguous(memory_format=memory_format_of(x))
    stats = x.new_empty((c,), dtype=_stat_dtype(x))
    return y, stats, torch.empty_like(stats)


@fused_op("fastblocks::dwconv_bn_act_backward")
def _backward_op(dy: Tensor, x: Tensor, weight: Tensor, bn_weight: Optional[Tensor],
                 bn_bias: Optional[Tensor], conv_bias: Optional[Tensor], mean: Tensor, var: Tensor,
                 stride: int, padding_mode: str, padding: int, dilation: int, training: bool,
                 eps: float, act: str, mask: Sequence[bool], backend: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, weight, bn_weight, bn_bias, conv_bias); empty tensors where mask is False."""
    fwd = (x, weight, bn_weight, bn_bias, None, None, conv_bias,
           stride, padding_mode, padding, dilation, training, eps, act)
    grads = run_backward(OP, backend, fwd, (dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var,
                                            stride, padding_mode, padding, dilation, training, eps, act,
                                            list(mask)))
    likes = (x, weight, bn_weight, bn_bias, conv_bias)
    return tuple(grad_slot(g, like, x, m) for g, like, m in zip(grads, likes, mask))


@_backward_op.register_fake
def _backward_fake(dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var, stride, padding_mode,
                   padding, dilation, training, eps, act, mask, backend):
    likes = (x, weight, bn_weight, bn_bias, conv_bias)
    return tuple(fake_slot(like, x, m) for like, m in zip(likes, mask))


def _setup_context(ctx, inputs, output):
    (x, weight, bn_weight, bn_bias, _rm, _rv, conv_bias,
     stride, padding_mode, padding, dilation, training, eps, act, backend) = inputs
    _, mean, var = output
    # Memory-efficient: only inputs and per-channel statistics; conv output and activation are
    # recomputed in backward.
    ctx.save_for_backward(x, weight, bn_weight, bn_bias, conv_bias, mean, var)
    ctx.config = (stride, padding_mode, padding, dilation, training, eps, act)
    ctx.backend = backend


def _autograd_backward(ctx, dy, _dmean, _dvar):
    x, weight, bn_weight, bn_bias, conv_bias, mean, var = ctx.saved_tensors
    if graph_requested():
        stride, padding_mode, padding, dilation, training, eps, act = ctx.config
        stats = (None, None) if training else (mean.detach(), var.detach())  # eval: the running stats

        def recompute(x, weight, bn_weight, bn_bias, conv_bias):
            return reference.dwconv_bn_act(x, weight, bn_weight, bn_bias, *stats, conv_bias, stride, padding_mode,
                                           padding, dilation, training, 0.0, eps, act)
        return graph_backward(ctx, dy, recompute, (x, weight, bn_weight, bn_bias, conv_bias), (0, 1, 2, 3, 6), 15)
    mask = needs(ctx, 0, 1, 2, 3, 6)
    if not any(mask):
        return (None,) * 15
    grads = _backward_op(dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var, *ctx.config,
                         mask, ctx.backend)
    dx, dw, dgamma, dbeta, db = (from_slot(g, m) for g, m in zip(grads, mask))
    return (dx, dw, dgamma, dbeta, None, None, db) + (None,) * 8


_dispatch.register_training_arg(OP, 11)
_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def check_call(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias, stride, padding,
               dilation, training, momentum, eps, act, check_count: bool = True) -> tuple:
    """Validate a :func:`dwconv_bn_act` call (also used by the synchronised variant, which checks
    the global count itself: ``check_count=False``); returns
    (stride, padding_mode, pad, dilation, training, momentum, eps, act, count per channel)."""
    check_input(x, "x")
    c = x.shape[1]
    check_tensor(weight, "weight", x, None, same_dtype=True)
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be a depthwise kernel of shape (C, 1, k, k) = ({c}, 1, k, k) "
                         f"for x with C={c}, got {tuple(weight.shape)}")
    k = weight.shape[-1]
    if k % 2 == 0:
        raise ValueError(f"weight must have an odd kernel size k, got k={k}")
    check_optional(conv_bias, "conv_bias", x, (c,))
    if conv_bias is not None and conv_bias.dtype != x.dtype:
        raise TypeError(f"conv_bias must have x's dtype {x.dtype}, got {conv_bias.dtype}")
    stride = scalar_int(stride, "stride", allowed=(1, 2))
    dilation = scalar_int(dilation, "dilation", minimum=1)
    if dilation != 1:
        raise ValueError(f"dilation must be 1 (dilated depthwise convs are not supported yet), got {dilation}")
    padding_mode, pad = padding_spec(padding)
    training, momentum, eps = check_bn_args(x, c, bn_weight, bn_bias, running_mean, running_var,
                                            training, momentum, eps)
    act = canonical_act(act)
    ho, wo = conv_out_hw(padding_mode, pad, k, stride, dilation, x.shape[2], x.shape[3])
    if ho < 1 or wo < 1:
        raise ValueError(f"x of spatial size {tuple(x.shape[2:])} is too small for a {k}x{k} kernel "
                         f"with padding {padding!r}")
    count = x.shape[0] * ho * wo
    if training and check_count:
        check_batch_count(count)
    return stride, padding_mode, pad, dilation, training, momentum, eps, act, count


def dwconv_bn_act(x: Tensor, weight: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                  running_mean: Optional[Tensor], running_var: Optional[Tensor], *,
                  conv_bias: Optional[Tensor] = None, stride: int = 1,
                  padding: Union[str, int] = "same", dilation: int = 1, training: bool = False,
                  momentum: float = 0.1, eps: float = 1e-5, act: str = "silu",
                  backend: Optional[str] = None) -> Tensor:
    """Depthwise k x k conv -> BatchNorm -> activation.

    Shapes: x (N, C, H, W); weight (C, 1, k, k), k odd; conv_bias, bn_weight, bn_bias,
    running_mean, running_var (C,) or None. dtypes: float16 / bfloat16 / float32 / float64; the
    conv weight and bias have x's dtype, BN tensors x's dtype or float32 (statistics are always
    accumulated in float32, float64 for float64 inputs).

    padding: "same" (k//2 per side), "tf_same" (TensorFlow dynamic SAME, asymmetric) or an int.
    training=True normalises with batch statistics and updates running_* in place like
    F.batch_norm (unbiased variance); training=False uses running_* (required then).
    act: "silu", "relu", "relu6", "hardswish", "leaky_relu" (negative slope 0.01, nn.LeakyReLU's default),
    "gelu" (erf), "gelu_tanh" (tanh approximation) or "identity".

    Returns y (N, C, H_out, W_out) in x's dtype and memory format. Saved for backward (non-reference
    backends): x, weight, the BN affine params, conv_bias and the per-channel mean / variance; the
    conv output and activation are recomputed in backward.
    """
    stride, padding_mode, pad, dilation, training, momentum, eps, act, count = check_call(
        x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias, stride, padding, dilation,
        training, momentum, eps, act)

    name = _dispatch.requested(backend)
    if name == "reference" or reference_serves(x):
        return reference.dwconv_bn_act(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                                       stride, padding_mode, pad, dilation, training, momentum, eps, act)
    y, mean, var = _forward(x, weight, bn_weight, bn_bias,
                            None if training else running_mean, None if training else running_var,
                            conv_bias, stride, padding_mode, pad, dilation, training, eps, act, name)
    if training:
        update_running_stats(running_mean, running_var, mean, var, momentum, count)
    offer(y, _recompute, (x, weight, bn_weight, bn_bias, conv_bias, mean, var),
          (stride, padding_mode, pad, dilation, eps, act, name), level="depthwise")
    return y


def _recompute(x, weight, bn_weight, bn_bias, conv_bias, mean, var, stride, padding_mode, pad, dilation,
               eps, act, backend):
    """y again from x and the statistics it was normalised with: the one-pass eval form of the op."""
    with torch.no_grad():
        return _forward(x, weight, bn_weight, bn_bias, mean, var, conv_bias, stride, padding_mode, pad,
                        dilation, False, eps, act, backend)[0]
