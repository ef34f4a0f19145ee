"""Helpers shared by the Triton kernels: interpreter detection, autotune wrapper, poisoned
allocation, activation / gate math and the deterministic row-reduction kernels.

Everything here uses Triton APIs present in Triton 3.6 (the GPU machine) and 3.8 (CI, where the
kernels run under ``TRITON_INTERPRET=1`` on CPU tensors).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch
import triton
import triton.language as tl

# Read once, like triton.jit does when it decides whether to build an InterpretedFunction.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no", "off")

# Environment variable that overrides the fixed block sizes used under the interpreter, e.g.
# "BH=2,BW=4,BC=2" (tests use it to put block boundaries inside tiny tensors).
INTERP_BLOCKS_ENV = "FASTBLOCKS_TRITON_INTERP_BLOCKS"
CONFIG_LIMIT_ENV = "FASTBLOCKS_TRITON_CONFIGS"


class _Capture(threading.local):
    def __init__(self) -> None:
        self.on = False


_CAPTURE = _Capture()


@contextlib.contextmanager
def capturing():
    """Launch through ``torch.library.wrap_triton`` inside the block: torch.compile / torch.export
    tracing then records each launch as a graph node (see fastblocks/ops/_capture.py)."""
    previous = _CAPTURE.on
    _CAPTURE.on = True
    try:
        yield
    finally:
        _CAPTURE.on = previous


def launcher(kernel):
    """``kernel`` (a jit / autotuned kernel), or its ``wrap_triton`` form inside :func:`capturing`.
    Every launch goes ``launcher(kernel)[grid](...)``: outside tracing the kernel is called
    directly (torch notes ~1 ms a launch for the traceable wrapper in eager mode)."""
    if _CAPTURE.on:
        return torch.library.wrap_triton(kernel)
    return kernel


def poison_enabled() -> bool:
    return os.environ.get("FASTBLOCKS_POISON", "0").strip().lower() not in ("", "0", "false", "no", "off")


def empty(shape, dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """torch.empty, filled with NaN when FASTBLOCKS_POISON=1 (so unwritten elements show)."""
    t = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if poison_enabled():
        t.fill_(float("nan"))
    return t


def empty_like(x: torch.Tensor, dtype=None) -> torch.Tensor:
    """torch.empty_like (strides preserved for dense tensors), poisoned like :func:`empty`."""
    t = torch.empty_like(x, dtype=dtype)
    if poison_enabled():
        t.fill_(float("nan"))
    return t


def acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / statistics dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def device_guard(x: torch.Tensor):
    """Make x's CUDA device current while launching (Triton launches on the current device)."""
    if x.device.type == "cuda":
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """How many programs a reduction pass should launch to fill the device (tiny under the
    interpreter, where every program costs Python time)."""
    if device.type != "cuda":
        return 3
    index = device.index if device.index is not None else torch.cuda.current_device()
    return 4 * _sm_count(index)


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def spatially_flat(t: torch.Tensor) -> bool:
    """True when (H, W) of a 4-D tensor can be walked as one flat index p with stride W-stride."""
    return t.shape[2] == 1 or t.shape[3] == 1 or t.stride(2) == t.shape[3] * t.stride(3)


class _FixedConfig:
    """Stand-in for triton.autotune under the interpreter: one fixed config, no benchmarking.

    Block sizes can be overridden per call through FASTBLOCKS_TRITON_INTERP_BLOCKS."""

    def __init__(self, fn, config: triton.Config):
        self.fn = fn
        self.config = config

    def kwargs(self) -> dict:
        kw = dict(self.config.kwargs)
        spec = os.environ.get(INTERP_BLOCKS_ENV, "").strip()
        if spec:
            for item in spec.split(","):
                name, value = item.split("=")
                if name.strip() in kw:
                    kw[name.strip()] = int(value)
        return kw

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            return self.fn[grid](*args, **kwargs, **self.kwargs())
        return launch


def config_limit() -> int | None:
    """FASTBLOCKS_TRITON_CONFIGS=N: autotune over the first N configs left after pruning (None:
    all). Compiling every config of every specialisation is what makes a first GPU run slow; the
    GPU tests, which check results rather than speed, run with 1."""
    value = os.environ.get(CONFIG_LIMIT_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"environment variable {CONFIG_LIMIT_ENV} must be a positive integer, got {value!r}")
    return int(value)


