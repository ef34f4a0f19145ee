"""Whole-block eval forwards of timm's MBConv blocks (``InvertedResidual``,
``DepthwiseSeparableConv``) once patched: one Python function runs the folded 1x1 conv, the fused
depthwise conv, the SE and the folded projection conv with the residual add as its oneDNN "add"
post-op, instead of ~10 module calls and a separate add. Installed by ``patch`` where every part
is folded; otherwise (training, gradients needed, hooks) the block's own forward runs."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

from ..nn import AbsorbedBatchNorm2d, DWConvBNAct, SqueezeExcite
from ..patch.classify import qualname
from .fold import fold_active
from .modules import FOLD_ATTR
from .se import se_eval

BLOCK_ATTR = "_fastblocks_block_eval"
_IDENTITY = "torch.nn.modules.linear.Identity"
_DROP_PATH = ("torch.nn.modules.linear.Identity", "timm.layers.drop.DropPath")  # identities at eval
# qualname -> (1x1 expansion conv or None, depthwise conv, its absorbed BN, projection conv)
_LAYOUTS = {
    "timm.models._efficientnet_blocks.InvertedResidual": ("conv_pw", "conv_dw", "bn2", "conv_pwl"),
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": (None, "conv_dw", "bn1", "conv_pw"),
}


class BlockEval:
    """The eval forward of one MBConv block (see the module docstring)."""

    def __init__(self, block: nn.Module, expand: Optional[nn.Module], dw: nn.Module, se: Optional[nn.Module],
                 project: nn.Module, residual: bool) -> None:
        self.expand = None if expand is None else expand.__dict__[FOLD_ATTR]
        self.dw, self.se, self.residual = dw, se, residual
        self.project = project.__dict__[FOLD_ATTR]
        self.modules = list(block.modules())[1:]  # the block's own hooks ran in its __call__ already

    def active(self) -> bool:
        """Every part runs folded now and no forward hook would be skipped."""
        if _module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks:
            return False
        if any(m._forward_hooks or m._forward_pre_hooks for m in self.modules):
            return False
        folds = (self.project,) if self.expand is None else (self.expand, self.project)
        return all(f.active() for f in folds) and fold_active(self.dw, self.dw.batchnorm)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.dw.forward(y)
        if self.se is not None:
            y = se_eval(self.se, y, inplace=True)
        return self.project(y, x if self.residual else None)


def block_eval_problem(block: nn.Module) -> Optional[str]:
    """None when ``block`` (a layout of :data:`_LAYOUTS`) can run :class:`BlockEval`."""
    expand_name, dw_name, dw_bn_name, project_name = _LAYOUTS[qualname(block)]
    parts = block._modules
    if parts.get("conv_s2d") is not None:
        return "space-to-depth stem"
    if qualname(parts.get("aa")) != _IDENTITY:
        return "anti-aliasing"
    if not isinstance(parts.get(dw_name), DWConvBNAct) or not isinstance(parts.get(dw_bn_name), AbsorbedBatchNorm2d):
        return "depthwise conv not fused"
    se = parts.get("se")
    if qualname(se) != _IDENTITY and type(se) is not SqueezeExcite:
        return "SE not fused"
    for name in filter(None, (expand_name, project_name)):
        fold = parts[name].__dict__.get(FOLD_ATTR)
        if fold is None:
            return f"{name} not folded"
    if parts[project_name].__dict__[FOLD_ATTR].act != "identity":
        return "projection with an activation"
    if getattr(block, "has_skip", False) and qualname(parts.get("drop_path")) not in _DROP_PATH:
        return "unknown drop path"
    return None


def build_block_eval(block: nn.Module) -> BlockEval:
    expand_name, dw_name, _, project_name = _LAYOUTS[qualname(block)]
    parts = block._modules
    se = parts.get("se") if type(parts.get("se")) is SqueezeExcite else None
    return BlockEval(block, parts[expand_name] if expand_name else None, parts[dw_name], se, parts[project_name],
                     bool(getattr(block, "has_skip", False)))


class BlockEvalMixin:
    """Block forward: :class:`BlockEval` when active, else the block's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.__dict__.get(BLOCK_ATTR)
        if plan is not None and plan.active():
            return plan(x)
        return super().forward(x)


def install_block_evals(patcher) -> None:
    """Give every foldable MBConv block of the model its whole-block eval forward."""
    from ..patch.patcher import fused_class

    for block in list(patcher.model.modules()):
        if qualname(block) not in _LAYOUTS or BLOCK_ATTR in block.__dict__ or block_eval_problem(block):
            continue
        plan = build_block_eval(block)
        patcher.swap_class(block, fused_class(type(block), BlockEvalMixin))
        patcher.set_attr(block, BLOCK_ATTR, plan)
