"""fastblocks::squeeze_excite — pool -> FC -> act -> FC -> gate -> scale, one fused op."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import _dispatch
from .._act import canonical_act, canonical_gate
from .._validate import check_input, check_optional, check_tensor, memory_format_of
from .._recompute import offer
from ..backends import reference
from ..backends.eager._gating import gate_scale_forward
from ._fused_op import fused_op
from ._graph_backward import graph_backward, graph_requested
from ._plumbing import fake_slot, from_slot, grad_slot, needs, reference_serves, run_backward, run_forward

Tensor = torch.Tensor
OP = "squeeze_excite"


@fused_op("fastblocks::squeeze_excite")
def _forward(x: Tensor, reduce_weight: Tensor, reduce_bias: Optional[Tensor], expand_weight: Tensor,
             expand_bias: Optional[Tensor], act: str, gate: str, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, pooled (N,C), logits (N,C)); pooled and logits in float32 (float64 for float64 x)."""
    return run_forward(OP, backend, (x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate))


@_forward.register_fake
def _forward_fake(x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate, backend):
    nc = x.new_empty(x.shape[:2], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return x.new_empty(x.shape).contiguous(memory_format=memory_format_of(x)), nc, torch.empty_like(nc)


@fused_op("fastblocks::squeeze_excite_backward")
def _backward_op(dy: Tensor, x: Tensor, pooled: Tensor, logits: Tensor, reduce_weight: Tensor,
                 reduce_bias: Optional[Tensor], expand_weight: Tensor, expand_bias: Optional[Tensor],
                 act: str, gate: str, mask: Sequence[bool], backend: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, reduce_weight, reduce_bias, expand_weight, expand_bias)."""
    params = (reduce_weight, reduce_bias, expand_weight, expand_bias)
    grads = run_backward(OP, backend, (x, *params, act, gate),
                         (dy, x, pooled, logits, *params, act, gate, list(mask)))
    return tuple(grad_slot(g, like, x, m) for g, like, m in zip(grads, (x, *params), mask))


@_backward_op.register_fake
def _backward_fake(dy, x, pooled, logits, reduce_weight, reduce_bias, expand_weight, expand_bias,
                   act, gate, mask, backend):
    likes = (x, reduce_weight, reduce_bias, expand_weight, expand_bias)
    return tuple(fake_slot(like, x, m) for like, m in zip(likes, mask))


def _setup_context(ctx, inputs, output):
    x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate, backend = inputs
    _, pooled, logits = output
    # x and two (N, C) tensors; the bottleneck activations are recomputed.
    ctx.save_for_backward(x, pooled, logits, reduce_weight, reduce_bias, expand_weight, expand_bias)
    ctx.config = (act, gate)
    ctx.backend = backend


def _autograd_backward(ctx, dy, _dpooled, _dlogits):
    saved = ctx.saved_tensors
    if graph_requested():
        x, _, _, *params = saved
        act, gate = ctx.config
        return graph_backward(ctx, dy, lambda *t: reference.squeeze_excite(*t, act, gate), (x, *params),
                              (0, 1, 2, 3, 4), 8)
    mask = needs(ctx, 0, 1, 2, 3, 4)
    if not any(mask):
        return (None,) * 8
    grads = _backward_op(dy, *saved, *ctx.config, mask, ctx.backend)
    return tuple(from_slot(g, m) for g, m in zip(grads, mask)) + (None,) * 3


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _fc_weight(w: object, name: str, x: Tensor, out_features: Optional[int], in_features: Optional[int]) -> None:
    check_tensor(w, name, x, None)
    shape = tuple(w.shape)
    ok = w.dim() in (2, 4) and (w.dim() == 2 or shape[2:] == (1, 1))
    ok = ok and (out_features is None or shape[0] == out_features) and (in_features is None or shape[1] == in_features)
    if not ok:
        want = f"({out_features or 'R'}, {in_features or 'R'}) or ({out_features or 'R'}, {in_features or 'R'}, 1, 1)"
        raise ValueError(f"{name} must have shape {want}, got {shape}")


def squeeze_excite(x: Tensor, reduce_weight: Tensor, reduce_bias: Optional[Tensor], expand_weight: Tensor,
                   expand_bias: Optional[Tensor], *, act: str = "relu", gate: str = "sigmoid",
                   backend: Optional[str] = None) -> Tensor:
    """Squeeze-and-excitation: y = x * gate(W_e act(W_r mean_hw(x) + b_r) + b_e).

    Shapes: x (N, C, H, W); reduce_weight (R, C) or (R, C, 1, 1); reduce_bias (R,) or None;
    expand_weight (C, R) or (C, R, 1, 1); expand_bias (C,) or None. Params: x's dtype or float32.
    act: the bottleneck activation; gate: "sigmoid" or "hard_sigmoid". Returns y like x.
    Saved for backward (non-reference backends): x, the pooled (N, C) means and (N, C) gate logits.
    """
    check_input(x, "x")
    c = x.shape[1]
    _fc_weight(reduce_weight, "reduce_weight", x, None, c)
    r = reduce_weight.shape[0]
    _fc_weight(expand_weight, "expand_weight", x, c, r)
    check_optional(reduce_bias, "reduce_bias", x, (r,))
    check_optional(expand_bias, "expand_bias", x, (c,))
    act, gate = canonical_act(act), canonical_gate(gate)
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"x must have a non-empty spatial extent to pool, got shape {tuple(x.shape)}")
    name = _dispatch.requested(backend)
    if name == "reference" or reference_serves(x):
        return reference.squeeze_excite(x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate)
    y, _, logits = _forward(x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate, name)
    offer(y, gate_scale_forward, (x, logits), (gate,))
    return y
