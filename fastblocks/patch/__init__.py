"""fastblocks.patch(model) / fastblocks.unpatch(model): fused modules swapped into real models."""

from .patcher import patch, unpatch
from .report import PatchReport, Replaced, Skipped

__all__ = ["patch", "unpatch", "PatchReport", "Replaced", "Skipped"]
