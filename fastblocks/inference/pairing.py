"""Patch side of eval folding: the patch rules name each conv -> BatchNorm pair they know (the
same chains the training fusions use, plus the pairs whose BN feeds a residual or a block's
output); after the rules ran, :func:`install_folds` gives every foldable pair a shared
:class:`~fastblocks.inference.fold.FoldedConvBN` and the forward mixins of
:mod:`fastblocks.inference.modules`, and reports what it folded and what it could not."""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..nn import BatchNormAct2d
from ..nn._common import has_hooks
from ..patch.classify import act_name, qualname
from ..patch.report import CONV_ALONE, Replaced, Skipped
from .blocks import install_block_evals
from .chain import install_block_chains
from .pool import install_global_pools
from .conv_fusion import inplace_act
from .fold import FoldedConvBN
from .modules import FOLD_ATTR, FoldedBatchNormMixin, FoldedConvMixin

_PLAIN_CONV = "torch.nn.modules.conv.Conv2d"
_PLAIN_BNS = ("torch.nn.modules.batchnorm.BatchNorm2d", "timm.layers.norm_act.BatchNormAct2d")


def numeric_padding(conv: nn.Conv2d) -> Optional[tuple]:
    """The conv's padding as (ph, pw), or None when it is not symmetric per side."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        spans = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(s % 2 for s in spans):  # "same" with an even span pads one side more
            return None
        return tuple(s // 2 for s in spans)
    return tuple(conv.padding)


def _bn_act(bn: nn.Module) -> Optional[str]:
    """The activation a foldable BN module applies after normalising, None when it is not foldable
    as a whole (dropout inside, an activation the conv cannot fuse)."""
    if type(bn) is BatchNormAct2d:
        return bn.act
    if qualname(bn) == "timm.layers.norm_act.BatchNormAct2d":
        if act_name(getattr(bn, "drop", None)) != "identity":
            return None
        return act_name(getattr(bn, "act", None))
    return "identity"


def fold_problem(conv: nn.Module, bn: Optional[nn.Module]) -> Optional[str]:
    """None when ``conv`` -> ``bn`` folds into one conv at eval (``bn`` None: the conv alone
    takes the eval path), else the reason."""
    if qualname(conv) != _PLAIN_CONV:
        return f"{type(conv).__name__} is not a plain Conv2d"
    if bn is not None and type(bn) is not BatchNormAct2d and qualname(bn) not in _PLAIN_BNS:
        return f"{type(bn).__name__} is not a plain BatchNorm2d"
    if has_hooks(conv) or (bn is not None and has_hooks(bn)):
        return "module has hooks"
    if bn is not None and (not bn.track_running_stats or bn.running_mean is None or bn.running_var is None):
        return "BatchNorm without running statistics (track_running_stats=False) normalises by batch " \
               "statistics at eval too: not foldable"
    if bn is not None and bn.num_features != conv.out_channels:
        return "BatchNorm width differs from the conv's output channels"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r}"
    if numeric_padding(conv) is None:
        return f"padding {conv.padding!r} is asymmetric"
    if bn is None:
        return None
    act = _bn_act(bn)
    if act is None:
        return "BatchNorm with dropout or an unsupported activation inside"
    try:
        inplace_act(act)
    except ValueError:
        return f"activation {act!r} has no fused form"
    return None


def install_folds(patcher, pairs: list) -> None:
    """Install eval folding on each recorded ``(holder, path, conv name, BN name)`` pair, looked
    up after the rules ran (the BN may be a fused BatchNormAct2d by then). Depthwise convs fused
    into DWConvBNAct fold in their own kernel and are left alone here."""
    from ..patch.patcher import fused_class, join

    seen = set()
    for holder, path, conv_name, bn_name in pairs:
        conv = holder._modules.get(conv_name)
        bn = None if bn_name is None else holder._modules.get(bn_name)
        if conv is None or (bn_name is not None and bn is None) or id(conv) in seen or FOLD_ATTR in conv.__dict__:
            continue
        seen.add(id(conv))
        if not isinstance(conv, nn.Conv2d) or not (bn is None or isinstance(bn, nn.modules.batchnorm._BatchNorm)):
            continue  # fused by a training rule into a module that folds itself
        conv_path = join(path, conv_name)
        what = type(conv).__name__ + ("" if bn is None else f"+{type(bn).__name__}")
        reason = fold_problem(conv, bn)
        if reason is not None:
            patcher.report.unfolded.append(Skipped(conv_path, what, reason))
            continue
        act = "identity" if bn is None else _bn_act(bn)
        fold = FoldedConvBN(conv, bn, act, conv.stride, numeric_padding(conv), conv.dilation, conv.groups)
        for module, mixin in ((conv, FoldedConvMixin), (bn, FoldedBatchNormMixin)):
            if module is not None:
                patcher.swap_class(module, fused_class(type(module), mixin))
                patcher.set_attr(module, FOLD_ATTR, fold)
        if bn is None:
            patcher.report.folded.append(Replaced(conv_path, what, CONV_ALONE, "no BatchNorm to fold"))
        else:
            patcher.report.folded.append(Replaced(conv_path, what, "folded at eval", f"+ {bn_name} (act={act})"))
    install_block_evals(patcher)
    install_block_chains(patcher)
    if patcher.report.replaced or patcher.report.folded:  # a model with nothing to fuse stays as it is
        patcher.report.pools = install_global_pools(patcher)
