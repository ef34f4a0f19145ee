"""Forward mixins ``patch`` puts on a conv and the BatchNorm after it (by class swap, undone by
``unpatch``): at eval the conv runs on folded weights with the activation fused, and the BN
passes its input through; otherwise both run their original forwards."""

from __future__ import annotations

import torch

from .fold import eval_state_ok

# attribute (in the module's __dict__, outside its state) holding the shared FoldedConvBN
FOLD_ATTR = "_fastblocks_fold"


class FoldedConvMixin:
    """Conv forward: the folded conv + act when its :class:`~fastblocks.inference.fold.FoldedConvBN`
    is active, else the original conv. Going to training mode drops the folded weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fold = self.__dict__.get(FOLD_ATTR)
        if fold is not None:
            cpp = fold._cpp  # the C++ call with its checks, where one serves
            if cpp is not None and eval_state_ok("cpu"):
                y = cpp(x)
                if y is not None:
                    return y
            if fold.active():
                y = fold(x)  # rebuilds the weights (and the C++ runner) where a source changed
                if cpp is not None and cpp is fold._cpp and not cpp.current():
                    fold.rebuild_cpp()  # a change only the C++ runner sees (a slot refilled, same storage)
                return y
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
