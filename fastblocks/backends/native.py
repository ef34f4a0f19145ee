"""The ``cpu``, ``cuda`` and ``cuda_emulated`` backends: fused kernels from the compiled extensions.

The extension registers kernel-level ops ``torch.ops.fastblocks_kernels.*`` (schemas once in
``csrc/bindings.cpp``; CPU implementations in ``csrc/*_cpu.cpp``, CUDA ones in ``csrc/*.cu``). The
dispatcher picks the CPU or CUDA kernel from the tensors' device, so the wrappers below are written
once and serve both backends: this module builds one set of
:class:`~fastblocks._dispatch.BackendImpl` objects per device type (same forward / backward
signatures and return conventions as the eager backend, ``fastblocks/backends/eager/*.py``); only
availability and ``supports`` differ per device.

``cuda_emulated`` runs the CUDA kernels (``csrc/*.cu``, the same sources and host launchers) on CPU
tensors, on the CPU emulator of ``csrc/emulation/`` (``docs/cuda_emulation.md``): the extension
``fastblocks._C_cuda_emulated``, built only with ``FASTBLOCKS_BUILD_CUDA_EMULATION=1``, registers the
same kernel ops under ``torch.ops.fastblocks_cuda_emulated``. It is for testing the CUDA kernels
without a GPU: listed by ``fb.available_backends()`` when built, never chosen by ``auto``.

What runs in the kernels (full-size passes):

- ``dwconv_bn_act``: eval folds BN into the conv (x read once, y written once); training computes
  batch statistics in a first pass and normalises in a second, recomputing the conv (the conv
  output is never stored). Backward recomputes from x and the per-channel mean / var.
- ``bn_act``: the same without the conv.
- ``gate_scale`` / ``squeeze_excite`` / ``eca``: pooling, the gated scale, and one backward pass over
  dy and x giving dx-through-the-scale and the per-(n, c) sum(dy * x). The (N, C) MLP / 1-D conv and
  the gate run in ATen here.
- ``activation``: silu / hardswish / relu / relu6 / leaky_relu / gelu / gelu_tanh / identity forward and backward (saves x only).

CPU: ``at::parallel_for`` (``torch.set_num_threads`` applies), channels_last is the fast path.
CUDA: one thread per output pixel and 16-byte channel vector on channels_last; deterministic
reductions (per-block partials reduced in a fixed order, no atomics).

A backend whose kernels are missing is declared unavailable with the reason
(``fb.available_backends()`` omits it and ``backend="cpu"`` / ``"cuda"`` raises
:class:`~fastblocks.BackendUnavailableError`); ``auto`` then falls back per ``AUTO_PREFERENCE``.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Callable, Optional

import torch

from .._act import gate_backward, gate_forward
from .._dispatch import BackendImpl, register_backend, register_config_check, register_impl
from .excite import eca_logits, eca_logits_backward, se_logits, se_logits_backward
from .kernel_configs import dwconv_config_problem

KERNEL_OPS = ("act_forward", "act_backward", "bn_act_forward", "bn_act_backward", "dwconv_bn_act_forward",
              "dwconv_bn_act_backward", "channel_pool", "channel_scale", "channel_scale_backward")
# Backend name -> device type of its tensors.
BACKEND_DEVICES = {"cpu": "cpu", "cuda": "cuda", "cuda_emulated": "cpu"}
# float64 runs in both (double accumulation); float16 / bfloat16 accumulate in float32.
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA"}
# Backend name -> (extension module, op namespace, how to build it).
_EXTENSIONS = {
    "cpu": ("_C", "fastblocks_kernels", "FASTBLOCKS_BUILD_CPU=1"),
    "cuda": ("_C", "fastblocks_kernels", "nvcc (CUDA_HOME) found at build time"),
    "cuda_emulated": ("_C_cuda_emulated", "fastblocks_cuda_emulated", "FASTBLOCKS_BUILD_CUDA_EMULATION=1"),
}


@functools.lru_cache(maxsize=None)
def _load(module: str, namespace: str) -> tuple[Optional[object], Optional[str]]:
    """(torch.ops.<namespace>, None) when fastblocks.<module> loads, else (None, reason)."""
    try:
        importlib.import_module(f"fastblocks.{module}")  # loading the library registers the ops
    except ImportError as err:
        return None, f"fastblocks.{module} extension not built ({err})"
    return getattr(torch.ops, namespace), None


def kernel_ops(backend: str) -> Optional[object]:
    """The kernel-op namespace ``backend`` calls (``torch.ops.fastblocks_kernels`` or
    ``torch.ops.fastblocks_cuda_emulated``), or None when its extension is not built."""
    module, namespace, _ = _EXTENSIONS[backend]
    return _load(module, namespace)[0]


@functools.lru_cache(maxsize=None)
def has_kernels(backend: str) -> bool:
    """Whether ``backend``'s extension registered every kernel op for its device (fixed once loaded)."""
    module, namespace, _ = _EXTENSIONS[backend]
    if _load(module, namespace)[0] is None:
        return False
    key = _DISPATCH_KEY[BACKEND_DEVICES[backend]]
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"{namespace}::{name}", key) for name in KERNEL_OPS)


