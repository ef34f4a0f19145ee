"""The ``triton`` backend: fused Triton kernels (``fastblocks/kernels/*.py``) for every fastblocks op.

Available when Triton imports and either CUDA is available or ``TRITON_INTERPRET=1`` (then the
kernels run on CPU tensors through Triton's interpreter; that is how CI tests them). Forward /
backward signatures and return conventions are the eager backend's, op by op; gradients that
``mask`` does not request are returned as None. Saved for backward: what the custom ops save
(inputs and per-channel / per-(n, c) statistics), nothing full-size besides x.

``FASTBLOCKS_POISON=1`` fills every kernel output with NaN before the kernels run (tests set it,
so an element a kernel fails to write shows up as NaN).

Squeeze-excite / ECA: the pooling, scale and scale-backward passes are kernels; the tiny (N, C)
MLP / 1-D conv between them stays in PyTorch.

Graph capture (:mod:`fastblocks.ops._capture`): on CUDA tensors torch.compile / torch.export trace
these functions, every launch going through ``torch.library.wrap_triton``, so the compiled graph
holds the Triton kernels themselves rather than one opaque op.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from .._act import gate_backward
from .._dispatch import (BackendImpl, GraphCapture, register_backend, register_config_check, register_graph_capture,
                         register_impl)
from .excite import eca_logits, eca_logits_backward, se_logits, se_logits_backward
from .kernel_configs import dwconv_config_problem
from .._validate import conv_out_size, conv_pads

NAME = "triton"
_LOW_PRECISION = (torch.float16, torch.bfloat16, torch.float32)
_INT32_MAX = 2 ** 31 - 1


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no", "off")


def _availability() -> str | None:
    if not (_interpret() or torch.cuda.is_available()):
        return "needs a CUDA device (or TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    try:
        _kernels("_common")
    except Exception as err:  # a broken kernels package must say so, not vanish
        return f"the Triton kernels failed to import: {err!r}"
    return None


def _kernels(name: str):
    """Import kernels.<name> lazily (keeps ``import fastblocks`` free of triton)."""
    return importlib.import_module(f"fastblocks.kernels.{name}")


_KERNEL_MODULES = ("_common", "activation", "dwconv_bn_act", "gate_scale")


def _capture_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"traced launches need CUDA tensors, got {device.type}"
    if _interpret():
        return "TRITON_INTERPRET=1 runs the kernels eagerly"
    return _availability()


def _all_kernels() -> list:
    """Every jit / autotuned kernel in fastblocks/kernels/ (helpers included: they are part of the source)."""
    if _availability() is not None:
        return []
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    return [obj for name in _KERNEL_MODULES for obj in vars(_kernels(name)).values()
            if isinstance(obj, (JITFunction, Autotuner))]


# ----------------------------------------------------------------------------------------------
# supports(): None, or why this backend cannot run the call
# ----------------------------------------------------------------------------------------------

def _tensor_reason(x: torch.Tensor) -> str | None:
    if _interpret():
        if x.device.type != "cpu":
            return f"TRITON_INTERPRET=1 runs the kernels on CPU tensors, got a {x.device.type} tensor"
    elif x.device.type != "cuda":
        return f"needs CUDA tensors, got a {x.device.type} tensor"
    if x.dtype not in _LOW_PRECISION and not (x.dtype == torch.float64 and _interpret()):
        return f"dtype {x.dtype} is not supported (float16 / bfloat16 / float32; float64 only under the interpreter)"
    if x.dim() == 4 and x[0].numel() > _INT32_MAX:
        return "one sample has more than 2**31 elements"
    return None


def _dwconv_supports(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                     stride, padding_mode, padding, dilation, training, eps, act):
    return _tensor_reason(x) or dwconv_config_problem(NAME, weight.shape[-1], stride, dilation)


def _x_supports(x, *args):
    return _tensor_reason(x)


# ----------------------------------------------------------------------------------------------
# dwconv_bn_act / bn_act
# ----------------------------------------------------------------------------------------------

def _geometry(x, k, stride, padding_mode, padding, dilation):
    h, w = x.shape[2], x.shape[3]
    top, bottom, left, right = conv_pads(padding_mode, padding, k, stride, dilation, h, w)
    return top, left, conv_out_size(h, top, bottom, k, stride, dilation), conv_out_size(w, left, right, k, stride, dilation)


def dwconv_bn_act_forward(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                          stride, padding_mode, padding, dilation, training, eps, act):
    top, left, ho, wo = _geometry(x, weight.shape[-1], stride, padding_mode, padding, dilation)
    return _kernels("dwconv_bn_act").forward(x, weight, conv_bias, bn_weight, bn_bias, running_mean,
                                             running_var, stride, top, left, ho, wo, training, eps, act)


def dwconv_bn_act_backward(dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var,
                           stride, padding_mode, padding, dilation, training, eps, act, mask):
    top, left, _, _ = _geometry(x, weight.shape[-1], stride, padding_mode, padding, dilation)
    need = [bool(m) for m in mask]
    return _kernels("dwconv_bn_act").backward(
        dy, x, weight, conv_bias, bn_weight, bn_bias, mean, var, stride, top, left, training, eps, act,
        need_dx=need[0], need_dw=need[1], need_dgamma=need[2] and bn_weight is not None,
        need_dbeta=need[3] and bn_bias is not None, need_dbias=need[4] and conv_bias is not None)


def bn_act_forward(x, bn_weight, bn_bias, running_mean, running_var, training, eps, act):
    return _kernels("bn_act").forward(x, bn_weight, bn_bias, running_mean, running_var, training, eps, act)


def bn_act_backward(dy, x, bn_weight, bn_bias, mean, var, training, eps, act, mask):
    need = [bool(m) for m in mask]
    return _kernels("bn_act").backward(dy, x, bn_weight, bn_bias, mean, var, training, eps, act,
                                       need[0], need[1] and bn_weight is not None,
                                       need[2] and bn_bias is not None)


# ----------------------------------------------------------------------------------------------
# gate_scale, squeeze_excite, eca
# ----------------------------------------------------------------------------------------------

def _acc(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def gate_scale_forward(x, logits, gate):
    return _kernels("gate_scale").scale_forward(x, logits, gate)


def gate_scale_backward(dy, x, logits, gate, mask):
    dx, dgate = _kernels("gate_scale").scale_backward(dy, x, logits, gate, bool(mask[0]), bool(mask[1]))
    dlogits = gate_backward(gate, logits.to(_acc(x)).reshape(dgate.shape), dgate) if mask[1] else None
    return dx, dlogits


def squeeze_excite_forward(x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate):
    gs = _kernels("gate_scale")
    pooled = gs.pool(x)
    logits = se_logits(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias, act)
    return gs.scale_forward(x, logits, gate), pooled, logits


def squeeze_excite_backward(dy, x, pooled, logits, reduce_weight, reduce_bias, expand_weight,
                            expand_bias, act, gate, mask):
    gs = _kernels("gate_scale")
    # Pass 1 over (dy, x): sum_hw(dy * x) per (n, c). The MLP backward is (N, C)-sized torch.
    _, dgate = gs.scale_backward(dy, x, logits, gate, need_dx=False, need_dgate=True)
    dlogits = gate_backward(gate, logits.to(dgate.dtype), dgate)
    d_pooled, d_wr, d_br, d_we, d_be = se_logits_backward(pooled, dlogits, reduce_weight, reduce_bias,
                                                          expand_weight, expand_bias, act)
    grads = [None, d_wr, d_br, d_we, d_be]
    if mask[0]:
        # Pass 2 over dy: dx = dy * gate + d(mean_hw) / HW, written once.
        hw = x.shape[2] * x.shape[3]
        grads[0], _ = gs.scale_backward(dy, x, logits, gate, need_dx=True, need_dgate=False,
                                        add=d_pooled / hw)
    return tuple(g if m else None for g, m in zip(grads, mask))


def eca_forward(x, conv_weight, gate):
    gs = _kernels("gate_scale")
    pooled = gs.pool(x)
    logits = eca_logits(pooled, conv_weight)
    return gs.scale_forward(x, logits, gate), pooled, logits


def eca_backward(dy, x, pooled, logits, conv_weight, gate, mask):
    gs = _kernels("gate_scale")
    _, dgate = gs.scale_backward(dy, x, logits, gate, need_dx=False, need_dgate=True)
    dlogits = gate_backward(gate, logits.to(dgate.dtype), dgate)
    d_pooled, d_w = eca_logits_backward(pooled, dlogits, conv_weight, mask[0], mask[1])
    dx = None
    if mask[0]:
        hw = x.shape[2] * x.shape[3]
        dx, _ = gs.scale_backward(dy, x, logits, gate, need_dx=True, need_dgate=False,
                                  add=d_pooled / hw)
    return dx, (d_w if mask[1] else None)


# ----------------------------------------------------------------------------------------------
# activation
# ----------------------------------------------------------------------------------------------

def activation_forward(x, act):
    return _kernels("activation").forward(x, act)


def activation_backward(dy, x, act):
    return _kernels("activation").backward(dy, x, act)


def _activation_supports(x, act):
    return _tensor_reason(x)


register_backend(NAME, _availability)
register_graph_capture(NAME, GraphCapture(_capture_reason, lambda: _kernels("_common").capturing(), _all_kernels))
register_config_check("dwconv_bn_act", NAME, functools.partial(dwconv_config_problem, NAME))
register_impl("dwconv_bn_act", NAME, BackendImpl(dwconv_bn_act_forward, dwconv_bn_act_backward, _dwconv_supports))
register_impl("bn_act", NAME, BackendImpl(bn_act_forward, bn_act_backward, _x_supports))
register_impl("gate_scale", NAME, BackendImpl(gate_scale_forward, gate_scale_backward, _x_supports))
register_impl("squeeze_excite", NAME, BackendImpl(squeeze_excite_forward, squeeze_excite_backward, _x_supports))
register_impl("eca", NAME, BackendImpl(eca_forward, eca_backward, _x_supports))
register_impl("activation", NAME, BackendImpl(activation_forward, activation_backward, _activation_supports))
