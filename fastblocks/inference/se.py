"""Squeeze-and-excitation at eval: pool, the tiny MLP on (N, C) in PyTorch, the gate applied in
one in-place pass over the (fresh) block-internal activation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._act import act_forward, gate_forward


def se_gate(se: torch.nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """The (N, C) gate of a :class:`fastblocks.nn.SqueezeExcite` from the (N, C) channel means."""
    reduce, expand = se._modules[se.names[0]], se._modules[se.names[1]]
    wr, we = reduce.weight, expand.weight
    hidden = act_forward(se.act, F.linear(pooled, wr.view(wr.shape[0], -1), reduce.bias))
    return gate_forward(se.gate, F.linear(hidden, we.view(we.shape[0], -1), expand.bias))


def se_eval(se: torch.nn.Module, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Output of a :class:`fastblocks.nn.SqueezeExcite` on x at eval (no autograd needed).
    ``inplace``: scale x itself (the caller owns x: a fresh intermediate inside a block)."""
    gate = se_gate(se, x.mean((2, 3)))
    gate = gate.view(gate.shape[0], gate.shape[1], 1, 1)
    if inplace and not (x.requires_grad and torch.is_grad_enabled()):  # autograd needs x unchanged
        return x.mul_(gate)
    return x * gate
