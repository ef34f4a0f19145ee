"""Triton BatchNorm -> activation (no conv): the ``HAS_CONV=False`` instance of the fused
conv-BN-act kernel family in :mod:`fastblocks.kernels.dwconv_bn_act` (z = x; 1 x 1 "tap").

* eval forward: one pass, BN folded on the fly (read x once, write y once);
* training forward: Welford statistics pass (per-program rows merged in a fixed order) + normalise pass;
* backward from x and the per-channel mean / var: a sums pass (training only) and one pass that
  writes dx directly (in eval it also reduces sum(du), sum(du * zhat) for dgamma / dbeta).
"""

from __future__ import annotations

import torch

from . import dwconv_bn_act as _fused


def forward(x: torch.Tensor, bn_weight, bn_bias, running_mean, running_var, training: bool,
            eps: float, act: str):
    """(y, mean, var): y like x (dtype, memory format); mean / biased var in float32 (float64)."""
    return _fused.forward(x, None, None, bn_weight, bn_bias, running_mean, running_var,
                          1, 0, 0, x.shape[2], x.shape[3], training, eps, act)


def backward(dy: torch.Tensor, x: torch.Tensor, bn_weight, bn_bias, mean, var, training: bool,
             eps: float, act: str, need_dx: bool, need_dgamma: bool, need_dbeta: bool):
    """(dx, dgamma, dbeta), None where not needed."""
    dx, _, dgamma, dbeta, _ = _fused.backward(dy, x, None, None, bn_weight, bn_bias, mean, var, 1, 0, 0,
                                              training, eps, act, need_dx, False, need_dgamma,
                                              need_dbeta, False)
    return dx, dgamma, dbeta