def unavailable_reason(backend: str) -> Optional[str]:
    """None when ``backend`` ("cpu", "cuda" or "cuda_emulated") can run in this process, else the reason."""
    module, namespace, how = _EXTENSIONS[backend]
    ops, reason = _load(module, namespace)
    if ops is None:
        return f"{reason}; build it with {how}: python setup.py build_ext --inplace"
    if not has_kernels(backend):
        return (f"fastblocks.{module} was built without {backend.upper()} kernels (rebuild with {how}: "
                f"python setup.py build_ext --inplace)")
    if backend == "cuda" and not torch.cuda.is_available():
        return "the cuda backend needs a CUDA device (torch.cuda.is_available() is False)"
    if backend == "cpu" and not has_baseline_copy() and _below_avx2():
        return ("fastblocks._C was built without the baseline (pre-AVX2) copy of the CPU kernels, which this CPU "
                "(or FASTBLOCKS_CPU_ISA=default) needs: rebuild with FASTBLOCKS_CPU_BASELINE=1")
    return None


@functools.lru_cache(maxsize=None)
def has_baseline_copy() -> bool:
    """Whether fastblocks._C holds the baseline (pre-AVX2) copy of the CPU kernels."""
    try:
        module = importlib.import_module("fastblocks._C")
    except ImportError:
        return False
    return bool(getattr(module, "has_baseline_copy", 1))


@functools.lru_cache(maxsize=None)
def _below_avx2() -> bool:
    """The CPU kernels would pick their baseline copy here (no AVX2, or capped to it; both read
    once per process, like the kernels' own choice)."""
    if os.environ.get("FASTBLOCKS_CPU_ISA", "").strip() == "default":
        return True
    return torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX")


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_x(backend: str, x: torch.Tensor) -> Optional[str]:
    device_type = BACKEND_DEVICES[backend]
    if x.device.type != device_type:
        return f"the {backend} backend runs on {device_type.upper()} tensors, got device {x.device.type!r}"
    if x.dtype not in DTYPES:
        return f"the {backend} backend supports {[str(d) for d in DTYPES]}, got {x.dtype}"
    return None


# ---------------------------------------------------------------------------------- activation
def _activation_forward(ops, x, act):
    return ops.act_forward(x, act)


def _activation_backward(ops, dy, x, act):
    return ops.act_backward(dy, x, act)


# ---------------------------------------------------------------------------------- bn_act
def _bn_act_forward(ops, x, bn_weight, bn_bias, running_mean, running_var, training, eps, act):
    return tuple(ops.bn_act_forward(x, bn_weight, bn_bias, running_mean, running_var, training, eps, act))


def _bn_act_backward(ops, dy, x, bn_weight, bn_bias, mean, var, training, eps, act, mask):
    return tuple(ops.bn_act_backward(dy, x, bn_weight, bn_bias, mean, var, training, eps, act, list(mask)))


# ---------------------------------------------------------------------------------- dwconv_bn_act
def _dwconv_forward(ops, x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                    stride, padding_mode, padding, dilation, training, eps, act):
    return tuple(ops.dwconv_bn_act_forward(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                                            stride, padding_mode, padding, training, eps, act))


def _dwconv_backward(ops, dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var,
                     stride, padding_mode, padding, dilation, training, eps, act, mask):
    return tuple(ops.dwconv_bn_act_backward(dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var, stride,
                                             padding_mode, padding, training, eps, act, list(mask)))


