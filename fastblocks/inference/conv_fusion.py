"""Eval-mode conv + activation (+ residual add) on folded weights, by the fastest op at hand.

CPU float32 1x1 convs (stride 1, no padding, one group) are a matrix product. In channels_last,
fastblocks' register-tiled kernel (``fastblocks_kernels::pointwise_eval``) adds the bias, the
residual and the activation before its only store (1.0-1.6x ``torch.mm`` plus a separate epilogue
pass on efficientnet / mobilenet layer shapes, 2 threads); in NCHW, ``torch.mm`` on (channels,
pixels) per image, then fastblocks' one-pass epilogue kernel (in place:
``fastblocks_kernels::eval_epilogue_``). oneDNN's fused convolution costs 30-60 us per call on the
host at batch 1, a GEMM call 3-5 us, and oneDNN's swish post-op runs slower than the conv itself.
Dense convs over at most 4 input channels (a network's stem) on float32 input run
``fastblocks_kernels::direct_conv_eval`` (direct loops, bias and activation fused): there is no
1x1 GEMM to use, and oneDNN's kernel for 3 input channels plus its swish post-op took 1.4x as long.
A squeeze-and-excitation gate can be applied to such a conv's input channels through its weights
instead of the activation (:meth:`ConvRunner.__call__`'s ``in_scale``): the channels_last kernel
scales each tile's weight vectors as it loads them (12-16% over the plain kernel on mobilenetv3
shapes, where a pass over the activation or a scaled weight copy cost up to 2.2x).

Other CPU float32 / bfloat16 dense, pointwise and depthwise convs run oneDNN's fused convolution
(``torch.ops.mkldnn._convolution_pointwise``, the op Inductor's freezing pass emits) on weights
prepacked for the input shape (``torch.ops.mkldnn._reorder_convolution_weight``), the activation as
a unary post-op and a residual as the binary "add" post-op. Everything else (CUDA, float64, an
activation oneDNN has no post-op for) runs ATen ``F.conv2d`` on the folded weights and the
activation in place. The choice per layer class was measured on efficientnet_b0 / mobilenetv2_100
layer shapes (``python -m benchmarks.inference_layers``; results under benchmarks/results/).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .._act import LEAKY_RELU_SLOPE
from ..backends import native

Tensor = torch.Tensor

# canonical act -> oneDNN unary post-op (attr, scalars, algorithm)
_MKLDNN_UNARY = {
    "identity": ("none", [], ""),
    "relu": ("relu", [], ""),
    "silu": ("swish", [], ""),
    "hardswish": ("hardswish", [], ""),
    "relu6": ("hardtanh", [0.0, 6.0], ""),
    "leaky_relu": ("leaky_relu", [LEAKY_RELU_SLOPE], ""),
    "gelu": ("gelu", [], "none"),
    "gelu_tanh": ("gelu", [], "tanh"),
}

# canonical act -> in-place ATen activation (the conv output is a fresh tensor)
_INPLACE_ACT: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda u: u,
    "relu": torch.relu_,
    "silu": lambda u: F.silu(u, inplace=True),
    "hardswish": lambda u: F.hardswish(u, inplace=True),
    "relu6": lambda u: u.clamp_(0.0, 6.0),
    "leaky_relu": lambda u: F.leaky_relu(u, LEAKY_RELU_SLOPE, inplace=True),
    "gelu": lambda u: F.gelu(u),
    "gelu_tanh": lambda u: F.gelu(u, approximate="tanh"),
}

_MKLDNN_DTYPES = (torch.float32, torch.bfloat16)


PANEL = 64  # output channels per weight panel of fastblocks_kernels::pointwise_eval


def weight_panels(matrix: Tensor) -> Tensor:
    """1x1 conv weights (C_out, C_in) as the panels ``pointwise_eval`` reads fastest:
    (ceil(C_out / 64), C_in, 64), each panel the weights of 64 output channels input channel by
    input channel, the last one zero-padded. One tile of the kernel then streams one contiguous
    panel (row-major (C_in, C_out) weights put C_out floats between a tile's consecutive loads)."""
    c_out, c_in = matrix.shape
    chunks = -(-c_out // PANEL)
    padded = matrix.new_zeros(chunks * PANEL, c_in)
    padded[:c_out] = matrix
    return padded.view(chunks, PANEL, c_in).transpose(1, 2).contiguous()


@functools.lru_cache(maxsize=None)
def eval_kernels_available() -> bool:
    """Whether fastblocks' compiled eval kernels (``eval_epilogue_``, ``pointwise_eval``,
    ``dw_eval``, ``direct_conv_eval``) and the channel pool the eval pools call (``channel_pool``)
    can run here."""
    if native.unavailable_reason("cpu") is not None:
        return False
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"fastblocks_kernels::{name}", "CPU")
               for name in ("eval_epilogue_", "pointwise_eval", "dw_eval", "direct_conv_eval", "channel_pool"))


