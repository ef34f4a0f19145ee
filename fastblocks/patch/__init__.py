"""fastblocks.patch(model) / fastblocks.unpatch(model): fused modules swapped into real models."""

from .diagnose import UnfusedPair, find_unfused_bn_act
from .patcher import patch, unpatch
from .report import PatchReport, Replaced, Skipped

__all__ = ["patch", "unpatch", "PatchReport", "Replaced", "Skipped", "find_unfused_bn_act", "UnfusedPair"]
