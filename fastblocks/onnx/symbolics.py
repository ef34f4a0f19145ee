"""TorchScript-exporter symbolics: each fused op as the standard ONNX nodes its unpatched module exports.

``torch.onnx.export(..., dynamo=False)`` traces the model with ``torch.jit.trace``, which records
the ``fastblocks::`` custom ops; these functions (registered with
``torch.onnx.register_custom_op_symbolic``) turn each into Conv / BatchNormalization / activation /
GlobalAveragePool / Mul nodes. The exporter then folds an eval BatchNormalization into the Conv
before it, as it does for an unpatched conv + BN. Activations reuse the exporter's own symbolics
for the ATen op, chosen by opset, so they match what the unpatched model exports.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Callable

import torch

from .._act import LEAKY_RELU_SLOPE
from .._validate import conv_pads
from .forms import require_eval

# The lowest opset these symbolics emit valid nodes for (Clip with min / max inputs).
MIN_OPSET = 11


@functools.lru_cache(maxsize=None)
def _torch_symbolics() -> SimpleNamespace:
    """The exporter's symbolic modules, imported at the first export (~80 ms), not at
    ``import fastblocks``."""
    from torch.onnx import symbolic_helper, symbolic_opset9, symbolic_opset11, symbolic_opset14, symbolic_opset20

    return SimpleNamespace(helper=symbolic_helper, opset9=symbolic_opset9, opset11=symbolic_opset11,
                           opset14=symbolic_opset14, opset20=symbolic_opset20)


def _act(g, name: str, x):
    """The activation ``name`` of x, by the exporter's own symbolic for the ATen op at g's opset."""
    t = _torch_symbolics()
    if name == "identity":
        return x
    if name == "relu6":
        return t.opset11.relu6(g, x)
    if name == "hardswish":
        return (t.opset14 if g.opset >= 14 else t.opset9).hardswish(g, x)
    if name == "leaky_relu":
        return t.opset9.leaky_relu(g, x, LEAKY_RELU_SLOPE, False)
    if name in ("gelu", "gelu_tanh"):
        return (t.opset20 if g.opset >= 20 else t.opset9).gelu(g, x, "tanh" if name == "gelu_tanh" else "none")
    return {"silu": t.opset9.silu, "relu": t.opset9.relu}[name](g, x)


def _gate(g, name: str, x):
    t = _torch_symbolics()
    return {"sigmoid": t.opset9.sigmoid, "hard_sigmoid": t.opset9.hardsigmoid}[name](g, x)


def _const(value, desc: str):
    return _torch_symbolics().helper._parse_arg(value, desc)


def _optional(value):
    return None if _torch_symbolics().helper._is_none(value) else value


def _sizes(value):
    return _torch_symbolics().helper._get_tensor_sizes(value)


def _unsqueeze(g, x, *dims):
    for dim in dims:
        x = _torch_symbolics().opset9.unsqueeze(g, x, dim)
    return x


def _static_sizes(value, name: str, op: str) -> list:
    """All sizes of a parameter (weights are static)."""
    sizes = _sizes(value)
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
    sizes = _sizes(x) or [None] * 4
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
    return _act(g, _const(act, "s"), u), running_mean, running_var


def bn_act(g, x, bn_weight, bn_bias, running_mean, running_var, training, eps, act, backend):
    """BatchNormalization -> act."""
    require_eval("bn_act", _const(training, "b"))
    u = _batch_norm(g, x, bn_weight, bn_bias, running_mean, running_var, _const(eps, "f"), "bn_act")
    return _act(g, _const(act, "s"), u), running_mean, running_var


def _conv1x1(g, x, weight, bias, op: str):
    """1x1 Conv; a 2-D (out, in) weight gets its 1x1 kernel dims."""
    if len(_static_sizes(weight, "the SE weights", op)) == 2:
        weight = _unsqueeze(g, weight, 2, 3)
    inputs = [x, weight] + ([] if _optional(bias) is None else [bias])
    return g.op("Conv", *inputs, kernel_shape_i=[1, 1])


def squeeze_excite(g, x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate, backend):
    """GlobalAveragePool -> Conv 1x1 -> act -> Conv 1x1 -> gate -> Mul."""
    pooled = g.op("GlobalAveragePool", x)
    hidden = _act(g, _const(act, "s"), _conv1x1(g, pooled, reduce_weight, reduce_bias, "squeeze_excite"))
    logits = _conv1x1(g, hidden, expand_weight, expand_bias, "squeeze_excite")
    return g.op("Mul", x, _gate(g, _const(gate, "s"), logits)), pooled, logits


def eca(g, x, conv_weight, gate, backend):
    """GlobalAveragePool -> (N, 1, C) -> Conv 1-D across channels -> (N, C, 1, 1) -> gate -> Mul."""
    k = _static_sizes(conv_weight, "conv_weight", "eca")[-1]
    pooled = g.op("GlobalAveragePool", x)                          # (N, C, 1, 1)
    row = g.op("Transpose", _torch_symbolics().opset9.squeeze(g, pooled, 3), perm_i=[0, 2, 1])   # (N, 1, C)
    logits = g.op("Conv", row, conv_weight, kernel_shape_i=[k], pads_i=[(k - 1) // 2] * 2)
    column = _unsqueeze(g, g.op("Transpose", logits, perm_i=[0, 2, 1]), 3)  # (N, C, 1, 1)
    return g.op("Mul", x, _gate(g, _const(gate, "s"), column)), pooled, logits


def _is_column(value) -> bool:
    sizes = _sizes(value)
    return sizes is not None and len(sizes) == 4 and sizes[2:] == [1, 1]


def gate_scale(g, x, logits, gate, backend):
    """gate -> (N, C, 1, 1) -> Mul; logits flattened from (N, C, 1, 1) by the caller are used as they were."""
    source = logits.node()
    if source.kind() in ("onnx::Flatten", "onnx::Reshape") and _is_column(source.inputsAt(0)):
        column = source.inputsAt(0)
    else:
        column = _unsqueeze(g, logits, 2, 3)
    return g.op("Mul", x, _gate(g, _const(gate, "s"), column))


def sync_batch_norm(g, *args):
    """Only training-mode BN synchronises statistics: never exportable."""
    require_eval("sync_batch_norm", True)


def activation(g, x, act, backend):
    """The activation's own ONNX nodes."""
    return _act(g, _const(act, "s"), x)


SYMBOLICS: dict[str, Callable] = {
    "fastblocks::dwconv_bn_act": dwconv_bn_act,
    "fastblocks::bn_act": bn_act,
    "fastblocks::squeeze_excite": squeeze_excite,
    "fastblocks::eca": eca,
    "fastblocks::gate_scale": gate_scale,
    "fastblocks::activation": activation,
    "fastblocks::sync_batch_norm": sync_batch_norm,
}
