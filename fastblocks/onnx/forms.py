"""Eval-mode forms of the fused ops in standard PyTorch ops, for the dynamo ONNX exporter.

Each form takes the custom op's own arguments (``fastblocks::<op>``'s schema, backend name
included) and returns what the op returns, computed the way the unpatched timm / torchvision
modules compute it (conv + BN, ``mean(keepdim=True)`` + 1x1 convs, ``x * gate``), so the exported
graph holds the ONNX ops the unpatched model's export holds and no more. BatchNorm in training mode
(batch statistics, running-statistics update) has no standard ONNX form: those calls raise
:class:`TrainingModeExportError`.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .._act import act_forward, gate_forward
from ..backends import reference
from ..backends.eager._common import acc_dtype

Tensor = torch.Tensor


class TrainingModeExportError(ValueError):
    """A fused op was exported with ``training=True``; the message says to call ``model.eval()``."""


def require_eval(op: str, training: bool) -> None:
    """Raise :class:`TrainingModeExportError` when ``training`` is set."""
    if training:
        raise TrainingModeExportError(
            f"fastblocks::{op} cannot be exported to ONNX in training mode (batch statistics and the "
            f"running-statistics update have no standard ONNX form): call model.eval() before "
            f"torch.onnx.export")


def _with_running_stats(y: Tensor, running_mean: Tensor, running_var: Tensor) -> tuple:
    """(y, mean, var) as the BN ops return them; in eval mode mean / var are the running ones."""
    dt = acc_dtype(y)
    return y, running_mean.to(dt), running_var.to(dt)


def dwconv_bn_act(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias, stride,
                  padding_mode, padding, dilation, training, eps, act, backend) -> tuple:
    """``fastblocks::dwconv_bn_act``: depthwise conv (asymmetric tf_same padding as a Pad) -> BN -> act."""
    require_eval("dwconv_bn_act", training)
    y = reference.dwconv_bn_act(x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias, stride,
                                padding_mode, padding, dilation, False, 0.0, eps, act)
    return _with_running_stats(y, running_mean, running_var)


def bn_act(x, bn_weight, bn_bias, running_mean, running_var, training, eps, act, backend) -> tuple:
    """``fastblocks::bn_act``: BN -> act."""
    require_eval("bn_act", training)
    y = reference.bn_act(x, bn_weight, bn_bias, running_mean, running_var, False, 0.0, eps, act)
    return _with_running_stats(y, running_mean, running_var)


def _conv1x1_weight(w: Tensor, dtype: torch.dtype) -> Tensor:
    w = w if w.dim() == 4 else w[:, :, None, None]
    return w.to(dtype)


def _optional_to(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def squeeze_excite(x, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate, backend) -> tuple:
    """``fastblocks::squeeze_excite``: mean(keepdim) -> 1x1 conv -> act -> 1x1 conv -> gate -> x * gate."""
    pooled = x.mean((2, 3), keepdim=True)
    hidden = act_forward(act, F.conv2d(pooled, _conv1x1_weight(reduce_weight, x.dtype),
                                       _optional_to(reduce_bias, x.dtype)))
    logits = F.conv2d(hidden, _conv1x1_weight(expand_weight, x.dtype), _optional_to(expand_bias, x.dtype))
    y = x * gate_forward(gate, logits)
    dt = acc_dtype(x)
    return y, pooled.flatten(1).to(dt), logits.flatten(1).to(dt)


def _column(t: Tensor, x: Tensor) -> Tensor:
    """(N, C) or (N, 1, C) -> (N, C, 1, 1) as one view (one Reshape node); an (N, C, 1, 1) as it is."""
    return t if t.dim() == 4 else t.view(x.shape[0], x.shape[1], 1, 1)


def eca(x, conv_weight, gate, backend) -> tuple:
    """``fastblocks::eca``: mean -> (N, 1, C) -> 1-D conv across channels -> gate -> x * gate."""
    n, c = x.shape[:2]
    pooled = x.mean((2, 3), keepdim=True)
    pad = (conv_weight.shape[-1] - 1) // 2
    logits = F.conv1d(pooled.view(n, 1, c), conv_weight.to(x.dtype), padding=pad)
    y = x * gate_forward(gate, _column(logits, x))
    dt = acc_dtype(x)
    return y, pooled.view(n, c).to(dt), logits.view(n, c).to(dt)


def gate_scale(x, logits, gate, backend) -> Tensor:
    """``fastblocks::gate_scale``: x * gate(logits) over H, W; logits (N, C) or (N, C, 1, 1)."""
    return x * gate_forward(gate, _column(logits.to(x.dtype), x))


def activation(x, act, backend) -> Tensor:
    """``fastblocks::activation``: the activation itself."""
    return act_forward(act, x)


FORMS: dict[str, Callable] = {
    "fastblocks::dwconv_bn_act": dwconv_bn_act,
    "fastblocks::bn_act": bn_act,
    "fastblocks::squeeze_excite": squeeze_excite,
    "fastblocks::eca": eca,
    "fastblocks::gate_scale": gate_scale,
    "fastblocks::activation": activation,
}
