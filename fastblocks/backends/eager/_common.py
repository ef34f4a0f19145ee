"""Math shared by the eager backend's ops: BatchNorm + activation and depthwise conv, fwd and bwd.

Statistics and normalisation run in float32 (float64 for float64 inputs), whatever x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._act import act_backward, act_forward
from ..._validate import conv_pads, memory_format_of


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _compute_view(z: torch.Tensor, *params):
    """z (upcast to float32 for half inputs) and params in its dtype, for ATen's BN kernels."""
    za = z if z.dtype in (torch.float32, torch.float64) else z.float()
    return (za,) + tuple(p.to(za.dtype) if p is not None else None for p in params)


def running_stats(running_mean, running_var, like: torch.Tensor):
    """Copies of the running (mean, var) in the accumulation dtype (eval-mode statistics)."""
    dt = acc_dtype(like)
    return running_mean.to(dt).clone(), running_var.to(dt).clone()


def bn_act_train_forward(z, bn_weight, bn_bias, eps, act):
    """(y, mean, biased var) of act(BN(z)) with batch statistics, one ATen BN pass plus the act."""
    za, gamma, beta = _compute_view(z, bn_weight, bn_bias)
    u, mean, invstd = torch.native_batch_norm(za, gamma, beta, None, None, True, 0.0, eps)
    # var from invstd in float64: exact to float32 rounding for the running-variance update.
    var = (invstd.double().pow(-2) - eps).clamp_min(0).to(invstd.dtype)
    y = act_forward(act, u).to(z.dtype)
    return y.contiguous(memory_format=memory_format_of(z)), mean.to(acc_dtype(z)), var.to(acc_dtype(z))


def bn_act_forward(z, bn_weight, bn_bias, mean, var, eps, act):
    """act(BN(z)) normalised with the given per-channel mean / var, in z's dtype and memory format."""
    za, gamma, beta, m, v = _compute_view(z, bn_weight, bn_bias, mean, var)
    u = torch.batch_norm(za, gamma, beta, m, v, False, 0.0, eps, False)
    y = act_forward(act, u).to(z.dtype)
    return y.contiguous(memory_format=memory_format_of(z))


def bn_act_backward(z, dy, bn_weight, bn_bias, mean, var, eps, training, act):
    """(dz, dgamma, dbeta) of y = act(BN(z)), recomputing BN(z) from z and the saved stats."""
    za, gamma, beta, m, v = _compute_view(z, bn_weight, bn_bias, mean, var)
    u = torch.batch_norm(za, gamma, beta, m, v, False, 0.0, eps, False)
    du = act_backward(act, u, dy.to(za.dtype))
    del u
    affine = bn_weight is not None
    if training:
        invstd = torch.rsqrt(v + eps)
        dz, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
            du, za, gamma, None, None, m, invstd, True, eps, [True, affine, affine])
    else:
        dz, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
            du, za, gamma, m, v, None, None, False, eps, [True, affine, affine])
    return dz.to(z.dtype).contiguous(memory_format=memory_format_of(z)), dgamma, dbeta


def _explicit_pads(x, weight, stride, padding_mode, padding, dilation):
    k = weight.shape[-1]
    return conv_pads(padding_mode, padding, k, stride, dilation, x.shape[2], x.shape[3])


def dwconv_forward(x, weight, conv_bias, stride, padding_mode, padding, dilation):
    """Depthwise conv in x's dtype; asymmetric padding via a transient padded copy."""
    top, bottom, left, right = _explicit_pads(x, weight, stride, padding_mode, padding, dilation)
    if top != bottom or left != right:
        x = F.pad(x, (left, right, top, bottom))
        top = left = 0
    return F.conv2d(x, weight, conv_bias, stride, (top, left), dilation, groups=x.shape[1])


def dwconv_bn_act_folded(x, weight, conv_bias, bn_weight, bn_bias, mean, var, stride, padding_mode, padding,
                         dilation, eps, act):
    """Eval-mode act(BN(dwconv(x))) as one conv: BN folded into the weights and bias, so the conv
    output is normalised as it is written (one pass over x and y, no separate BN pass). float32 /
    float64 only: in half precision the folded bias (beta - mean * scale) would be rounded to x's
    dtype, losing the digits that cancel against the conv term when |mean| >> std."""
    acc = acc_dtype(x)
    scale = torch.rsqrt(var.to(acc) + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(acc)
    shift = -mean.to(acc) * scale
    if bn_bias is not None:
        shift = shift + bn_bias.to(acc)
    if conv_bias is not None:
        shift = shift + conv_bias.to(acc) * scale
    folded = (weight.to(acc) * scale[:, None, None, None]).to(x.dtype)
    z = dwconv_forward(x, folded, shift.to(x.dtype), stride, padding_mode, padding, dilation)
    return act_forward(act, z).contiguous(memory_format=memory_format_of(x))


def dwconv_backward(dz, x, weight, stride, padding_mode, padding, dilation, need_x, need_w, need_b):
    """(dx, dweight, dbias) of the depthwise conv; None for grads not needed."""
    top, bottom, left, right = _explicit_pads(x, weight, stride, padding_mode, padding, dilation)
    asymmetric = top != bottom or left != right
    xin = F.pad(x, (left, right, top, bottom)) if asymmetric else x
    pad = (0, 0) if asymmetric else (top, left)
    dx, dw, db = torch.ops.aten.convolution_backward(
        dz, xin, weight, [weight.shape[0]], [stride, stride], list(pad), [dilation, dilation],
        False, [0, 0], x.shape[1], [need_x, need_w, need_b])
    if need_x and asymmetric:
        dx = dx[:, :, top: top + x.shape[2], left: left + x.shape[3]]
    if need_x:
        dx = dx.contiguous(memory_format=memory_format_of(x))
    return dx, dw, db
