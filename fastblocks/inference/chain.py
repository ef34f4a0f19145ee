"""Eval forward of a Sequential of whole-block MBConv blocks (timm's ``blocks`` and its stages,
torchvision's ``features`` runs of MBConv): the per-call checks of every block (x's layout, the
global state, the training flags and hooks of the blocks' modules) run once for the whole run of
blocks, then each block's cached ``mbconv_eval`` arguments are checked against its source tensors
and the ops run back to back, without a module call per block (2.5-5% of a batch-1 forward of
mobilenetv2 / mobilenetv3 / efficientnet_b0, 2 threads). Other children run their own call, and
so does a block that cannot take the op at that moment (input layout, a gradient needed). A hook
or training mode on any module of the blocks, or a child added, removed or replaced in the
Sequential, makes the Sequential run its own forward."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .blocks import BLOCK_ATTR, global_state_ok, modules_ok

CHAIN_ATTR = "_fastblocks_block_chain"
_SEQUENTIAL = nn.Sequential


class BlockChain:
    """The children of a Sequential (nested plain Sequentials flattened) in call order: blocks with a
    whole-block plan run ``mbconv_eval`` directly, other modules their own call."""

    def __init__(self, containers: list, items: list) -> None:
        self.containers = containers  # the Sequentials, root first
        self.layout = [tuple(c._modules.values()) for c in containers]
        self.items = items
        self.plans = [m.__dict__.get(BLOCK_ATTR) for m in items]
        # the modules whose hooks or training flag the skipped block calls would see (the root's
        # own hooks ran in its __call__; other items run their own __call__)
        self.modules = containers[1:] + [m for b, p in zip(items, self.plans) if p is not None for m in b.modules()]

    def _unchanged(self) -> bool:
        """No child of a Sequential added, removed or replaced, no plan dropped, since the chain was built."""
        return all(tuple(c._modules.values()) == layout for c, layout in zip(self.containers, self.layout)) and \
            all(m.__dict__.get(BLOCK_ATTR) is p for m, p in zip(self.items, self.plans))

    def __call__(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The Sequential's output, or None where its own forward must run."""
        if not (global_state_ok() and modules_ok(self.modules) and self._unchanged()):
            return None
        for module, plan in zip(self.items, self.plans):
            y = None if plan is None else plan.run(x)
            x = module(x) if y is None else y  # None: the module's own call
        return x


def _flatten(seq: nn.Sequential, containers: list, items: list) -> None:
    """Collect seq's plain Sequentials and their other children in call order."""
    containers.append(seq)
    for child in seq._modules.values():
        if type(child) is _SEQUENTIAL:
            _flatten(child, containers, items)
        elif child is not None:
            items.append(child)


class BlockChainMixin:
    """Sequential forward: :class:`BlockChain` where it serves, else the Sequential's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chain = self.__dict__.get(CHAIN_ATTR)
        if chain is not None:
            y = chain(x)
            if y is not None:
                return y
        return super().forward(x)


def install_block_chains(patcher) -> None:
    """Give each outermost plain Sequential holding at least two whole-block MBConv blocks (directly
    or in nested Sequentials) the chained eval forward."""
    from ..patch.patcher import fused_class

    inner = set()
    for module in list(patcher.model.modules()):
        if type(module) is not _SEQUENTIAL or id(module) in inner:
            continue
        containers, items = [], []
        _flatten(module, containers, items)
        if sum(BLOCK_ATTR in m.__dict__ for m in items) < 2:
            continue
        inner.update(id(c) for c in containers)
        patcher.swap_class(module, fused_class(type(module), BlockChainMixin))
        patcher.set_attr(module, CHAIN_ATTR, BlockChain(containers, items))
