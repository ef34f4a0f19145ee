"""Forward mixins ``patch`` puts on a conv and the BatchNorm after it (by class swap, undone by
``unpatch``): at eval the conv runs on folded weights with the activation fused, and the BN
passes its input through; otherwise both run their original forwards."""

from __future__ import annotations

import torch

# attribute (in the module's __dict__, outside its state) holding the shared FoldedConvBN
FOLD_ATTR = "_fastblocks_fold"


class FoldedConvMixin:
    """Conv forward: the folded conv + act when its :class:`~fastblocks.inference.fold.FoldedConvBN`
    is active, else the original conv. Going to training mode drops the folded weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fold = self.__dict__.get(FOLD_ATTR)
        if fold is not None and fold.active():
            return fold(x)
        return super().forward(x)

    def train(self, mode: bool = True):
        out = super().train(mode)
        fold = self.__dict__.get(FOLD_ATTR)
        if mode and fold is not None:
            fold.clear()
        return out


class FoldedBatchNormMixin:
    """BatchNorm forward: the identity when the conv before it applied it (folded), else the
    original BN (+ act)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fold = self.__dict__.get(FOLD_ATTR)
        if fold is not None and fold.active():
            return x
        return super().forward(x)
