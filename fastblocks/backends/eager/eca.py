"""Eager eca: pool -> 1-D conv across channels -> gate -> scale.

Saves x, the pooled (N,C) means and the (N,C) gate logits.
"""

from ..._dispatch import BackendImpl, register_impl
from ..excite import eca_logits, eca_logits_backward
from ._gating import add_pool_grad, gate_scale_backward, gate_scale_forward, pool


def forward(x, conv_weight, gate):
    pooled = pool(x)
    logits = eca_logits(pooled, conv_weight)
    return gate_scale_forward(x, logits, gate), pooled, logits


def backward(dy, x, pooled, logits, conv_weight, gate, mask):
    dx, dlogits = gate_scale_backward(dy, x, logits, gate, mask[0])
    d_pooled, d_w = eca_logits_backward(pooled, dlogits, conv_weight, mask[0], mask[1])
    if mask[0]:
        dx = add_pool_grad(dx, d_pooled, x)
    return dx, d_w


register_impl("eca", "eager", BackendImpl(forward, backward))
