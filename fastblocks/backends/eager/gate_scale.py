"""Eager gate_scale: y = x * gate(logits); saves x and logits."""

from ..._dispatch import BackendImpl, register_impl
from ._gating import gate_scale_backward, gate_scale_forward


def forward(x, logits, gate):
    return gate_scale_forward(x, logits, gate)


def backward(dy, x, logits, gate, mask):
    dx, dlogits = gate_scale_backward(dy, x, logits, gate, mask[0])
    return dx, dlogits


register_impl("gate_scale", "eager", BackendImpl(forward, backward))
