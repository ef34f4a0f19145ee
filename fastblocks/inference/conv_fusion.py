"""Eval-mode conv + activation (+ residual add) on folded weights, by the fastest op PyTorch ships.

CPU float32 / bfloat16 dense, pointwise and depthwise convs run oneDNN's fused convolution
(``torch.ops.mkldnn._convolution_pointwise``, the op Inductor's freezing pass emits) on weights
prepacked for the input shape (``torch.ops.mkldnn._reorder_convolution_weight``), the activation as
a unary post-op and a residual as the binary "add" post-op. Everything else (CUDA, float64, an
activation oneDNN has no post-op for) runs ATen ``F.conv2d`` on the folded weights and the
activation in place. The choice per layer class was measured on efficientnet_b0 / mobilenetv2_100
layer shapes (``python -m benchmarks.inference_layers``; results under benchmarks/results/).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .._act import LEAKY_RELU_SLOPE

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
                 "_packed", "_act_fn")

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

    def _packed_weight(self, x: Tensor) -> Tensor:
        key = (x.shape, x.dtype)
        packed = self._packed.get(key)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(x.shape))
            self._packed[key] = packed
        return packed

    def __call__(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """act(conv(x)) or, with ``residual``, conv(x) + residual (then ``act``). Differentiable
        in x and ``residual`` (the oneDNN ops are not: inputs that need a gradient take ATen)."""
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
