"""The one registry of patch rules. Each rule says what it matches and what it builds.

Rules run in order on every module of the model (parents before children); the first rule that
handles a module wins. Block rules (which know a block's forward order) come before leaf rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

from torch import nn

from .. import _dispatch
from ..nn import (AbsorbedBatchNorm2d, AbsorbedSyncBatchNorm2d, BatchNormAct2d, DWConvBNAct,
                  EffectiveSqueezeExcite, EfficientChannelAttention, MemoryEfficientAct, MixedDWConvBNAct,
                  SqueezeExcite, SqueezeExciteWithNorm, SyncBatchNormAct2d)
from ..nn._common import has_hooks
from .classify import (IDENTITY, STANDALONE_GAIN, act_name, batchnorm_problem, bn_act_of, conv_padding, MIXED_CONV,
                       depthwise_parts, depthwise_problem, gate_name, is_sync_batchnorm, pointwise_problem, qualname)
from .effnet_block import FusedMBConvBlockMixin
from .patcher import Patcher, forward_mismatch, fused_class, join, parent_path
from .resnet_blocks import SHARED_RELU_BLOCKS


@dataclass(frozen=True)
class Rule:
    name: str
    family: str
    matches: str  # human-readable: what the rule recognises
    apply: Callable[[Patcher, str, nn.Module, Optional[nn.Module], Optional[str]], bool]


# ----------------------------------------------------------------------------- shared builders

def dw_backend_problem(p: Patcher, conv: nn.Module) -> Optional[str]:
    """Why the backend named in ``patch(model, backend=...)`` could never run this depthwise conv
    (e.g. the native kernels have no k=1), or None; checked at patch time so the layer is left
    unfused with the reason instead of failing at its first forward."""
    if p.backend is None:
        return None
    reason = _dispatch.config_problem("dwconv_bn_act", p.backend, kernel_size=conv.kernel_size[0],
                                      stride=conv.stride[0], dilation=conv.dilation[0])
    return None if reason is None else f"backend {p.backend!r} cannot run it: {reason}"


class Outer(NamedTuple):
    """The enclosing module holding the activation, when the conv and BN sit one level down in a
    conv-norm module (``pw1 = ConvNorm(conv, bn)`` followed by ``act`` in pw1's parent)."""
    module: nn.Module
    path: str


def _act_slot(parent: nn.Module, act_module_name: Optional[str], outer: Optional[Outer]):
    """(holder, module, label in the report) of the activation a fusion takes, or (parent, None, None)."""
    if not act_module_name:
        return parent, None, None
    holder = parent if outer is None else outer.module
    label = act_module_name if outer is None else join(outer.path, act_module_name)
    return holder, holder._modules.get(act_module_name), label


def fuse_dw_bn(p: Patcher, path: str, parent: nn.Module, conv_name: str, bn_name: str,
               act_module_name: Optional[str] = None, outer: Optional[Outer] = None) -> bool:
    """parent.<conv_name> (depthwise) + parent.<bn_name> (+ parent.<act_module_name>, or
    outer.module.<act_module_name>) -> DWConvBNAct.
    Returns False (after recording the reason) when the pattern is not exactly fusable."""
    conv, bn = parent._modules[conv_name], parent._modules[bn_name]
    conv_path = join(path, conv_name)
    parts, reason = depthwise_parts(conv)
    reason = reason or next(filter(None, (dw_backend_problem(p, part) for part in parts)), None)
    if reason is not None:
        p.skip(conv_path, conv, reason)
        return False
    reason = batchnorm_problem(bn, sync_ok=True)
    if reason is not None:
        p.skip(join(path, bn_name), bn, reason)
        return False
    act = bn_act_of(bn)
    act_holder, act_module, act_label = _act_slot(parent, act_module_name, outer)
    if act_module is not None:
        if act != "identity":
            return False
        act = act_name(act_module)
    sync = is_sync_batchnorm(bn)
    holder = (AbsorbedSyncBatchNorm2d if sync else AbsorbedBatchNorm2d).from_batchnorm(bn)
    fused = [DWConvBNAct(part.weight, part.bias, holder, part.stride[0], conv_padding(part), act, backend=p.backend)
             for part in parts]
    fused = fused[0] if parts == [conv] else MixedDWConvBNAct(fused, holder)
    fused.train(conv.training)
    p.replace(parent, conv_name, fused)
    p.replace(parent, bn_name, holder)
    detail = f"+ {bn_name}" + (f" + {act_label}" if act_module is not None else "") + f" (act={act}"
    if len(parts) > 1:
        detail += ", k=" + "/".join(str(part.kernel_size[0]) for part in parts)
    detail += ", synchronised)" if sync else ")"
    if act_module is not None:
        p.replace(act_holder, act_module_name, nn.Identity(), owner=parent)
    p.record(conv_path, f"{type(conv).__name__}+{type(bn).__name__}", type(fused).__name__, detail)
    return True


def fuse_bn(p: Patcher, path: str, parent: nn.Module, bn_name: str, act_module_name: Optional[str] = None,
            outer: Optional[Outer] = None) -> bool:
    """parent.<bn_name> (+ parent.<act_module_name>, or outer.module.<act_module_name>) ->
    BatchNormAct2d (SyncBatchNormAct2d for a synchronised BN)."""
    bn = parent._modules[bn_name]
    reason = batchnorm_problem(bn, sync_ok=True)
    if reason is not None:
        p.skip(join(path, bn_name), bn, reason)
        return False
    act = bn_act_of(bn)
    act_holder, act_module, act_label = _act_slot(parent, act_module_name, outer)
    if act_module is not None:
        act = act_name(act_module)
    # A SyncBatchNorm is always replaced (lone ones too): DDP refuses CPU models containing one.
    sync = is_sync_batchnorm(bn)
    if act == "identity" and not p.fuse_lone_bn and not sync:
        p.skip(join(path, bn_name), bn, "no activation known to follow: nothing to save (fuse_lone_bn=True "
                                        "fuses it)")
        return False
    cls = SyncBatchNormAct2d if sync else BatchNormAct2d
    p.replace(parent, bn_name, cls.from_batchnorm(bn, act, backend=p.backend))
    if act_module is not None:
        p.replace(act_holder, act_module_name, nn.Identity(), owner=parent)
    detail = (f"+ {act_label} " if act_module is not None else "") + f"(act={act})"
    p.record(join(path, bn_name), type(bn).__name__, cls.__name__, detail)
    return True


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(
        m, (BatchNormAct2d, AbsorbedBatchNorm2d))


# ----------------------------------------------------------------------------- block rules

def efficientnet_pytorch_mbconv(p, path, module, parent, name):
    if qualname(module) != "efficientnet_pytorch.model.MBConvBlock":
        return False
    if has_hooks(module):
        p.skip(path, module, "module has hooks")
        return True
    dw = module._depthwise_conv
    reasons = [depthwise_problem(dw) or dw_backend_problem(p, dw), act_name(module._swish) != "silu" and "unknown swish"]
    reasons += [batchnorm_problem(getattr(module, n)) for n in ("_bn0", "_bn1") if hasattr(module, n)]
    reasons.append(forward_mismatch(type(module), FusedMBConvBlockMixin))
    reasons = [r for r in reasons if r]
    if reasons:
        p.skip(path, module, "; ".join(reasons))
        return True
    p.swap_class(module, fused_class(type(module), FusedMBConvBlockMixin))
    module._fastblocks_backend = p.backend
    p.claim(*(getattr(module, n, None) for n in ("_bn0", "_bn1", "_swish", "_depthwise_conv",
                                                  "_se_reduce", "_se_expand")))
    parts = (["bn0+swish"] if module._block_args.expand_ratio != 1 else []) + ["dwconv+bn1+swish"]
    parts += ["SE"] if module.has_se else []
    p.record(path, "MBConvBlock", "FusedMBConvBlock", "(" + ", ".join(parts) + ")")
    return True


def efficientnet_pytorch_stem_head(p, path, module, parent, name):
    """EfficientNet.extract_features: swish(bn0(conv_stem)) ... swish(bn1(conv_head)); the one
    _swish module is used exactly there, so both BNs take the activation."""
    if qualname(module) != "efficientnet_pytorch.model.EfficientNet" or has_hooks(module):
        return False
    if act_name(module._swish) != "silu" or batchnorm_problem(module._bn0) or batchnorm_problem(module._bn1):
        return False
    for bn_name in ("_bn0", "_bn1"):
        bn = module._modules[bn_name]
        p.replace(module, bn_name, BatchNormAct2d.from_batchnorm(bn, "silu", backend=p.backend))
        p.record(join(path, bn_name), type(bn).__name__, "BatchNormAct2d", "+ _swish (act=silu)")
    p.replace(module, "_swish", nn.Identity())
    return False  # children still get their own rules


class Chain(NamedTuple):
    """conv -> bn [-> between] [-> act] inside a block's forward, by attribute name. ``conv``: None when
    no conv feeds the BN (pre-activation); ``bn``: None when ``conv`` names a conv-norm module (see
    :func:`conv_norm_parts`: its conv and BN fuse with the block's ``act``); ``act``: a sibling
    activation module (None: the BN applies its own act, timm BatchNormAct2d); ``between``: a module
    the forward runs inside the chain that must be an Identity for it to fuse (timm ResNet's
    drop_block between bn and act, MaxViT's se_early between conv and bn); ``unless``: an attribute
    of the block that, when true, makes the forward run something else between bn and act (DlaRoot's
    residual add)."""
    conv: Optional[str]
    bn: Optional[str]
    act: Optional[str] = None
    between: Optional[str] = None
    unless: Optional[str] = None


# Chain.between modules that run between the conv and the BN (the others run between BN and act)
_BETWEEN_CONV_AND_BN = {"se_early"}

# Blocks whose forward is known, by qualname -> their conv / BN / act chains
_TIMM_CONV_BN_BLOCKS = {
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": (Chain("conv_dw", "bn1"),),
    "timm.models._efficientnet_blocks.InvertedResidual": (Chain("conv_dw", "bn2"),),
    "timm.layers.conv_bn_act.ConvNormAct": (Chain("conv", "bn"),),
    "timm.models._efficientnet_blocks.ConvBnAct": (Chain("conv", "bn1"),),  # GhostNetV3 branches, ...
    "timm.models.hgnet.ConvBNAct": (Chain("conv", "bn", "act"),),  # PP-HGNet / HGNetV2: conv, bn, act, lab
    "timm.models.ghostnet.GhostBottleneck": (Chain("conv_dw", "bn_dw"),),  # GhostNet V1 / V2, stride 2
    # DenseNet's pre-activation layers: norm1 -> relu1 -> conv1, norm2 -> relu2 -> conv2 (no conv before)
    "torchvision.models.densenet._DenseLayer": (Chain(None, "norm1", "relu1"), Chain(None, "norm2", "relu2")),
    "timm.models.xception_aligned.SeparableConv2d": (Chain("conv_dw", "bn_dw", "act_dw"),
                                                     Chain("conv_pw", "bn_pw", "act_pw")),
    # timm ResNet family (resnet*, seresnet*, ecaresnet*, resnext*, ...): bn3 / bn2 feed the residual
    "timm.models.resnet.BasicBlock": (Chain("conv1", "bn1", "act1", between="drop_block"),),
    "timm.models.resnet.Bottleneck": (Chain("conv1", "bn1", "act1"),
                                      Chain("conv2", "bn2", "act2", between="drop_block")),
    "timm.models.resnet.ResNet": (Chain("conv1", "bn1", "act1"),),  # stem (conv1 may be a deep-stem Sequential)
    "torchvision.models.resnet.ResNet": (Chain("conv1", "bn1", "relu"),),  # stem; its relu runs once
    # MaxViT / CoAtNet MBConv: conv2_kxk -> se_early (Identity unless attn_early) -> norm2 (BN + GELU)
    "timm.models.maxxvit.MbConvBlock": (Chain("conv2_kxk", "norm2", between="se_early"),),
    "timm.models.efficientformer.ConvMlpWithNorm": (Chain("fc1", "norm1", "act"),),  # EfficientFormer Meta4D MLP
    "timm.models.efficientvit_mit.ConvNormAct": (Chain("conv", "norm", "act"),),  # EfficientViT (MIT)
    "timm.models.nextvit.ConvNormAct": (Chain("conv", "norm", "act"),),
    "timm.models.nextvit.ConvAttention": (Chain("group_conv3x3", "norm", "act"),),  # grouped (head_dim 32)
    # ResNeSt: conv2 is a SplitAttn (bn2 an Identity) unless radix 0; SplitAttn: its conv + bn0 (grouped
    # by radix) and the attention's fc1 + bn1 on pooled (N, C, 1, 1) maps
    "timm.models.resnest.ResNestBottleneck": (Chain("conv1", "bn1", "act1"),
                                              Chain("conv2", "bn2", "act2", between="drop_block")),
    "timm.layers.split_attn.SplitAttn": (Chain("conv", "bn0", "act0", between="drop"), Chain("fc1", "bn1", "act1")),
    # conv-norm modules (ConvNorm / Conv2dNorm: conv, bn) followed by the block's act; each act module
    # is used once (EfficientViT-M's PatchMerging runs one act twice: not listed)
    "timm.models.efficientvit_msra.ConvMlp": (Chain("pw1", None, "act"),),
    "timm.models.shvit.FFN": (Chain("pw1", None, "act"),),
    "timm.models.shvit.PatchMerging": (Chain("conv1", None, "act1"), Chain("conv2", None, "act2")),
    "timm.models.tiny_vit.PatchEmbed": (Chain("conv1", None, "act"),),
    "timm.models.tiny_vit.MBConv": (Chain("conv1", None, "act1"), Chain("conv2", None, "act2")),
    "timm.models.tiny_vit.PatchMerging": (Chain("conv1", None, "act1"), Chain("conv2", None, "act2")),
    "timm.models.repvit.RepVitStem": (Chain("conv1", None, "act1"),),
    "timm.models.repvit.RepVitMlp": (Chain("conv1", None, "act"),),
    "timm.models.levit.LevitMlp": (Chain("ln1", None, "act"),),  # conv LeViT (LinearNorm ln1: no conv, left)
    "timm.models.iformer.Stem": (Chain("conv1", None, "act1"), Chain("conv2", None, "act2")),
    "timm.models.efficientvim.ConvLayer2d": (Chain("conv", "norm", "act"),),  # norm / act may be None
    "timm.models.cpubone.ConvLayer": (Chain("conv", "norm", "act"),),  # norm / act may be None
    "timm.models.lowformer.ConvLayer": (Chain("conv", "norm", "act"),),
    # model stems (and Xception's exit convs) in the model's own forward_features
    "timm.models.ghostnet.GhostNet": (Chain("conv_stem", "bn1", "act1"),),
    "timm.models.repghost.RepGhostNet": (Chain("conv_stem", "bn1", "act1"),),
    "timm.models.hrnet.HighResolutionNet": (Chain("conv1", "bn1", "act1"), Chain("conv2", "bn2", "act2")),
    "timm.models.xception.Xception": tuple(Chain(f"conv{i}", f"bn{i}", f"act{i}") for i in (1, 2, 3, 4)),
    "timm.models.dla.DlaRoot": (Chain("conv", "bn", "relu", unless="shortcut"),),
}

# Modules that are not conv-norm Sequentials but whose forward ends with conv -> BN [-> act], by
# qualname -> (conv, BN, trailing act or None) attribute names: the BN's output is the module's
# output when the trailing act is an Identity.
_ENDS_WITH_CONV_NORM = {
    "timm.models.levit.ConvNorm": ("linear", "bn", None),  # bn(linear(x))
    "timm.models.xception_aligned.SeparableConv2d": ("conv_pw", "bn_pw", "act_pw"),  # act_pw: often Identity
}


# Blocks whose forward runs conv -> BN with the BN feeding a residual add, the block's output or its
# own act (no training fusion needed, or done by the BN leaf rule): qualname -> (conv, BN) attribute
# names. With the chains above and the Sequential rule, these are the pairs folded at eval. Where
# the "BN" is an Identity (MobileNetV3's norm_head without head_norm) the conv runs alone on the
# eval path: nothing to fold, but PyTorch's conv on a channels_last 1x1 map reorders its weights
# every call.
_FOLD_PAIRS = {
    "timm.models._efficientnet_blocks.InvertedResidual": (("conv_pw", "bn1"), ("conv_pwl", "bn3")),
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": (("conv_pw", "bn2"),),
    "timm.models._efficientnet_blocks.EdgeResidual": (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
    "timm.models.efficientnet.EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "timm.models.mobilenetv3.MobileNetV3": (("conv_stem", "bn1"), ("conv_head", "norm_head")),
    "timm.models.resnet.BasicBlock": (("conv2", "bn2"),),
    "timm.models.resnet.Bottleneck": (("conv3", "bn3"),),
    "torchvision.models.resnet.BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "torchvision.models.resnet.Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}


def _is_batchnorm_module(m: Optional[nn.Module]) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, AbsorbedBatchNorm2d)


def fold_pairs(p, path, module, parent, name):
    """Records the conv -> BN pairs of :data:`_FOLD_PAIRS` for eval folding (a 1x1 conv followed
    by an Identity instead: the conv alone); fuses nothing."""
    for conv_name, bn_name in _FOLD_PAIRS.get(qualname(module), ()):
        conv, bn = module._modules.get(conv_name), module._modules.get(bn_name)
        if not isinstance(conv, nn.Conv2d):
            continue
        if _is_batchnorm_module(bn):
            p.pair(module, path, conv_name, bn_name)
        elif qualname(bn) == IDENTITY and tuple(conv.kernel_size) == (1, 1):
            p.pair(module, path, conv_name, None)
    return False


def conv_norm_parts(module: nn.Module) -> Optional[tuple]:
    """(conv name, BN name) of a module whose output is its BN's, fed by its conv: a conv-norm
    module (a plain Sequential of just a Conv2d and a BatchNorm: the ConvNorm / Conv2dNorm of
    EfficientViT-M, SHViT, TinyViT, LeViT stems, ...) or a class of ``_ENDS_WITH_CONV_NORM`` (its
    trailing act an Identity); None otherwise (also once fused)."""
    if has_hooks(module):
        return None
    names = _ENDS_WITH_CONV_NORM.get(qualname(module))
    if names is not None and names[2] is not None and act_name(module._modules.get(names[2])) != "identity":
        return None
    if names is None and _is_plain_sequential(module) and len(module._modules) == 2:
        names = (*module._modules, None)
    if names is None:
        return None
    conv, bn = (module._modules.get(n) for n in names[:2])
    if qualname(conv) != "torch.nn.modules.conv.Conv2d" or bn is None or not _is_bn(bn):
        return None
    return names[:2]


def _tried_as_depthwise(conv: nn.Module) -> bool:
    """A grouped conv goes to the depthwise fusion (which fuses it or reports why not: grouped,
    dilated, MixedConv2d, ...); a dense conv or any other module (a deep stem) only feeds the BN."""
    if isinstance(conv, nn.Conv2d):
        return conv.groups > 1
    return qualname(conv) == MIXED_CONV and all(getattr(c, "groups", 1) > 1 for c in conv.values())


def timm_conv_bn_blocks(p, path, module, parent, name):
    chains = _TIMM_CONV_BN_BLOCKS.get(qualname(module))
    if chains is None or has_hooks(module):
        return False
    for chain in chains:
        if chain.unless is not None and getattr(module, chain.unless, True):
            continue
        holder, holder_path, outer, conv_name, bn_name = module, path, None, chain.conv, chain.bn
        if chain.bn is None:  # chain.conv names a conv-norm module: fuse inside it, with our act
            holder = module._modules.get(chain.conv)
            parts = conv_norm_parts(holder) if holder is not None else None
            if parts is None:
                continue  # not conv -> BN (another configuration), or fused already
            holder_path, outer, (conv_name, bn_name) = join(path, chain.conv), Outer(module, path), parts
        conv = holder._modules.get(conv_name) if conv_name is not None else None  # pre-activation: no conv
        bn = holder._modules.get(bn_name)
        missing = (conv_name is not None and conv is None) or bn is None
        if missing or isinstance(bn, (BatchNormAct2d, AbsorbedBatchNorm2d, nn.Identity)):
            continue  # not this block's layout (no norm in this configuration), or already patched
        adjacent = act_name(module._modules.get(chain.between) if chain.between is not None else None) == "identity"
        if conv is not None and (adjacent or chain.between not in _BETWEEN_CONV_AND_BN):
            p.pair(holder, holder_path, conv_name, bn_name)
        act_module = module._modules.get(chain.act) if chain.act is not None else None
        act_module_name = chain.act if adjacent and act_module is not None and bn_act_of(bn) == "identity" \
            and act_name(act_module) not in (None, "identity") else None
        depthwise = conv is not None and _tried_as_depthwise(conv)
        if depthwise and not adjacent:
            between = module._modules[chain.between]
            p.skip(join(holder_path, conv_name), conv, f"{chain.between} ({type(between).__name__}) runs inside "
                                                       f"the {chain.conv} -> {chain.bn} chain: not fusable")
        elif depthwise and fuse_dw_bn(p, holder_path, holder, conv_name, bn_name, act_module_name, outer):
            continue
        # A dense conv, or a depthwise one left unfused (reported): BN + act still fuse.
        if act_module_name is not None and id(bn) not in p.claimed:
            fuse_bn(p, holder_path, holder, bn_name, act_module_name, outer)
        # else the BN applies its own act (or none): the leaf rules handle it
    return False


def _fused_bn_slots(module: nn.Module, names: tuple) -> list:
    """(parent, name, path below module) of each BN a shared-ReLU forward fuses: ``"bn1"``, or
    ``"bns.*"`` for every entry of the ModuleList ``bns`` (Res2Net's per-scale BNs)."""
    slots = []
    for name in names:
        if not name.endswith(".*"):
            slots.append((module, name, name))
            continue
        holder = module._modules.get(name[:-2])
        if not isinstance(holder, nn.ModuleList):
            return []
        slots += [(holder, key, f"{name[:-2]}.{key}") for key in holder._modules]
    return slots


def shared_relu_resnet_blocks(p, path, module, parent, name):
    """torchvision / legacy SENet / DLA / Res2Net ResNet blocks: one ReLU module after bn1, bn2 (...)
    and the residual add; torchvision BasicConv2d: F.relu after bn. Those BNs take the ReLU and the
    block runs a forward without it there (resnet_blocks.py), if the installed library's forward is
    the one that forward mirrors."""
    forward = SHARED_RELU_BLOCKS.get(qualname(module))
    if forward is None or has_hooks(module):
        return False
    if forward.relu_module and act_name(module._modules.get("relu")) != "relu":
        return False
    slots = _fused_bn_slots(module, forward.fused_bns)
    bns = [holder._modules.get(key) for holder, key, _ in slots]
    if not bns or any(bn is None or batchnorm_problem(bn) is not None or bn_act_of(bn) != "identity" for bn in bns):
        return False  # the leaf rules report these BNs
    reason = forward_mismatch(type(module), forward)
    if reason is not None:
        p.skip(path, module, reason)
        return False  # its BNs still get the leaf rules (lone: the ReLU order is unknown)
    for (holder, key, below), bn in zip(slots, bns):
        p.replace(holder, key, BatchNormAct2d.from_batchnorm(bn, "relu", backend=p.backend))
        how = "its shared relu runs after the add only" if forward.relu_module else "its F.relu is the BN's"
        p.record(join(path, below), type(bn).__name__, "BatchNormAct2d",
                 f"+ relu (act=relu; {type(module).__name__}'s forward swapped, {how})")
    p.swap_class(module, fused_class(type(module), forward))
    return False


def _is_plain_sequential(module: nn.Module) -> bool:
    """nn.Sequential or a subclass keeping its forward (torchvision Conv2dNormActivation, the
    ConvNorm / ConvBN Sequentials of RepViT, EfficientViT-M, StarNet, TinyViT, ...): children run in order."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def sequential_chains(p, path, module, parent, name):
    """In a Sequential (or a subclass that keeps its forward): dwconv, BN[, act] -> DWConvBNAct;
    BN, act -> BatchNormAct2d; a conv-norm module, act -> the same inside the conv-norm module."""
    if not _is_plain_sequential(module) or has_hooks(module):
        return False
    names = list(module._modules)
    i = 0
    while i < len(names):
        child = module._modules[names[i]]
        nxt = module._modules.get(names[i + 1]) if i + 1 < len(names) else None
        after = module._modules.get(names[i + 2]) if i + 2 < len(names) else None
        if isinstance(child, nn.Conv2d) and _is_batchnorm_module(nxt):
            p.pair(module, path, names[i], names[i + 1])
        if isinstance(child, nn.Conv2d) and child.groups > 1 and nxt is not None and _is_bn(nxt):
            act_child = names[i + 2] if after is not None and act_name(after) not in (None, "identity") else None
            if fuse_dw_bn(p, path, module, names[i], names[i + 1], act_child):
                i += 3 if act_child else 2
                continue
        if _is_bn(child) and nxt is not None and act_name(nxt) not in (None, "identity") and \
                bn_act_of(child) == "identity":
            if fuse_bn(p, path, module, names[i], names[i + 1]):
                i += 2
                continue
        parts = conv_norm_parts(child) if nxt is not None and act_name(nxt) not in (None, "identity") else None
        if parts is not None and bn_act_of(child._modules[parts[1]]) == "identity":
            # a conv-norm module, then an act: its conv (+ BN) fuse with the act one level up
            inner, outer = join(path, names[i]), Outer(module, path)
            conv_name, bn_name = parts
            if (_tried_as_depthwise(child._modules[conv_name])
                    and fuse_dw_bn(p, inner, child, conv_name, bn_name, names[i + 1], outer)) \
                    or fuse_bn(p, inner, child, bn_name, names[i + 1], outer):
                i += 2
                continue
        i += 1
    return False


# ----------------------------------------------------------------------------- leaf rules

def batchnorm_leaf(p, path, module, parent, name):
    if parent is None or not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return False
    if isinstance(module, (BatchNormAct2d, AbsorbedBatchNorm2d)):
        return True
    fuse_bn(p, parent_path(path), parent, name)
    return True


def _se_gate_act(p, path, module, act_attr, gate_attr):
    act = act_name(getattr(module, act_attr))
    gate = gate_name(getattr(module, gate_attr))
    if act is None or gate is None:
        p.skip(path, module, f"unsupported SE activation / gate ({type(getattr(module, act_attr)).__name__}, "
                             f"{type(getattr(module, gate_attr)).__name__})")
    return act, gate


# SE modules with reduce conv -> act -> expand conv -> gate: qualname -> (conv names, act attr, gate attr)
_SE_LAYOUTS = {
    "timm.models._efficientnet_blocks.SqueezeExcite": (("conv_reduce", "conv_expand"), "act1", "gate"),
    "timm.layers.squeeze_excite.SEModule": (("fc1", "fc2"), "act", "gate"),
    "timm.models.senet.SEModule": (("fc1", "fc2"), "relu", "sigmoid"),  # legacy_seresnet*, legacy_senet154
    "torchvision.ops.misc.SqueezeExcitation": (("fc1", "fc2"), "activation", "scale_activation"),
    "fastblocks.zoo.layers.SqueezeExcite": (("fc1", "fc2"), "act", "gate"),
}
# 'Effective' SE (one C -> C conv, then gate): qualname -> (conv name, gate attr)
_EFFECTIVE_SE_LAYOUTS = {
    "timm.layers.squeeze_excite.EffectiveSEModule": ("fc", "gate"),
    "timm.models.hgnet.EseModule": ("conv", "sigmoid"),
}


def squeeze_excite_leaf(p, path, module, parent, name):
    key = qualname(module)
    if parent is None or (key not in _SE_LAYOUTS and key not in _EFFECTIVE_SE_LAYOUTS):
        return False
    if has_hooks(module):
        p.skip(path, module, "module has hooks")
        return True
    if getattr(module, "add_maxpool", False):
        p.skip(path, module, f"{type(module).__name__} with add_maxpool")
        return True
    if key in _EFFECTIVE_SE_LAYOUTS:
        return effective_se(p, path, module, parent, name, *_EFFECTIVE_SE_LAYOUTS[key])
    names, act_attr, gate_attr = _SE_LAYOUTS[key]
    act, gate = _se_gate_act(p, path, module, act_attr, gate_attr)
    if act is None or gate is None:
        return True
    reduce, expand = (module._modules[n] for n in names)
    problem = pointwise_problem(reduce) or pointwise_problem(expand)
    if problem is not None:
        p.skip(path, module, problem)
        return True
    if key == "timm.layers.squeeze_excite.SEModule" and act_name(module.bn) != "identity":
        if is_sync_batchnorm(module.bn):
            if batchnorm_problem(module.bn, sync_ok=True) is not None or bn_act_of(module.bn) != "identity":
                p.skip(path, module, "SE with an unsupported SyncBatchNorm inside")
                return True
            p.replace(module, "bn", SyncBatchNormAct2d.from_batchnorm(module.bn, "identity", backend=p.backend))
        new = SqueezeExciteWithNorm(reduce, module.bn, module.act, expand, gate, backend=p.backend)
        p.replace(parent, name, new)
        p.claim(module.bn, module.act)
        p.record(path, type(module).__name__, "SqueezeExciteWithNorm", f"(BN inside SE, gate={gate})")
        return True
    p.replace(parent, name, SqueezeExcite(reduce, expand, act, gate, names, backend=p.backend))
    p.claim(reduce, expand)
    p.record(path, type(module).__name__, "SqueezeExcite", f"(act={act}, gate={gate})")
    return True


def effective_se(p, path, module, parent, name, conv_name, gate_attr):
    """pool -> one C -> C conv -> gate -> scale; the scale is fused (EffectiveSqueezeExcite)."""
    conv, gate_module = module._modules[conv_name], module._modules[gate_attr]
    gate = gate_name(gate_module)
    if gate is None:
        p.skip(path, module, f"unsupported SE gate ({type(gate_module).__name__})")
        return True
    problem = pointwise_problem(conv)
    if problem is not None:
        p.skip(path, module, problem)
        return True
    p.replace(parent, name, EffectiveSqueezeExcite(conv, gate, conv_name, backend=p.backend))
    p.claim(conv)
    p.record(path, type(module).__name__, "EffectiveSqueezeExcite", f"(gate={gate})")
    return True


def eca_leaf(p, path, module, parent, name):
    key = qualname(module)
    if parent is None or key not in ("timm.layers.eca.EcaModule", "fastblocks.zoo.layers.EcaLayer",
                                     "timm.layers.eca.CecaModule"):
        return False
    if key == "timm.layers.eca.CecaModule":
        p.skip(path, module, "circular-padded ECA (CecaModule) is not fused")
        return True
    if has_hooks(module):
        p.skip(path, module, "module has hooks")
        return True
    gate = "sigmoid" if key == "fastblocks.zoo.layers.EcaLayer" else gate_name(module.gate)
    conv = module.conv
    if getattr(module, "conv2", None) is not None or gate is None or conv.bias is not None or \
            conv.padding[0] != (conv.kernel_size[0] - 1) // 2 or conv.padding_mode != "zeros":
        p.skip(path, module, "ECA variant (MLP, bias, padding or gate) without a fused equivalent")
        return True
    p.replace(parent, name, EfficientChannelAttention(conv, gate, backend=p.backend))
    p.claim(conv)
    p.record(path, type(module).__name__, "EfficientChannelAttention", f"(k={conv.kernel_size[0]})")
    return True


def activation_leaf(p, path, module, parent, name):
    if parent is None or isinstance(module, MemoryEfficientAct):
        return False
    act = act_name(module)
    if act not in STANDALONE_GAIN:
        return False
    p.replace(parent, name, MemoryEfficientAct(act, backend=p.backend))
    p.record(path, type(module).__name__, "MemoryEfficientAct", f"({act})")
    return True


RULES = [
    Rule("fold_pairs", "timm / torchvision",
         "conv -> BN pairs feeding a residual or a block's output (InvertedResidual conv_pwl + bn3, ...), "
         "folded at eval", fold_pairs),
    Rule("efficientnet_pytorch.MBConvBlock", "efficientnet_pytorch",
         "MBConvBlock: expand BN+swish, depthwise Conv2dStaticSamePadding+BN+swish, inline SE", efficientnet_pytorch_mbconv),
    Rule("efficientnet_pytorch.EfficientNet", "efficientnet_pytorch",
         "stem / head BN followed by the shared _swish", efficientnet_pytorch_stem_head),
    Rule("timm.conv_bn_blocks", "timm / torchvision",
         "DepthwiseSeparableConv / InvertedResidual / ConvNormAct: conv_dw (Conv2d or Conv2dSame) + BatchNormAct2d; "
         "HGNet ConvBNAct / aligned-Xception SeparableConv2d: conv + BatchNorm2d + act (depthwise: all three fused); "
         "timm ResNet stem and BasicBlock / Bottleneck bn1 + act1 (bn2 + act2); GhostBottleneck conv_dw + bn_dw; "
         "torchvision ResNet stem, DenseNet _DenseLayer norm1 + relu1, norm2 + relu2; MaxViT / CoAtNet MbConvBlock "
         "conv2_kxk + norm2; EfficientFormer ConvMlpWithNorm fc1 + norm1 + act; EfficientViT (MIT) / Next-ViT "
         "ConvNormAct, Next-ViT ConvAttention; ResNeSt bottleneck conv1 + bn1 and SplitAttn conv + bn0, fc1 + bn1",
         timm_conv_bn_blocks),
    Rule("resnet_shared_relu", "torchvision / timm",
         "torchvision ResNet BasicBlock / Bottleneck, legacy SENet, DLA, Res2Net blocks: bn1 (+ bn2, ...) + the "
         "shared relu; torchvision GoogLeNet / Inception BasicConv2d: bn + F.relu; block forward swapped",
         shared_relu_resnet_blocks),
    Rule("sequential", "torchvision / zoo / generic",
         "Sequential or a subclass keeping its forward (Conv2dNormActivation, RepViT / EfficientViT-M ConvNorm, ...): "
         "depthwise Conv2d, BatchNorm2d[, act]; BatchNorm2d, act", sequential_chains),
    Rule("batchnorm", "generic", "BatchNorm2d / timm BatchNormAct2d (act inside); SyncBatchNorm / timm "
         "SyncBatchNormAct (always, lone ones too)", batchnorm_leaf),
    Rule("squeeze_excite", "timm / torchvision / zoo",
         "timm SqueezeExcite, timm SEModule (+BN: ReXNet), timm legacy senet SEModule, timm EffectiveSEModule "
         "(VoVNet, RDNet) / HGNet EseModule, torchvision SqueezeExcitation, zoo SqueezeExcite",
         squeeze_excite_leaf),
    Rule("eca", "timm / zoo", "timm EcaModule, zoo EcaLayer", eca_leaf),
    Rule("activation", "generic", "standalone SiLU / Swish / Hardswish modules", activation_leaf),
]
