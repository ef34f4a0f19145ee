"""Eager squeeze_excite: pool -> FC -> act -> FC -> gate -> scale.

Saves x, the pooled (N,C) means and the (N,C) gate logits; backward recomputes the tiny MLP.
"""

from ..._dispatch import BackendImpl, register_impl
from ..excite import se_logits, se_logits_backward
from ._gating import add_pool_grad, gate_scale_backward, gate_scale_forward, pool


def forward(x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate):
    pooled = pool(x)
    logits = se_logits(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias, act)
    return gate_scale_forward(x, logits, gate), pooled, logits


def backward(dy, x, pooled, logits, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate, mask):
    dx, dlogits = gate_scale_backward(dy, x, logits, gate, mask[0])
    d_pooled, *param_grads = se_logits_backward(pooled, dlogits, reduce_weight, reduce_bias, expand_weight,
                                                expand_bias, act)
    if mask[0]:
        dx = add_pool_grad(dx, d_pooled, x)
    return (dx, *param_grads)


register_impl("squeeze_excite", "eager", BackendImpl(forward, backward))
