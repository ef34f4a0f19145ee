"""Eager dwconv_bn_act: conv -> BN -> act (eval, float32 / float64: one conv with the BN folded in);
backward recomputes the conv output from x."""

import torch

from ..._dispatch import BackendImpl, register_impl
from ._common import (bn_act_backward, bn_act_forward, bn_act_train_forward, running_stats, dwconv_backward,
                      dwconv_bn_act_folded, dwconv_forward)


def forward(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
            stride, padding_mode, padding, dilation, training, eps, act):
    if not training and x.dtype in (torch.float32, torch.float64):
        mean, var = running_stats(running_mean, running_var, x)
        y = dwconv_bn_act_folded(x, weight, conv_bias, bn_weight, bn_bias, mean, var, stride, padding_mode,
                                 padding, dilation, eps, act)
        return y, mean, var
    z = dwconv_forward(x, weight, conv_bias, stride, padding_mode, padding, dilation)
    if training:
        return bn_act_train_forward(z, bn_weight, bn_bias, eps, act)
    mean, var = running_stats(running_mean, running_var, z)
    return bn_act_forward(z, bn_weight, bn_bias, mean, var, eps, act), mean, var


def backward(dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var,
             stride, padding_mode, padding, dilation, training, eps, act, mask):
    z = dwconv_forward(x, weight, conv_bias, stride, padding_mode, padding, dilation)
    dz, dgamma, dbeta = bn_act_backward(z, dy, bn_weight, bn_bias, mean, var, eps, training, act)
    del z
    dx, dw, db = dwconv_backward(dz, x, weight, stride, padding_mode, padding, dilation,
                                 mask[0], mask[1], mask[4])
    return dx, dw, dgamma, dbeta, db


register_impl("dwconv_bn_act", "eager", BackendImpl(forward, backward))
