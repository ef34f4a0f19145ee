"""The (N, C)-sized half of SE and ECA, shared by every backend: logits from the pooled means and
their backward. Tiny matmuls / 1-D convs in PyTorch; only the full-size passes need kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._act import act_backward, act_forward


def _mlp_params(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias):
    dt = pooled.dtype
    wr = reduce_weight.reshape(reduce_weight.shape[0], -1).to(dt)
    we = expand_weight.reshape(expand_weight.shape[0], -1).to(dt)
    br = reduce_bias.to(dt) if reduce_bias is not None else None
    be = expand_bias.to(dt) if expand_bias is not None else None
    return wr, br, we, be


def se_logits(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias, act):
    """FC (C->R) -> act -> FC (R->C) on pooled (N, C); weights (R, C[, 1, 1]) / (C, R[, 1, 1])."""
    wr, br, we, be = _mlp_params(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias)
    return F.linear(act_forward(act, F.linear(pooled, wr, br)), we, be)


def se_logits_backward(pooled, dlogits, reduce_weight, reduce_bias, expand_weight, expand_bias, act):
    """(dpooled, d_reduce_weight, d_reduce_bias, d_expand_weight, d_expand_bias), recomputing the hidden layer."""
    wr, br, we, be = _mlp_params(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias)
    hidden_pre = F.linear(pooled, wr, br)
    d_we = dlogits.t() @ act_forward(act, hidden_pre)
    d_hidden_pre = act_backward(act, hidden_pre, dlogits @ we)
    return d_hidden_pre @ wr, d_hidden_pre.t() @ pooled, d_hidden_pre.sum(0), d_we, dlogits.sum(0)


def _eca_pad(conv_weight):
    return (conv_weight.shape[-1] - 1) // 2


def eca_logits(pooled, conv_weight):
    """ECA's 1-D conv across the channels of pooled (N, C), zero padded to keep C."""
    w = conv_weight.to(pooled.dtype)
    return F.conv1d(pooled.unsqueeze(1), w, padding=_eca_pad(conv_weight)).squeeze(1)


def eca_logits_backward(pooled, dlogits, conv_weight, need_pooled: bool, need_weight: bool):
    """(dpooled or None, dconv_weight or None)."""
    w = conv_weight.to(pooled.dtype)
    d_pooled, d_w, _ = torch.ops.aten.convolution_backward(
        dlogits.unsqueeze(1), pooled.unsqueeze(1), w, None, [1], [_eca_pad(conv_weight)], [1],
        False, [0], 1, [bool(need_pooled), bool(need_weight), False])
    return (d_pooled.squeeze(1) if need_pooled else None), (d_w if need_weight else None)
