"""efficientnet_pytorch's MBConvBlock with its body fused (its _swish is shared by three places,
so the block's forward is replaced instead of its children; every parameter stays where it was)."""

from __future__ import annotations

import torch

from .. import ops
from .._validate import conv_pads
from ..nn._common import autocast_input, bn_arguments


def static_pads(conv) -> tuple:
    """(left, right, top, bottom) of a Conv2dStaticSamePadding."""
    pad = getattr(conv, "static_padding", None)
    return tuple(pad.padding) if isinstance(pad, torch.nn.ZeroPad2d) else (0, 0, 0, 0)


def _dw_matches_tf_same(conv, x: torch.Tensor) -> bool:
    k, s = conv.kernel_size[0], conv.stride[0]
    top, bottom, left, right = conv_pads("tf_same", 0, k, s, 1, x.shape[2], x.shape[3])
    return (left, right, top, bottom) == static_pads(conv)


class FusedMBConvBlockMixin:
    """Forward of efficientnet_pytorch.model.MBConvBlock with bn0+swish, dwconv+bn1+swish and SE fused."""

    _fastblocks_backend = None
    MIRRORS = {"b04e3a1003c63c2e"}  # efficientnet_pytorch 0.7.1 (patcher.forward_fingerprint)

    def forward(self, inputs, drop_connect_rate=None):
        backend = self._fastblocks_backend
        x = inputs
        if self._block_args.expand_ratio != 1:
            x = self._expand_conv(inputs)
            x = ops.bn_act(x, act="silu", backend=backend, **bn_arguments(self._bn0, self.training))
        conv = self._depthwise_conv
        if _dw_matches_tf_same(conv, x):
            x, weight = autocast_input(x, conv.weight)
            x = ops.dwconv_bn_act(x, weight, conv_bias=conv.bias, stride=conv.stride[0], padding="tf_same",
                                  act="silu", backend=backend, **bn_arguments(self._bn1, self.training))
        else:  # static padding computed for another image size: run the original modules
            x = self._swish(self._bn1(conv(x)))
        if self.has_se:
            x = ops.squeeze_excite(x, self._se_reduce.weight, self._se_reduce.bias, self._se_expand.weight,
                                   self._se_expand.bias, act="silu", gate="sigmoid", backend=backend)
        x = self._project_conv(x)
        x = self._bn2(x)
        input_filters, output_filters = self._block_args.input_filters, self._block_args.output_filters
        if self.id_skip and self._block_args.stride == 1 and input_filters == output_filters:
            if drop_connect_rate:
                from efficientnet_pytorch.utils import drop_connect
                x = drop_connect(x, p=drop_connect_rate, training=self.training)
            x = x + inputs
        return x
