"""Eager eca: pool -> 1-D conv across channels -> gate -> scale.

Saves x, the pooled (N,C) means and the (N,C) gate logits.
"""

import torch

from ..._dispatch import BackendImpl, register_impl
from ._gating import add_pool_grad, gate_scale_backward, gate_scale_forward, pool


def _pad(conv_weight):
    return (conv_weight.shape[-1] - 1) // 2


def forward(x, conv_weight, gate):
    pooled = pool(x)
    w = conv_weight.to(pooled.dtype)
    logits = torch.nn.functional.conv1d(pooled.unsqueeze(1), w, padding=_pad(conv_weight)).squeeze(1)
    return gate_scale_forward(x, logits, gate), pooled, logits


def backward(dy, x, pooled, logits, conv_weight, gate, mask):
    dx, dlogits = gate_scale_backward(dy, x, logits, gate, mask[0])
    w = conv_weight.to(pooled.dtype)
    d_pooled, d_w, _ = torch.ops.aten.convolution_backward(
        dlogits.unsqueeze(1), pooled.unsqueeze(1), w, None, [1], [_pad(conv_weight)], [1],
        False, [0], 1, [mask[0], mask[1], False])
    if mask[0]:
        dx = add_pool_grad(dx, d_pooled.squeeze(1), x)
    return dx, d_w


register_impl("eca", "eager", BackendImpl(forward, backward))
