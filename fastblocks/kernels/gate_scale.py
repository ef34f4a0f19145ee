"""Triton kernels for the full-size passes of squeeze-excite / ECA / gate_scale.

* ``_pool_kernel``: per-(n, c) mean over H*W. Grid (N * S, C blocks): each program sums a
  contiguous chunk of the spatial positions of one sample and a block of channels and writes one
  partial row; the S partial rows are summed in a fixed order (:func:`sum_rows`). No atomics.
* ``_scale_fwd_kernel``: y = x * gate(logits[n, c]); the gate is computed in-kernel from the
  (N, C) logits. One read of x, one write of y.
* ``_scale_bwd_kernel``: one pass over dy (and x): dx = dy * gate + add[n, c] (``add`` carries the
  pooling gradient dpooled / HW for SE / ECA) and / or the partial sums of dy * x per (n, c) over
  the program's chunk, reduced like the pool.

Tensors are walked as (N, C, P = H*W) with a flat spatial index; channels_last vectorises over C,
NCHW along P.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (acc_tl_dtype, acc_torch_dtype, autotune, device_guard, empty, gate_fwd, launcher, memory_format,
                      spatially_flat, sum_rows, target_programs)


def _configs_channels_last():
    c = triton.Config
    return [
        c({"BP": 32, "BC": 64}, num_warps=4),
        c({"BP": 64, "BC": 64}, num_warps=4),
        c({"BP": 16, "BC": 128}, num_warps=4),
        c({"BP": 128, "BC": 32}, num_warps=4),
        c({"BP": 64, "BC": 128}, num_warps=8),
    ]


def _configs_nchw():
    c = triton.Config
    return [
        c({"BP": 256, "BC": 1}, num_warps=4),
        c({"BP": 1024, "BC": 1}, num_warps=8),
        c({"BP": 128, "BC": 4}, num_warps=4),
        c({"BP": 64, "BC": 8}, num_warps=4),
        c({"BP": 32, "BC": 16}, num_warps=4),
    ]


_INTERP_CONFIG = triton.Config({"BP": 16, "BC": 8})
_KEY = ["C", "HW"]


@triton.jit
def _pool_kernel(x_ptr, part_ptr, N, C, HW, S, sxn, sxc, sxp,
                 ACC: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    pid0 = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = pid0 // S
    s = pid0 - n * S
    chunk = tl.cdiv(tl.cdiv(HW, S), BP) * BP
    p_begin = s * chunk
    p_end = tl.minimum(p_begin + chunk, HW)
    offs_c = pid_c * BC + tl.arange(0, BC)
    mask_c = offs_c < C
    base = x_ptr + n.to(tl.int64) * sxn + (offs_c * sxc)[None, :]
    acc = tl.zeros([BP, BC], ACC)
    for p0 in range(p_begin, p_end, BP):
        offs_p = p0 + tl.arange(0, BP)
        mask = (offs_p < p_end)[:, None] & mask_c[None, :]
        acc += tl.load(base + (offs_p * sxp)[:, None], mask=mask, other=0.0).to(ACC)
    tl.store(part_ptr + (s * N + n) * C + offs_c, tl.sum(acc, axis=0) / HW, mask=mask_c)


@triton.jit
def _scale_fwd_kernel(x_ptr, lg_ptr, y_ptr, N, C, HW, sxn, sxc, sxp, syn, syc, syp,
                      GATE: tl.constexpr, ACC: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    pid0 = tl.program_id(0)
    pid_c = tl.program_id(1)
    p_blocks = tl.cdiv(HW, BP)
    n = pid0 // p_blocks
    pb = pid0 - n * p_blocks
    offs_p = pb * BP + tl.arange(0, BP)
    offs_c = pid_c * BC + tl.arange(0, BC)
    mask_c = offs_c < C
    mask = (offs_p < HW)[:, None] & mask_c[None, :]
    g = gate_fwd(tl.load(lg_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(ACC), GATE)
    n64 = n.to(tl.int64)
    xv = tl.load(x_ptr + n64 * sxn + (offs_p * sxp)[:, None] + (offs_c * sxc)[None, :], mask=mask, other=0.0)
    y = xv.to(ACC) * g[None, :]
    tl.store(y_ptr + n64 * syn + (offs_p * syp)[:, None] + (offs_c * syc)[None, :],
             y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale_bwd_kernel(dy_ptr, x_ptr, lg_ptr, add_ptr, dx_ptr, part_ptr, N, C, HW, S,
                      sdn, sdc, sdp, sxn, sxc, sxp, son, soc, sop,
                      GATE: tl.constexpr, WRITE_DX: tl.constexpr, REDUCE: tl.constexpr,
                      HAS_ADD: tl.constexpr, ACC: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    pid0 = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = pid0 // S
    s = pid0 - n * S
    chunk = tl.cdiv(tl.cdiv(HW, S), BP) * BP
    p_begin = s * chunk
    p_end = tl.minimum(p_begin + chunk, HW)
    offs_c = pid_c * BC + tl.arange(0, BC)
    mask_c = offs_c < C
    n64 = n.to(tl.int64)
    if WRITE_DX:
        g = gate_fwd(tl.load(lg_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(ACC), GATE)
        if HAS_ADD:
            add = tl.load(add_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(ACC)
        else:
            add = tl.zeros([BC], ACC)
    acc = tl.zeros([BP, BC], ACC)
    for p0 in range(p_begin, p_end, BP):
        offs_p = p0 + tl.arange(0, BP)
        mask = (offs_p < p_end)[:, None] & mask_c[None, :]
        dy = tl.load(dy_ptr + n64 * sdn + (offs_p * sdp)[:, None] + (offs_c * sdc)[None, :],
                     mask=mask, other=0.0).to(ACC)
        if WRITE_DX:
            dx = dy * g[None, :] + add[None, :]
            tl.store(dx_ptr + n64 * son + (offs_p * sop)[:, None] + (offs_c * soc)[None, :],
                     dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if REDUCE:
            xv = tl.load(x_ptr + n64 * sxn + (offs_p * sxp)[:, None] + (offs_c * sxc)[None, :],
                         mask=mask, other=0.0)
            acc += dy * xv.to(ACC)
    if REDUCE:
        tl.store(part_ptr + (s * N + n) * C + offs_c, tl.sum(acc, axis=0), mask=mask_c)


_pool_cl = autotune(_configs_channels_last(), _KEY, _INTERP_CONFIG)(_pool_kernel)
_pool_nchw = autotune(_configs_nchw(), _KEY, _INTERP_CONFIG)(_pool_kernel)
_fwd_cl = autotune(_configs_channels_last(), _KEY, _INTERP_CONFIG)(_scale_fwd_kernel)
_fwd_nchw = autotune(_configs_nchw(), _KEY, _INTERP_CONFIG)(_scale_fwd_kernel)
_bwd_cl = autotune(_configs_channels_last(), _KEY + ["WRITE_DX", "REDUCE"], _INTERP_CONFIG)(_scale_bwd_kernel)
_bwd_nchw = autotune(_configs_nchw(), _KEY + ["WRITE_DX", "REDUCE"], _INTERP_CONFIG)(_scale_bwd_kernel)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _flat(t: torch.Tensor, fmt=None) -> torch.Tensor:
    """t with (H, W) walkable as one index (a copy only for exotic strides)."""
    if fmt is not None:
        return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)
    return t if spatially_flat(t) else t.contiguous(memory_format=memory_format(t))


def _strides(t: torch.Tensor):
    """(n, c, p) strides of a spatially flat 4-D tensor."""
    sp = t.stride(3) if t.shape[3] > 1 else t.stride(2)
    return t.stride(0), t.stride(1), sp


def _channel_fast(x: torch.Tensor) -> bool:
    return x.stride(1) == 1 and x.shape[1] > 1


def _splits(x: torch.Tensor) -> int:
    """Spatial chunks per (n, channel block) in the reduction passes (fixed, config independent)."""
    n, c, h, w = x.shape
    c_blocks = triton.cdiv(c, 64) if _channel_fast(x) else c
    s = triton.cdiv(target_programs(x.device), n * c_blocks)
    return max(1, min(s, triton.cdiv(h * w, 1024)))


def pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pool (N, C, H, W) -> (N, C) in float32 (float64 for float64 x)."""
    x = _flat(x)
    n, c, h, w = x.shape
    s = _splits(x)
    acc = acc_torch_dtype(x.dtype)
    part = empty((s, n, c), acc, x.device)
    kernel = _pool_cl if _channel_fast(x) else _pool_nchw

    def grid(meta):
        return (n * s, triton.cdiv(c, meta["BC"]))

    with device_guard(x):
        launcher(kernel)[grid](x, part, n, c, h * w, s, *_strides(x), ACC=acc_tl_dtype(x.dtype))
    return sum_rows(part)