def autotune_bench(kernel_call, quantiles):
    """How the autotuner times a config: 5 ms warm-up + 25 ms of runs (Triton's default 25 + 100 ms
    is 0.13 s a config; EfficientNet-B0's layers autotune ~440 configs on a first training step).
    These kernels take 0.01-2 ms, so that is still tens to thousands of runs for the median."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


def autotune(configs, key, interp_config: triton.Config, prune=None):
    """``triton.autotune(configs, key)`` on a GPU (``prune``: its early_config_prune, called with
    (configs, named_args, **kwargs)), limited by :func:`config_limit`; a single fixed config under
    TRITON_INTERPRET."""
    def early_config_prune(configs, named_args, **kwargs):
        kept = prune(configs, named_args, **kwargs) if prune is not None else configs
        limit = config_limit()
        return kept[:limit] if limit else kept

    def decorate(fn):
        if INTERPRET:
            return _FixedConfig(fn, interp_config)
        by = {"early_config_prune": early_config_prune}
        return triton.autotune(configs=configs, key=key, prune_configs_by=by, do_bench=autotune_bench)(fn)
    return decorate


# ----------------------------------------------------------------------------------------------
# Activation / gate math (u: pre-activation in the accumulation dtype). Backward formulas match
# fastblocks/_act.py (ATen's backward kernels), boundary points included.
# ----------------------------------------------------------------------------------------------

@triton.jit
def _gelu_tanh_two_z(u):
    """2 z of gelu_tanh, z = sqrt(2 / pi) (u + 0.044715 u^3) (csrc/fb_common.h kGeluTanh*)."""
    return 1.5957691216057308 * (u + 0.044715 * u * u * u)


@triton.jit
def act_fwd(u, ACT: tl.constexpr):
    if ACT == "silu":
        out = u / (1.0 + tl.exp(-u))
    elif ACT == "relu":
        out = tl.where(u > 0.0, u, 0.0)
    elif ACT == "relu6":
        out = tl.minimum(tl.where(u > 0.0, u, 0.0), 6.0)
    elif ACT == "hardswish":
        out = u * tl.minimum(tl.maximum(u + 3.0, 0.0), 6.0) / 6.0
    elif ACT == "leaky_relu":
        # The literal takes u's dtype (0.01f / 0.01, as ATen); fastblocks._act.LEAKY_RELU_SLOPE.
        out = tl.where(u > 0.0, u, u * 0.01)
    elif ACT == "gelu":
        # ATen's / Inductor's erf form (the interpreter has erf, not erfc).
        out = 0.5 * u * (1.0 + tl.math.erf(u * 0.7071067811865476))
    elif ACT == "gelu_tanh":
        # u (1 + tanh z) / 2 == u * sigmoid(2 z): no cancellation for negative u.
        out = u / (1.0 + tl.exp(-_gelu_tanh_two_z(u)))
    else:
        out = u
    return out


@triton.jit
def act_bwd(u, g, ACT: tl.constexpr):
    """d act(u) / du * g."""
    if ACT == "silu":
        s = 1.0 / (1.0 + tl.exp(-u))
        out = g * s * (1.0 + u * (1.0 - s))
    elif ACT == "relu":
        out = tl.where(u > 0.0, g, 0.0)
    elif ACT == "relu6":
        out = tl.where((u > 0.0) & (u < 6.0), g, 0.0)
    elif ACT == "hardswish":
        out = tl.where(u < -3.0, 0.0, tl.where(u <= 3.0, g * (u / 3.0 + 0.5), g))
    elif ACT == "leaky_relu":
        out = tl.where(u > 0.0, g, g * 0.01)
    elif ACT == "gelu":
        cdf = 0.5 * (1.0 + tl.math.erf(u * 0.7071067811865476))
        out = g * (cdf + u * tl.exp(-0.5 * u * u) * 0.3989422804014327)
    elif ACT == "gelu_tanh":
        s = 1.0 / (1.0 + tl.exp(-_gelu_tanh_two_z(u)))
        out = g * (s + u * s * (1.0 - s) * (1.5957691216057308 * (1.0 + 0.134145 * u * u)))
    else:
        out = g
    return out


@triton.jit
def gate_fwd(u, GATE: tl.constexpr):
    if GATE == "sigmoid":
        out = 1.0 / (1.0 + tl.exp(-u))
    else:  # hard_sigmoid = relu6(u + 3) / 6
        out = tl.minimum(tl.maximum(u + 3.0, 0.0), 6.0) / 6.0
    return out


# ----------------------------------------------------------------------------------------------
# Deterministic reductions of per-program partial results (no atomics: a fixed loop order).
# ----------------------------------------------------------------------------------------------

@triton.jit
def _sum_rows_kernel(in_ptr, out_ptr, R, M, BR: tl.constexpr, BM: tl.constexpr, ACC: tl.constexpr):
    """out[m] = sum_r in[r, m] for a contiguous (R, M) buffer; one program per BM columns."""
    pid = tl.program_id(0)
    offs_m = pid * BM + tl.arange(0, BM)
    mask_m = offs_m < M
    acc = tl.zeros([BR, BM], dtype=ACC)
    for r0 in range(0, R, BR):
        offs_r = r0 + tl.arange(0, BR)
        mask = (offs_r < R)[:, None] & mask_m[None, :]
        ptrs = in_ptr + offs_r.to(tl.int64)[:, None] * M + offs_m[None, :]
        acc += tl.load(ptrs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + offs_m, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=mask_m)


def sum_rows(partial: torch.Tensor) -> torch.Tensor:
    """Sum a (R, ...) partial buffer over its first dimension, deterministically."""
    r = partial.shape[0]
    rest = partial.shape[1:]
    if r == 1:
        return partial[0]  # the buffer is the caller's own: a view, not a copy kernel
    flat = partial.reshape(r, -1)
    m = flat.shape[1]
    out = empty((m,), partial.dtype, partial.device)
    bm = 128 if INTERPRET else 256
    br = 8 if INTERPRET else 16
    with device_guard(partial):
        launcher(_sum_rows_kernel)[(triton.cdiv(m, bm),)](flat, out, r, m, BR=br, BM=bm,
                                                          ACC=acc_tl_dtype(partial.dtype))
    return out.reshape(rest)
