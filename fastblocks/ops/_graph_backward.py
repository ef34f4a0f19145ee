"""A backward autograd can differentiate again, for backward passes run with ``create_graph=True``.

The fused backward kernels recompute from x and per-channel statistics and return plain tensors:
their result has no graph, so a second differentiation (gradient penalties, R1, MAML,
``torch.autograd.grad(..., create_graph=True)``, ``torch.func.grad`` / ``jacrev`` / ``hessian``,
which always build a graph) would see constants. Autograd runs a backward with grad mode on exactly
when it builds a graph, so each op's backward asks :func:`graph_requested` and then returns
:func:`graph_backward`: the op's output recomputed by the reference composition (plain PyTorch ops)
from the saved inputs and differentiated with a graph. The gradients are the unpatched model's
(same math, same ATen kernels); the cost is one more forward of the composition per op during that
backward, whose intermediates stay alive as long as the graph of the gradients does (what the
unpatched model keeps).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

Tensor = torch.Tensor


def graph_requested() -> bool:
    """True inside a backward that autograd runs with ``create_graph=True`` (grad mode is off in a
    plain backward)."""
    return torch.is_grad_enabled()


def graph_backward(ctx, grad: Tensor, recompute: Callable[..., Tensor], tensors: Sequence[Optional[Tensor]],
                   positions: Sequence[int], n_inputs: int) -> tuple:
    """Gradients, with a graph, of ``recompute(*tensors)`` (the op's first output) against ``grad``.

    ``tensors`` are the op's differentiable inputs as saved for backward (None where absent) and
    ``positions`` their indices among the op's ``n_inputs`` arguments (``ctx.needs_input_grad``
    order); returns one entry per argument, None where no gradient is needed."""
    wanted = [j for j, i in enumerate(positions) if tensors[j] is not None and ctx.needs_input_grad[i]]
    grads: list = [None] * n_inputs
    if not wanted:
        return tuple(grads)
    # A saved tensor that needs a gradient here but carries no graph of its own (an input of an
    # inner torch.func level, say) becomes a leaf: the result depends on it only through this call.
    sources = list(tensors)
    for j in wanted:
        if not sources[j].requires_grad:
            sources[j] = sources[j].detach().requires_grad_()
    with torch.enable_grad():
        y = recompute(*sources)
    got = torch.autograd.grad(y.to(grad.dtype), [sources[j] for j in wanted], grad,
                              create_graph=True, allow_unused=True)
    for j, g in zip(wanted, got):
        grads[positions[j]] = g
    return tuple(grads)