def scale_forward(x: torch.Tensor, logits: torch.Tensor, gate: str) -> torch.Tensor:
    """y = x * gate(logits)[:, :, None, None], y like x (dtype, memory format)."""
    x = _flat(x)
    n, c, h, w = x.shape
    logits = logits.reshape(n, c).contiguous()
    y = empty(x.shape, x.dtype, x.device, memory_format(x))
    kernel = _fwd_cl if _channel_fast(x) else _fwd_nchw

    def grid(meta):
        return (n * triton.cdiv(h * w, meta["BP"]), triton.cdiv(c, meta["BC"]))

    with device_guard(x):
        launcher(kernel)[grid](x, logits, y, n, c, h * w, *_strides(x), *_strides(y), GATE=gate,
                     ACC=acc_tl_dtype(x.dtype))
    return y


def scale_backward(dy: torch.Tensor, x: torch.Tensor, logits: torch.Tensor, gate: str, need_dx: bool,
                   need_dgate: bool, add: Optional[torch.Tensor] = None):
    """One pass over dy (and x): (dx = dy * gate(logits) + add or None, sum_hw(dy * x) (N, C) or None).

    ``add`` (N, C) is broadcast over H, W (the pooling gradient of SE / ECA). Sums in float32
    (float64 for float64 x).
    """
    x = _flat(x)
    fmt = memory_format(x)
    dy = dy if spatially_flat(dy) else _flat(dy, fmt)
    n, c, h, w = x.shape
    logits = logits.reshape(n, c).contiguous()
    acc = acc_torch_dtype(x.dtype)
    s = _splits(x)
    dx = empty(x.shape, x.dtype, x.device, fmt) if need_dx else None
    part = empty((s, n, c), acc, x.device) if need_dgate else None
    if add is not None:
        add = add.reshape(n, c).to(acc).contiguous()
    kernel = _bwd_cl if _channel_fast(x) else _bwd_nchw

    def grid(meta):
        return (n * s, triton.cdiv(c, meta["BC"]))

    dx_t = dx if dx is not None else x
    with device_guard(x):
        launcher(kernel)[grid](dy, x, logits, add if add is not None else logits, dx_t,
                     part if part is not None else logits, n, c, h * w, s,
                     *_strides(dy), *_strides(x), *_strides(dx_t),
                     GATE=gate, WRITE_DX=need_dx, REDUCE=need_dgate, HAS_ADD=add is not None,
                     ACC=acc_tl_dtype(x.dtype))
    return dx, (sum_rows(part) if need_dgate else None)
