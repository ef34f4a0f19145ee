"""Eval path of a fused depthwise conv + BN + act (:class:`fastblocks.nn.DWConvBNAct`).

On CPU the compiled ``fastblocks_kernels.dwconv_bn_act_forward`` kernel (BN folded per call, one
pass over x) is called directly, skipping the op layer's checks (the kernel checks shapes itself);
elsewhere (CUDA, no compiled kernels, a kernel size it lacks) the conv runs on folded weights
(:class:`~fastblocks.inference.fold.FoldedConvBN`: cuDNN / oneDNN + fused act). Which of the two
serves CPU per layout was measured (``python -m benchmarks.inference_layers``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..backends import native
from .fold import FoldedConvBN, fold_active

# CPU layout -> "kernel" (fastblocks' one-pass kernel) or "folded" (oneDNN, prepacked folded weights):
# benchmarks/results/inference-layers-intel-r-xeon-r-processor-2026-12-06.md, depthwise rows: the
# kernel won all 4 NCHW rows (1.1-2.4x), prepacked oneDNN 3 of 4 channels_last rows (oneDNN unpacked
# the 4th). Inside a patched model depthwise inputs are channels_last (oneDNN convs return it).
CPU_CHOICE = {"channels_last": "folded", "nchw": "kernel"}
_KERNEL_SIZES = (3, 5, 7)
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class DepthwiseEval:
    """How one DWConvBNAct runs at eval: ``fold`` (None when its padding has no symmetric form,
    TensorFlow SAME) and whether the CPU kernel can run it."""

    __slots__ = ("module", "fold", "kernel_ok", "padding_mode", "padding")

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

    def active(self) -> bool:
        """Whether the eval path runs now (:func:`~fastblocks.inference.fold.fold_active`)."""
        return fold_active(self.module, self.module.batchnorm)

    def __call__(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The module's eval output, or None when neither path serves x (the op then runs). The
        kernel has no autograd: an x that needs a gradient takes the folded ATen conv."""
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
