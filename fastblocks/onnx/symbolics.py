"""TorchScript-exporter symbolics: each fused op as the standard ONNX nodes its unpatched module exports.

``torch.onnx.export(..., dynamo=False)`` traces the model with ``torch.jit.trace``, which records
the ``fastblocks::`` custom ops; these functions (registered with
``torch.onnx.register_custom_op_symbolic``) turn each into Conv / BatchNormalization / activation /
GlobalAveragePool / Mul nodes. The exporter then folds an eval BatchNormalization into the Conv
before it, as it does for an unpatched conv + BN. Activations reuse the exporter's own symbolics
for the ATen op, chosen by opset, so they match what the unpatched model exports.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.onnx import symbolic_helper as helper
from torch.onnx import symbolic_opset9 as opset9
from torch.onnx import symbolic_opset11 as opset11
from torch.onnx import symbolic_opset14 as opset14
from torch.onnx import symbolic_opset20 as opset20

from .._act import LEAKY_RELU_SLOPE
from .._validate import conv_pads
from .forms import require_eval

# The lowest opset these symbolics emit valid nodes for (Clip with min / max inputs).
MIN_OPSET = 11


def _gelu(approximate: str) -> Callable:
    return lambda g, x: (opset20.gelu if g.opset >= 20 else opset9.gelu)(g, x, approximate)


_ACTS: dict[str, Callable] = {
    "silu": opset9.silu,
    "relu": opset9.relu,
    "relu6": opset11.relu6,
    "hardswish": lambda g, x: (opset14.hardswish if g.opset >= 14 else opset9.hardswish)(g, x),
    "leaky_relu": lambda g, x: opset9.leaky_relu(g, x, LEAKY_RELU_SLOPE, False),
    "gelu": _gelu("none"),
    "gelu_tanh": _gelu("tanh"),
    "identity": lambda g, x: x,
}

_GATES: dict[str, Callable] = {
    "sigmoid": opset9.sigmoid,
    "hard_sigmoid": opset9.hardsigmoid,
}


def _const(value, desc: str):
    return helper._parse_arg(value, desc)


def _optional(value):
    return None if helper._is_none(value) else value


def _static_sizes(value, name: str, op: str) -> list:
    """All sizes of a parameter (weights are static)."""
    sizes = helper._get_tensor_sizes(value)
    if sizes is None or any(s is None for s in sizes):
        raise ValueError(f"fastblocks::{op}: ONNX export needs the static shape of {name}, got {sizes}")
    return sizes


def _batch_norm(g, z, bn_weight, bn_bias, running_mean, running_var, eps: float, op: str):
    """BatchNormalization with running statistics; absent affine params become ones / zeros."""
    scale, bias = _optional(bn_weight), _optional(bn_bias)
    if scale is None or bias is None:
        channels = _static_sizes(running_mean, "running_mean", op)[0]
        scale = g.op("Constant", value_t=torch.ones(channels)) if scale is None else scale
        bias = g.op("Constant", value_t=torch.zeros(channels)) if bias is None else bias
    return g.op("BatchNormalization", z, scale, bias, running_mean, running_var, epsilon_f=eps)


def _conv_padding(x, mode: str, pad: int, k: int, stride: int, dilation: int) -> dict:
    """Conv padding attributes: explicit pads where x's H, W are known, else (tf_same only)
    auto_pad SAME_UPPER, which is TensorFlow's SAME (the extra pixel at the end)."""
    sizes = helper._get_tensor_sizes(x) or [None] * 4
    h, w = sizes[2:] if len(sizes) == 4 else (None, None)
    if mode == "tf_same" and (h is None or w is None):
        return {"auto_pad_s": "SAME_UPPER"}
    top, bottom, left, right = conv_pads(mode, pad, k, stride, dilation, h, w)
    return {"pads_i": [top, left, bottom, right]}


