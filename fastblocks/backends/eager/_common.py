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


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    return t[None, :, None, None]


def _affine(bn_weight, bn_bias, var, eps, like):
    """(gamma, beta) in the accumulation dtype, ones / zeros when the BN is not affine."""
    dt = like.dtype
    gamma = bn_weight.to(dt) if bn_weight is not None else torch.ones_like(var, dtype=dt)
    beta = bn_bias.to(dt) if bn_bias is not None else torch.zeros_like(var, dtype=dt)
    return gamma, beta


def bn_stats(z: torch.Tensor, training: bool, running_mean, running_var):
    """Per-channel (mean, biased var) in the accumulation dtype: batch stats or running stats."""
    dt = acc_dtype(z)
    if training:
        var, mean = torch.var_mean(z.to(dt), dim=(0, 2, 3), unbiased=False)
        return mean, var
    return running_mean.to(dt).clone(), running_var.to(dt).clone()


def bn_act_forward(z, bn_weight, bn_bias, mean, var, eps, act):
    """act(BN(z)) in z's dtype and memory format; arithmetic in the accumulation dtype."""
    za = z.to(mean.dtype)
    gamma, beta = _affine(bn_weight, bn_bias, var, eps, mean)
    scale = gamma * torch.rsqrt(var + eps)
    u = za * _per_channel(scale) + _per_channel(beta - mean * scale)
    y = act_forward(act, u).to(z.dtype)
    return y.contiguous(memory_format=memory_format_of(z))


def bn_act_backward(z, dy, bn_weight, bn_bias, mean, var, eps, training, act):
    """(dz, dgamma, dbeta) of y = act(BN(z)), recomputing BN(z) from z and the saved stats."""
    dt = mean.dtype
    za, dya = z.to(dt), dy.to(dt)
    gamma, beta = _affine(bn_weight, bn_bias, var, eps, mean)
    invstd = torch.rsqrt(var + eps)
    zhat = (za - _per_channel(mean)) * _per_channel(invstd)
    du = act_backward(act, zhat * _per_channel(gamma) + _per_channel(beta), dya)
    dbeta = du.sum((0, 2, 3))
    dgamma = (du * zhat).sum((0, 2, 3))
    g_invstd = _per_channel(gamma * invstd)
    if training:
        count = z.numel() // z.shape[1]
        dz = g_invstd * (du - _per_channel(dbeta / count) - zhat * _per_channel(dgamma / count))
    else:
        dz = du * g_invstd
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
