"""Eval path of a fused depthwise conv + BN + act (:class:`fastblocks.nn.DWConvBNAct`).

On CPU, float32 channels_last input runs ``fastblocks_kernels.dw_eval`` on the folded weights
(bias + act in the same pass, and optionally the per-channel means a squeeze-and-excitation pool
needs); NCHW input runs the compiled ``dwconv_bn_act_forward`` kernel (BN folded per call, one
pass over x), called directly, skipping the op layer's checks (the kernel checks shapes itself);
elsewhere (CUDA, other channels_last dtypes, no compiled kernels, a kernel size they lack) the
conv runs on folded weights (:class:`~fastblocks.inference.fold.FoldedConvBN`: cuDNN / oneDNN +
fused act). The choice per layout was measured (``python -m benchmarks.inference_layers``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..backends import native
from .conv_fusion import eval_kernels_available
from .fold import FoldedConvBN, fold_active

# CPU layout -> "kernel" (the training kernel, BN folded per call) or "folded" (oneDNN, prepacked
# folded weights) where the eval kernel does not serve (benchmarks/results/inference-layers-*.md:
# the kernel won the NCHW rows, prepacked oneDNN most channels_last rows).
CPU_CHOICE = {"channels_last": "folded", "nchw": "kernel"}
_KERNEL_SIZES = (3, 5, 7)
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class DepthwiseEval:
    """How one DWConvBNAct runs at eval: ``fold`` (None when its padding has no symmetric form,
    TensorFlow SAME) and whether the CPU kernel can run it."""

    __slots__ = ("module", "fold", "kernel_ok", "padding_mode", "padding", "eval_kernel_ok")

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        k = module.weight.shape[-1]
        if module.padding == "tf_same":
            self.padding_mode, self.padding, sym = "tf_same", 0, None
        elif module.padding == "same":
            self.padding_mode, self.padding, sym = "same", 0, k // 2
        else:
            self.padding_mode, self.padding, sym = "explicit", int(module.padding), int(module.padding)
        c = module.weight.shape[0]
        self.fold = None if sym is None else FoldedConvBN(
            module, module.batchnorm, module.act, (module.stride,) * 2, (sym, sym), (1, 1), c)
        self.kernel_ok = k in _KERNEL_SIZES and native.unavailable_reason("cpu") is None
        self.eval_kernel_ok = self.fold is not None and k <= 7 and eval_kernels_available()

    def active(self) -> bool:
        """Whether the eval path runs now (:func:`~fastblocks.inference.fold.fold_active`)."""
        return fold_active(self.module, self.module.batchnorm)

    def _eval_kernel(self, x: torch.Tensor, pool: bool) -> Optional[tuple]:
        """``dw_eval`` on x (output, per-channel means or an empty tensor), or None where it does not
        serve x (it has no autograd: an x that needs a gradient goes elsewhere)."""
        if not (self.eval_kernel_ok and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last)
                and not (x.requires_grad and torch.is_grad_enabled())):
            return None
        m, runner = self.module, self.fold.runner()
        k = m.weight.shape[-1]
        p = k // 2 if self.padding_mode == "same" else self.padding
        return torch.ops.fastblocks_kernels.dw_eval(x, runner.depthwise_taps(), runner.bias, k, m.stride,
                                                    [p, p, p, p], m.act, pool)

    def with_pool(self, x: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(output, its per-channel means (N, C) or None): the means come from the same pass where
        the eval kernel serves x, else they are left to the caller."""
        out = self._eval_kernel(x, True)
        return (self(x), None) if out is None else out

    def __call__(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The module's eval output, or None when no path serves x (the op then runs)."""
        out = self._eval_kernel(x, False)
        if out is not None:
            return out[0]
        if x.device.type == "cpu" and self.kernel_ok and x.dtype in _KERNEL_DTYPES and not (
                x.requires_grad and torch.is_grad_enabled()) and (
                self.fold is None or CPU_CHOICE["channels_last" if _channels_last(x) else "nchw"] == "kernel"):
            m, bn = self.module, self.module.batchnorm
            return torch.ops.fastblocks_kernels.dwconv_bn_act_forward(
                x, m.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, m.bias, m.stride,
                self.padding_mode, self.padding, False, bn.eps, m.act)[0]
        if self.fold is not None:
            return self.fold(x)
        return None


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