def dwconv_bn_act(g, x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias, stride,
                  padding_mode, padding, dilation, training, eps, act, backend):
    """Conv (group = C; tf_same padding as asymmetric pads) -> BatchNormalization -> act."""
    require_eval("dwconv_bn_act", _const(training, "b"))
    stride, dilation = _const(stride, "i"), _const(dilation, "i")
    c, _, k, _ = _static_sizes(weight, "weight", "dwconv_bn_act")
    inputs = [x, weight] + ([] if _optional(conv_bias) is None else [conv_bias])
    z = g.op("Conv", *inputs, group_i=c, kernel_shape_i=[k, k], strides_i=[stride, stride],
             dilations_i=[dilation, dilation],
             **_conv_padding(x, _const(padding_mode, "s"), _const(padding, "i"), k, stride, dilation))
    u = _batch_norm(g, z, bn_weight, bn_bias, running_mean, running_var, _const(eps, "f"), "dwconv_bn_act")
    return _ACTS[_const(act, "s")](g, u), running_mean, running_var


def bn_act(g, x, bn_weight, bn_bias, running_mean, running_var, training, eps, act, backend):
    """BatchNormalization -> act."""
    require_eval("bn_act", _const(training, "b"))
    u = _batch_norm(g, x, bn_weight, bn_bias, running_mean, running_var, _const(eps, "f"), "bn_act")
    return _ACTS[_const(act, "s")](g, u), running_mean, running_var


def _conv1x1(g, x, weight, bias, op: str):
    """1x1 Conv; a 2-D (out, in) weight gets its 1x1 kernel dims."""
    if len(_static_sizes(weight, "the SE weights", op)) == 2:
        weight = opset9.unsqueeze(g, opset9.unsqueeze(g, weight, 2), 3)
    inputs = [x, weight] + ([] if _optional(bias) is None else [bias])
    return g.op("Conv", *inputs, kernel_shape_i=[1, 1])


def squeeze_excite(g, x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate, backend):
    """GlobalAveragePool -> Conv 1x1 -> act -> Conv 1x1 -> gate -> Mul."""
    pooled = g.op("GlobalAveragePool", x)
    hidden = _ACTS[_const(act, "s")](g, _conv1x1(g, pooled, reduce_weight, reduce_bias, "squeeze_excite"))
    logits = _conv1x1(g, hidden, expand_weight, expand_bias, "squeeze_excite")
    return g.op("Mul", x, _GATES[_const(gate, "s")](g, logits)), pooled, logits


def eca(g, x, conv_weight, gate, backend):
    """GlobalAveragePool -> (N, 1, C) -> Conv 1-D across channels -> (N, C, 1, 1) -> gate -> Mul."""
    k = _static_sizes(conv_weight, "conv_weight", "eca")[-1]
    pooled = g.op("GlobalAveragePool", x)                          # (N, C, 1, 1)
    row = g.op("Transpose", opset9.squeeze(g, pooled, 3), perm_i=[0, 2, 1])   # (N, 1, C)
    logits = g.op("Conv", row, conv_weight, kernel_shape_i=[k], pads_i=[(k - 1) // 2] * 2)
    column = opset9.unsqueeze(g, g.op("Transpose", logits, perm_i=[0, 2, 1]), 3)  # (N, C, 1, 1)
    return g.op("Mul", x, _GATES[_const(gate, "s")](g, column)), pooled, logits


def _is_column(value) -> bool:
    sizes = helper._get_tensor_sizes(value)
    return sizes is not None and len(sizes) == 4 and sizes[2:] == [1, 1]


def gate_scale(g, x, logits, gate, backend):
    """gate -> (N, C, 1, 1) -> Mul; logits flattened from (N, C, 1, 1) by the caller are used as they were."""
    source = logits.node()
    if source.kind() in ("onnx::Flatten", "onnx::Reshape") and _is_column(source.inputsAt(0)):
        column = source.inputsAt(0)
    else:
        column = opset9.unsqueeze(g, opset9.unsqueeze(g, logits, 2), 3)
    return g.op("Mul", x, _GATES[_const(gate, "s")](g, column))


def sync_batch_norm(g, *args):
    """Only training-mode BN synchronises statistics: never exportable."""
    require_eval("sync_batch_norm", True)


def activation(g, x, act, backend):
    """The activation's own ONNX nodes."""
    return _ACTS[_const(act, "s")](g, x)


SYMBOLICS: dict[str, Callable] = {
    "fastblocks::dwconv_bn_act": dwconv_bn_act,
    "fastblocks::bn_act": bn_act,
    "fastblocks::squeeze_excite": squeeze_excite,
    "fastblocks::eca": eca,
    "fastblocks::gate_scale": gate_scale,
    "fastblocks::activation": activation,
    "fastblocks::sync_batch_norm": sync_batch_norm,
}
