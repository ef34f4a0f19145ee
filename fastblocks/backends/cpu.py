"""The ``cpu`` backend: fused C++ kernels from the compiled extension ``fastblocks._C``.

The extension registers kernel-level ops ``torch.ops.fastblocks_cpu.*`` (schemas in
``csrc/bindings.cpp``, CPU implementations in ``csrc/*_cpu.cpp``); this module wraps them into
:class:`~fastblocks._dispatch.BackendImpl` objects with the same forward / backward signatures and
return conventions as the eager backend (``fastblocks/backends/eager/*.py``), op by op.

What runs in C++ (full-size passes, parallel with ``at::parallel_for``, so ``torch.set_num_threads``
applies; channels_last is the fast path, NCHW is supported):

- ``dwconv_bn_act``: eval folds BN into the conv (x read once, y written once); training computes
  batch statistics in a first pass and normalises in a second, recomputing the conv (the conv
  output is never stored). Backward recomputes from x and the per-channel mean / var.
- ``bn_act``: the same without the conv.
- ``gate_scale`` / ``squeeze_excite`` / ``eca``: pooling, the gated scale, and one backward pass over
  dy and x giving dx-through-the-scale and the per-(n, c) sum(dy * x). The (N, C) MLP / 1-D conv and
  the gate run in ATen here.
- ``activation``: silu / hardswish / relu / relu6 / identity forward and backward (saves x only).

Without the extension the backend is declared unavailable (``fb.available_backends()`` omits it and
``backend="cpu"`` raises with the reason); ``auto`` then uses ``eager``.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._act import gate_backward, gate_forward
from .._dispatch import BackendImpl, register_backend, register_impl
from .excite import eca_logits, eca_logits_backward, se_logits, se_logits_backward

KERNEL_OPS = ("act_forward", "act_backward", "bn_act_forward", "bn_act_backward", "dwconv_bn_act_forward",
              "dwconv_bn_act_backward", "channel_pool", "channel_scale", "channel_scale_backward")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
KERNEL_SIZES = (3, 5, 7)


def _load() -> tuple[Optional[object], Optional[str]]:
    """(torch.ops.fastblocks_cpu, None) when the extension and its CPU kernels load, else (None, reason)."""
    try:
        from .. import _C  # noqa: F401  (loading the library registers torch.ops.fastblocks_cpu)
    except ImportError as err:
        return None, f"fastblocks._C extension not built ({err})"
    ns = torch.ops.fastblocks_cpu
    missing = [name for name in KERNEL_OPS if not hasattr(ns, name)]
    if missing:
        return None, f"fastblocks._C extension has no CPU kernels for {missing} (rebuild it)"
    return ns, None


_ops, _REASON = _load()


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_x(x: torch.Tensor) -> Optional[str]:
    if x.device.type != "cpu":
        return f"the cpu backend runs on CPU tensors, got device {x.device.type!r}"
    if x.dtype not in DTYPES:
        return f"the cpu backend supports {[str(d) for d in DTYPES]}, got {x.dtype}"
    return None


# ---------------------------------------------------------------------------------- activation
def _activation_forward(x, act):
    return _ops.act_forward(x, act)


def _activation_backward(dy, x, act):
    return _ops.act_backward(dy, x, act)


def _activation_supports(x, act):
    return _check_x(x)


# ---------------------------------------------------------------------------------- bn_act
def _bn_act_forward(x, bn_weight, bn_bias, running_mean, running_var, training, eps, act):
    return tuple(_ops.bn_act_forward(x, bn_weight, bn_bias, running_mean, running_var, training, eps, act))


def _bn_act_backward(dy, x, bn_weight, bn_bias, mean, var, training, eps, act, mask):
    return tuple(_ops.bn_act_backward(dy, x, bn_weight, bn_bias, mean, var, training, eps, act, list(mask)))


def _bn_act_supports(x, *args):
    return _check_x(x)


# ---------------------------------------------------------------------------------- dwconv_bn_act
def _dwconv_forward(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                    stride, padding_mode, padding, dilation, training, eps, act):
    return tuple(_ops.dwconv_bn_act_forward(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                                            stride, padding_mode, padding, training, eps, act))


def _dwconv_backward(dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var,
                     stride, padding_mode, padding, dilation, training, eps, act, mask):
    return tuple(_ops.dwconv_bn_act_backward(dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var, stride,
                                             padding_mode, padding, training, eps, act, list(mask)))


def _dwconv_supports(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                     stride, padding_mode, padding, dilation, training, eps, act):
    reason = _check_x(x)
    if reason is not None:
        return reason
    k = weight.shape[-1]
    if k not in KERNEL_SIZES:
        return f"the cpu backend's depthwise kernels support k in {KERNEL_SIZES}, got k={k}"
    if dilation != 1:
        return f"the cpu backend supports dilation 1 only, got {dilation}"
    if stride not in (1, 2):
        return f"the cpu backend supports stride 1 or 2, got {stride}"
    return None


# ---------------------------------------------------------------------------------- gating
def _gate(gate, logits, x):
    la = logits.to(_acc(x))
    return la, gate_forward(gate, la).contiguous()


def _gate_scale_forward(x, logits, gate):
    _, g = _gate(gate, logits, x)
    return _ops.channel_scale(x, g, None)


def _gate_scale_backward(dy, x, logits, gate, mask):
    la, g = _gate(gate, logits, x)
    dx, s = _ops.channel_scale_backward(dy, x, g, bool(mask[0]))
    return dx, gate_backward(gate, la, s)


def _gating_supports(x, *args):
    return _check_x(x)


def _se_forward(x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate):
    pooled = _ops.channel_pool(x)
    logits = se_logits(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias, act)
    return _ops.channel_scale(x, gate_forward(gate, logits).contiguous(), None), pooled, logits


def _se_backward(dy, x, pooled, logits, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate, mask):
    g = gate_forward(gate, logits).contiguous()
    _, s = _ops.channel_scale_backward(dy, x, g, False)  # one pass: sum_hw dy * x
    dlogits = gate_backward(gate, logits, s)
    d_pooled, d_wr, d_br, d_we, d_be = se_logits_backward(pooled, dlogits, reduce_weight, reduce_bias,
                                                          expand_weight, expand_bias, act)
    dx = None
    if mask[0]:  # dx = dy * gate + d(pooled) / (H * W), one pass
        dx = _ops.channel_scale(dy, g, d_pooled / (x.shape[2] * x.shape[3]))
    return dx, d_wr, d_br, d_we, d_be


def _eca_forward(x, conv_weight, gate):
    pooled = _ops.channel_pool(x)
    logits = eca_logits(pooled, conv_weight)
    return _ops.channel_scale(x, gate_forward(gate, logits).contiguous(), None), pooled, logits


def _eca_backward(dy, x, pooled, logits, conv_weight, gate, mask):
    g = gate_forward(gate, logits).contiguous()
    _, s = _ops.channel_scale_backward(dy, x, g, False)
    dlogits = gate_backward(gate, logits, s)
    d_pooled, d_w = eca_logits_backward(pooled, dlogits, conv_weight, mask[0], mask[1])
    dx = None
    if mask[0]:
        dx = _ops.channel_scale(dy, g, d_pooled / (x.shape[2] * x.shape[3]))
    return dx, d_w


# ---------------------------------------------------------------------------------- registration
def available() -> Optional[str]:
    """None when the cpu backend can run in this process, else the reason."""
    return _REASON


register_backend("cpu", available)
if _ops is not None:
    register_impl("activation", "cpu", BackendImpl(_activation_forward, _activation_backward, _activation_supports))
    register_impl("bn_act", "cpu", BackendImpl(_bn_act_forward, _bn_act_backward, _bn_act_supports))
    register_impl("dwconv_bn_act", "cpu", BackendImpl(_dwconv_forward, _dwconv_backward, _dwconv_supports))
    register_impl("gate_scale", "cpu", BackendImpl(_gate_scale_forward, _gate_scale_backward, _gating_supports))
    register_impl("squeeze_excite", "cpu", BackendImpl(_se_forward, _se_backward, _gating_supports))
    register_impl("eca", "cpu", BackendImpl(_eca_forward, _eca_backward, _gating_supports))
