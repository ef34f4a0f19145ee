"""Eval-mode inference path of patched models: every BatchNorm that follows a conv is folded into
it (a cache of folded weights, see :mod:`.fold`), the activation and residual adds run as the
conv's fused epilogue (:mod:`.conv_fusion`). Installed by ``fastblocks.patch``; runs whenever the
patched model is in eval mode and no parameter gradient is needed."""

from .conv_fusion import ConvRunner, mkldnn_unary
from .fold import FoldedConvBN, fold_batchnorm

__all__ = ["ConvRunner", "FoldedConvBN", "fold_batchnorm", "mkldnn_unary"]
