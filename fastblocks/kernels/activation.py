"""Triton element-wise activations (silu, hardswish, relu, relu6, identity): forward y = act(x),
memory-efficient backward dx = act'(x) * dy recomputed from x (nothing else is saved).

Grid: cdiv(numel, BLOCK) programs over the tensor's storage walked flat (dense tensors of any
memory format keep their strides: y, dy and dx share x's layout). Math in float32 (float64 for
float64 inputs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_tl_dtype, act_bwd, act_fwd, autotune, device_guard, empty_like, launcher

_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=8),
    triton.Config({"BLOCK": 4096}, num_warps=8),
]
_INTERP_CONFIG = triton.Config({"BLOCK": 256})


@triton.jit
def _act_fwd_kernel(x_ptr, y_ptr, numel, ACT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(y_ptr + offs, act_fwd(x, ACT).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _act_bwd_kernel(dy_ptr, x_ptr, dx_ptr, numel, ACT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(dx_ptr + offs, act_bwd(x, dy, ACT).to(dx_ptr.dtype.element_ty), mask=mask)


_fwd = autotune(_CONFIGS, ["numel"], _INTERP_CONFIG)(_act_fwd_kernel)
_bwd = autotune(_CONFIGS, ["numel", "ACT"], _INTERP_CONFIG)(_act_bwd_kernel)


def _dense(x: torch.Tensor) -> bool:
    """Elements occupy exactly numel contiguous storage slots in some dimension order."""
    if x.is_contiguous():
        return True
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return True
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return True
    return False


def _grid(numel):
    return lambda meta: (triton.cdiv(numel, meta["BLOCK"]),)


def forward(x: torch.Tensor, act: str) -> torch.Tensor:
    """y = act(x), like x (dtype, shape, memory format)."""
    if not _dense(x):
        x = x.contiguous()
    y = empty_like(x)
    if x.numel():
        with device_guard(x):
            launcher(_fwd)[_grid(x.numel())](x, y, x.numel(), ACT=act, ACC=acc_tl_dtype(x.dtype))
    return y


def backward(dy: torch.Tensor, x: torch.Tensor, act: str) -> torch.Tensor:
    """dx = act'(x) * dy, like x."""
    if not _dense(x):
        x = x.contiguous()
    if dy.stride() != x.stride() or dy.dtype != x.dtype:
        dy = empty_like(x).copy_(dy)
    dx = empty_like(x)
    if x.numel():
        with device_guard(x):
            launcher(_bwd)[_grid(x.numel())](dy, x, dx, x.numel(), ACT=act, ACC=acc_tl_dtype(x.dtype))
    return dx
