"""Fused modules used by :func:`fastblocks.patch` (and usable directly)."""

from .activation import HardSwish, MemoryEfficientAct, SiLU
from .attention import EffectiveSqueezeExcite, EfficientChannelAttention, SqueezeExcite, SqueezeExciteWithNorm
from .batchnorm import AbsorbedBatchNorm2d, AbsorbedSyncBatchNorm2d, BatchNormAct2d, SyncBatchNormAct2d
from .dwconv import DWConvBNAct, MixedDWConvBNAct

__all__ = ["DWConvBNAct", "MixedDWConvBNAct", "BatchNormAct2d", "AbsorbedBatchNorm2d", "SyncBatchNormAct2d", "AbsorbedSyncBatchNorm2d",
           "SqueezeExcite", "SqueezeExciteWithNorm", "EffectiveSqueezeExcite", "EfficientChannelAttention",
           "MemoryEfficientAct", "SiLU", "HardSwish"]