def _dwconv_supports(backend, x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias,
                     stride, padding_mode, padding, dilation, training, eps, act):
    return _check_x(backend, x) or dwconv_config_problem(backend, weight.shape[-1], stride, dilation)


# ---------------------------------------------------------------------------------- gating
def _gate(gate, logits, x):
    la = logits.to(_acc(x))
    return la, gate_forward(gate, la).contiguous()


def _gate_scale_forward(ops, x, logits, gate):
    _, g = _gate(gate, logits, x)
    return ops.channel_scale(x, g, None)


def _gate_scale_backward(ops, dy, x, logits, gate, mask):
    la, g = _gate(gate, logits, x)
    dx, s = ops.channel_scale_backward(dy, x, g, bool(mask[0]))
    return dx, gate_backward(gate, la, s)


def _se_forward(ops, x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate):
    pooled = ops.channel_pool(x)
    logits = se_logits(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias, act)
    return ops.channel_scale(x, gate_forward(gate, logits).contiguous(), None), pooled, logits


def _se_backward(ops, dy, x, pooled, logits, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate, mask):
    g = gate_forward(gate, logits).contiguous()
    _, s = ops.channel_scale_backward(dy, x, g, False)  # one pass: sum_hw dy * x
    dlogits = gate_backward(gate, logits, s)
    d_pooled, d_wr, d_br, d_we, d_be = se_logits_backward(pooled, dlogits, reduce_weight, reduce_bias,
                                                          expand_weight, expand_bias, act)
    dx = None
    if mask[0]:  # dx = dy * gate + d(pooled) / (H * W), one pass
        dx = ops.channel_scale(dy, g, d_pooled / (x.shape[2] * x.shape[3]))
    return dx, d_wr, d_br, d_we, d_be


def _eca_forward(ops, x, conv_weight, gate):
    pooled = ops.channel_pool(x)
    logits = eca_logits(pooled, conv_weight)
    return ops.channel_scale(x, gate_forward(gate, logits).contiguous(), None), pooled, logits


def _eca_backward(ops, dy, x, pooled, logits, conv_weight, gate, mask):
    g = gate_forward(gate, logits).contiguous()
    _, s = ops.channel_scale_backward(dy, x, g, False)
    dlogits = gate_backward(gate, logits, s)
    d_pooled, d_w = eca_logits_backward(pooled, dlogits, conv_weight, mask[0], mask[1])
    dx = None
    if mask[0]:
        dx = ops.channel_scale(dy, g, d_pooled / (x.shape[2] * x.shape[3]))
    return dx, d_w


# ---------------------------------------------------------------------------------- registration
def available(backend: str = "cpu") -> Optional[str]:
    """None when ``backend`` ("cpu", "cuda" or "cuda_emulated") can run in this process, else the reason."""
    return unavailable_reason(backend)


def supports_for(backend: str) -> dict[str, Callable[..., Optional[str]]]:
    """op name -> ``supports(*forward_args)`` of ``backend``."""
    def check_x(x, *args):
        return _check_x(backend, x)

    return {"activation": check_x, "bn_act": check_x, "gate_scale": check_x, "squeeze_excite": check_x,
            "eca": check_x, "dwconv_bn_act": functools.partial(_dwconv_supports, backend)}


# The forward / backward wrappers are device-independent (the dispatcher routes the kernel op by the
# tensors' device); each backend gets them bound to its op namespace, with its own supports().
_FORWARD_BACKWARD = {
    "activation": (_activation_forward, _activation_backward),
    "bn_act": (_bn_act_forward, _bn_act_backward),
    "dwconv_bn_act": (_dwconv_forward, _dwconv_backward),
    "gate_scale": (_gate_scale_forward, _gate_scale_backward),
    "squeeze_excite": (_se_forward, _se_backward),
    "eca": (_eca_forward, _eca_backward),
}


def _register(backend: str) -> None:
    register_backend(backend, functools.partial(unavailable_reason, backend))
    register_config_check("dwconv_bn_act", backend, functools.partial(dwconv_config_problem, backend))
    if not has_kernels(backend):
        return
    ops, supports = kernel_ops(backend), supports_for(backend)
    for op, (forward, backward) in _FORWARD_BACKWARD.items():
        register_impl(op, backend, BackendImpl(functools.partial(forward, ops), functools.partial(backward, ops),
                                               supports[op]))


for _backend in BACKEND_DEVICES:
    _register(_backend)
