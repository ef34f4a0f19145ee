"""Eager squeeze_excite: pool -> FC -> act -> FC -> gate -> scale.

Saves x, the pooled (N,C) means and the (N,C) gate logits; backward recomputes the tiny MLP.
"""

import torch

from ..._act import act_backward, act_forward
from ..._dispatch import BackendImpl, register_impl
from ._gating import add_pool_grad, gate_scale_backward, gate_scale_forward, pool


def _mlp(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias):
    dt = pooled.dtype
    wr = reduce_weight.reshape(reduce_weight.shape[0], -1).to(dt)
    we = expand_weight.reshape(expand_weight.shape[0], -1).to(dt)
    br = reduce_bias.to(dt) if reduce_bias is not None else None
    be = expand_bias.to(dt) if expand_bias is not None else None
    return wr, br, we, be


def forward(x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate):
    pooled = pool(x)
    wr, br, we, be = _mlp(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias)
    hidden = act_forward(act, torch.nn.functional.linear(pooled, wr, br))
    logits = torch.nn.functional.linear(hidden, we, be)
    return gate_scale_forward(x, logits, gate), pooled, logits


def backward(dy, x, pooled, logits, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate, mask):
    dx, dlogits = gate_scale_backward(dy, x, logits, gate, mask[0])
    wr, br, we, be = _mlp(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias)
    hidden_pre = torch.nn.functional.linear(pooled, wr, br)
    hidden = act_forward(act, hidden_pre)
    d_we = dlogits.t() @ hidden
    d_be = dlogits.sum(0)
    d_hidden_pre = act_backward(act, hidden_pre, dlogits @ we)
    d_wr = d_hidden_pre.t() @ pooled
    d_br = d_hidden_pre.sum(0)
    if mask[0]:
        dx = add_pool_grad(dx, d_hidden_pre @ wr, x)
    return dx, d_wr, d_br, d_we, d_be


register_impl("squeeze_excite", "eager", BackendImpl(forward, backward))
