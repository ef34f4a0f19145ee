"""The ``reference`` backend: plain compositions of PyTorch ops, autograd through ATen.

This is the ground truth every other backend is tested against. It saves what PyTorch's autograd
saves (conv output, BN output, activation output, ...), which is what fastblocks exists to avoid.
"""

from __future__ import annotations

import torch.nn.functional as F

from .._act import act_forward, gate_forward
from .._validate import conv_pads
from .excite import eca_logits, se_logits


def depthwise_conv(x, weight, conv_bias, stride, padding_mode, padding, dilation):
    """F.conv2d with groups=C; asymmetric (tf_same) padding through an explicit F.pad."""
    k = weight.shape[-1]
    top, bottom, left, right = conv_pads(padding_mode, padding, k, stride, dilation, x.shape[2], x.shape[3])
    if top != bottom or left != right:
        x = F.pad(x, (left, right, top, bottom))
        top = left = 0
    return F.conv2d(x, weight, conv_bias, stride, (top, left), dilation, groups=x.shape[1])


def bn_act(x, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps, act):
    """F.batch_norm (updates running stats in place when training) followed by the activation."""
    u = F.batch_norm(x, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    return act_forward(act, u)


def dwconv_bn_act(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                  stride, padding_mode, padding, dilation, training, momentum, eps, act):
    z = depthwise_conv(x, weight, conv_bias, stride, padding_mode, padding, dilation)
    return bn_act(z, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps, act)


def gate_scale(x, logits, gate):
    """x (N,C,H,W) * gate(logits) (N,C) broadcast over H, W."""
    return x * gate_forward(gate, logits)[:, :, None, None]


def squeeze_excite(x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate):
    logits = se_logits(x.mean((2, 3)), reduce_weight, reduce_bias, expand_weight, expand_bias, act)
    return gate_scale(x, logits, gate)


def eca(x, conv_weight, gate):
    return gate_scale(x, eca_logits(x.mean((2, 3)), conv_weight), gate)


def activation(x, act):
    return act_forward(act, x)