def mkldnn_unary(act: str) -> tuple:
    """(attr, scalars, algorithm) of oneDNN's unary post-op for the canonical ``act``."""
    try:
        return _MKLDNN_UNARY[act]
    except KeyError:
        raise ValueError(f"act {act!r} has no oneDNN post-op; known: {sorted(_MKLDNN_UNARY)}") from None


def inplace_act(act: str) -> Callable[[Tensor], Tensor]:
    """The ATen activation applied in place to a conv's fresh output."""
    try:
        return _INPLACE_ACT[act]
    except KeyError:
        raise ValueError(f"act {act!r} unknown; known: {sorted(_INPLACE_ACT)}") from None


def mkldnn_usable(weight: Tensor) -> bool:
    """Whether oneDNN's fused conv can run a conv with this (folded) weight in this process."""
    return (weight.device.type == "cpu" and weight.dtype in _MKLDNN_DTYPES and weight.dim() == 4
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


class ConvRunner:
    """Runs one conv with folded ``weight`` / ``bias`` and a fused ``act`` (optionally adding a
    residual), by oneDNN on CPU (weights prepacked per input shape, kept until :meth:`reset`) or by
    ATen elsewhere. Build one per folded conv; :meth:`reset` when the folded weights change."""

    __slots__ = ("stride", "padding", "dilation", "groups", "act", "attr", "use_mkldnn", "weight", "bias",
                 "_packed", "_act_fn", "gemm", "matrix", "panels", "_taps", "direct", "_direct_taps")

    def __init__(self, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups: int,
                 act: str) -> None:
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = groups
        self.act = act
        self._act_fn = inplace_act(act)
        self.attr = _MKLDNN_UNARY.get(act)
        self.use_mkldnn = self.attr is not None and mkldnn_usable(weight)
        self.weight, self.bias = weight, bias
        self._packed: dict = {}
        # a float32 CPU conv of one group that fastblocks' eval kernels can finish (bias + act)
        ours = (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 4
                and groups == 1 and act in _INPLACE_ACT and eval_kernels_available())
        # 1x1, stride 1, no padding: a matrix product + our epilogue
        self.gemm = (ours and tuple(weight.shape[2:]) == (1, 1) and self.stride == [1, 1]
                     and self.padding == [0, 0])
        # few input channels, square k <= 7, no dilation, padding below k: the direct kernel
        k = weight.shape[-1] if ours else 0
        self.direct = (ours and weight.shape[1] <= 4 and 1 <= k <= 7 and weight.shape[2] == k
                       and self.dilation == [1, 1] and self.stride[0] == self.stride[1]
                       and len(self.padding) == 2 and all(isinstance(p, int) and 0 <= p < k for p in self.padding))
        self.matrix = self.panels = self._taps = self._direct_taps = None
        if (self.gemm or self.direct) and self.bias is None:
            self.bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
        if self.direct:  # (kh, kw, c_in) x c_out, what direct_conv_eval reads
            self._direct_taps = weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()
        if self.gemm:
            self.matrix = weight.reshape(weight.shape[0], -1).contiguous()  # (C_out, C_in): NCHW images
            self.panels = weight_panels(self.matrix)  # channels_last pixels

    def depthwise_taps(self) -> Tensor:
        """The (depthwise) weight tap-major, (k * k, C) float32: what ``dw_eval`` reads."""
        if self._taps is None:
            c = self.weight.shape[0]
            self._taps = self.weight.reshape(c, -1).t().contiguous()
        return self._taps

    @staticmethod
    def _kernel_input(x: Tensor, *others: Optional[Tensor]) -> bool:
        """x is a 4-D float32 CPU tensor and no gradient is needed for it or ``others``: what
        fastblocks' eval kernels (no autograd) take."""
        if not (x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4):
            return False
        return not (torch.is_grad_enabled()
                    and (x.requires_grad or any(o is not None and o.requires_grad for o in others)))

    def gemm_ready(self, x: Tensor, *others: Optional[Tensor]) -> bool:
        """Whether x (and ``others``: residual, scale) can take the matrix-product path now."""
        if not (self.gemm and self._kernel_input(x, *others)):
            return False
        return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)

    def _direct_ready(self, x: Tensor) -> bool:
        """Whether x can take the direct kernel now (any layout: its output is channels_last, as
        oneDNN's convolution returns for NCHW input too)."""
        return self.direct and self._kernel_input(x)

    def _gemm(self, x: Tensor, residual: Optional[Tensor], in_scale: Optional[Tensor]) -> Tensor:
        n, c, h, w = x.shape
        c_out = self.matrix.shape[0]
        # (a 1x1 map is both layouts: its images are the rows of one product, the weights read once)
        if h * w == 1 or (x.is_contiguous(memory_format=torch.channels_last) and not (x.is_contiguous() and n * h * w > 1)):
            if residual is not None:
                residual = residual.contiguous(memory_format=torch.channels_last)
            # register-tiled product with the epilogue fused: one write of the output
            return torch.ops.fastblocks_kernels.pointwise_eval(x, self.panels, self.bias, residual, self.act, in_scale)
        y = torch.empty((n, c_out, h * w), dtype=x.dtype)
        planes = x.view(n, c, h * w)
        for i in range(n):
            weight = self.matrix if in_scale is None else self.matrix * in_scale[i].reshape(1, c)
            torch.mm(weight, planes[i], out=y[i])
        y = y.view(n, c_out, h, w)
        if residual is not None:
            residual = residual.contiguous()
        return torch.ops.fastblocks_kernels.eval_epilogue_(y, self.bias, residual, self.act)

    def _packed_weight(self, x: Tensor) -> Tensor:
        key = (x.shape, x.dtype)
        packed = self._packed.get(key)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(x.shape))
            self._packed[key] = packed
        return packed

    def __call__(self, x: Tensor, residual: Optional[Tensor] = None, in_scale: Optional[Tensor] = None) -> Tensor:
        """act(conv(x)) or, with ``residual``, act(conv(x) + residual). ``in_scale`` (N, C_in):
        the conv of x scaled per image and input channel (a squeeze-and-excitation gate), applied
        to the weights on the matrix-product path and to x elsewhere. Differentiable in x,
        ``residual`` and ``in_scale`` (the oneDNN and fastblocks kernels are not: inputs that need
        a gradient take ATen)."""
        if self.gemm and self.gemm_ready(x, residual, in_scale):
            return self._gemm(x, residual, in_scale)
        if residual is None and in_scale is None and self._direct_ready(x):
            p0, p1 = self.padding
            return torch.ops.fastblocks_kernels.direct_conv_eval(x, self._direct_taps, self.bias, self.weight.shape[-1],
                                                                 self.stride[0], [p0, p0, p1, p1], self.act)
        if in_scale is not None:
            x = x * in_scale.reshape(in_scale.shape[0], in_scale.shape[1], 1, 1)
        if self.use_mkldnn and x.dtype == self.weight.dtype and x.device.type == "cpu" and not (
                torch.is_grad_enabled() and (x.requires_grad or (residual is not None and residual.requires_grad))):
            w = self._packed_weight(x)
            attr, scalars, algo = self.attr
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(x, w, self.bias, self.padding, self.stride,
                                                               self.dilation, self.groups, attr, scalars, algo)
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, w, self.bias, self.padding, self.stride, self.dilation, self.groups, "add", None,
                None if attr == "none" else attr, scalars, algo or None)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y = y.add_(residual)
        return self._act_fn(y)
