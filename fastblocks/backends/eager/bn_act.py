"""Eager bn_act: BN -> act on x; backward recomputes BN(x) from x and the saved stats."""

from ..._dispatch import BackendImpl, register_impl
from ._common import bn_act_backward, bn_act_forward, bn_act_train_forward, running_stats


def forward(x, bn_weight, bn_bias, running_mean, running_var, training, eps, act):
    if training:
        return bn_act_train_forward(x, bn_weight, bn_bias, eps, act)
    mean, var = running_stats(running_mean, running_var, x)
    return bn_act_forward(x, bn_weight, bn_bias, mean, var, eps, act), mean, var


def backward(dy, x, bn_weight, bn_bias, mean, var, training, eps, act, mask):
    return bn_act_backward(x, dy, bn_weight, bn_bias, mean, var, eps, training, act)


register_impl("bn_act", "eager", BackendImpl(forward, backward))
