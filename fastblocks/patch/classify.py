"""What a module is, as far as fusion is concerned: activation / gate names, depthwise-conv geometry,
plain-BatchNorm checks. Exact type matches only: subclasses may change forward, so they are skipped."""

from __future__ import annotations

from typing import Optional, Union

from torch import nn

from .._act import LEAKY_RELU_SLOPE
from ..nn._common import has_hooks


def qualname(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


IDENTITY = "torch.nn.modules.linear.Identity"  # qualname of nn.Identity

_ACTS = {
    "torch.nn.modules.activation.SiLU": "silu",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.ReLU6": "relu6",
    "torch.nn.modules.activation.Hardswish": "hardswish",
    IDENTITY: "identity",
    "timm.layers.activations.GELU": "gelu",
    "timm.layers.activations.GELUTanh": "gelu_tanh",
    "timm.layers.activations.Swish": "silu",
    "timm.layers.activations.HardSwish": "hardswish",
    "timm.layers.activations_me.SwishMe": "silu",
    "timm.layers.activations_me.HardSwishMe": "hardswish",
    "efficientnet_pytorch.utils.Swish": "silu",
    "efficientnet_pytorch.utils.MemoryEfficientSwish": "silu",
    "fastblocks.nn.activation.MemoryEfficientAct": None,  # resolved from the instance below
}

_GATES = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.Hardsigmoid": "hard_sigmoid",
    "timm.layers.activations.Sigmoid": "sigmoid",
    "timm.layers.activations.HardSigmoid": "hard_sigmoid",
    "timm.layers.activations_me.HardSigmoidMe": "hard_sigmoid",
}

# Activations worth replacing by a memory-efficient module when standing alone (ReLU-like ones
# already save a single tensor in PyTorch).
STANDALONE_GAIN = {"silu", "hardswish"}

BATCHNORMS = ("torch.nn.modules.batchnorm.BatchNorm2d", "timm.layers.norm_act.BatchNormAct2d")
# Synchronised BNs (nn.SyncBatchNorm.convert_sync_batchnorm / timm's convert_sync_batchnorm): fused into
# synchronising modules (fastblocks.ops.sync_batchnorm), lone ones too.
SYNC_BATCHNORMS = ("torch.nn.modules.batchnorm.SyncBatchNorm", "timm.layers.norm_act.SyncBatchNormAct")
_WITH_ACT = ("timm.layers.norm_act.BatchNormAct2d", "timm.layers.norm_act.SyncBatchNormAct")


def is_sync_batchnorm(bn: nn.Module) -> bool:
    return qualname(bn) in SYNC_BATCHNORMS


def act_name(module: Optional[nn.Module]) -> Optional[str]:
    """Canonical activation name of an activation module, None if not a known one."""
    if module is None:
        return "identity"
    key = qualname(module)
    if key == "fastblocks.nn.activation.MemoryEfficientAct":
        return module.act
    if has_hooks(module):
        return None
    if key == "torch.nn.modules.activation.LeakyReLU":
        return "leaky_relu" if module.negative_slope == LEAKY_RELU_SLOPE else None
    if key == "torch.nn.modules.activation.GELU":
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    return _ACTS.get(key)


def describe_act(module: nn.Module) -> str:
    """How a skip reason names an activation fastblocks does not fuse."""
    if qualname(module) == "torch.nn.modules.activation.LeakyReLU":
        return f"LeakyReLU(negative_slope={module.negative_slope}): the kernels fuse slope {LEAKY_RELU_SLOPE} only"
    return type(module).__name__


def gate_name(module: nn.Module) -> Optional[str]:
    return None if has_hooks(module) else _GATES.get(qualname(module))


def batchnorm_problem(bn: nn.Module, sync_ok: bool = False) -> Optional[str]:
    """None when ``bn`` is a BatchNorm2d (or timm BatchNormAct2d) fastblocks reproduces exactly;
    with ``sync_ok`` (rules building synchronising modules) also nn.SyncBatchNorm / timm
    SyncBatchNormAct."""
    key = qualname(bn)
    if key in SYNC_BATCHNORMS and not sync_ok:
        return "SyncBatchNorm inside a block fused as a whole: its BatchNorms are fused one by one instead"
    if "Frozen" in type(bn).__name__:
        return f"frozen BatchNorm ({type(bn).__name__}) is left as is"
    if key not in BATCHNORMS + SYNC_BATCHNORMS:
        return f"{type(bn).__name__} is not a plain BatchNorm2d (subclass or custom norm)"
    if has_hooks(bn):
        return "module has hooks"
    if key in _WITH_ACT:
        drop = getattr(bn, "drop", None)
        if drop is not None and act_name(drop) != "identity":
            return "BatchNormAct2d with dropout"
        if act_name(getattr(bn, "act", None)) is None:
            return f"BatchNormAct2d with an unsupported activation ({describe_act(bn.act)})"
    return None


def bn_act_of(bn: nn.Module) -> str:
    """The activation a BatchNorm module applies itself (timm BatchNormAct2d), else identity."""
    if qualname(bn) in _WITH_ACT:
        return act_name(getattr(bn, "act", None)) or "identity"
    return "identity"


def pointwise_problem(conv: nn.Module) -> Optional[str]:
    """None when ``conv`` is a plain 1x1 Conv2d (an SE excitation layer) the fused SE reproduces
    as a matrix product on the pooled input."""
    if qualname(conv) != "torch.nn.modules.conv.Conv2d":
        return f"{type(conv).__name__} is not a plain Conv2d"
    if has_hooks(conv):
        return "module has hooks"
    if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1) or \
            conv.padding not in ((0, 0), "valid", "same") or conv.dilation != (1, 1):
        return "excitation conv is not a 1x1 conv (groups 1, no padding)"
    return None


def depthwise_problem(conv: nn.Module) -> Optional[str]:
    """None when ``conv`` is a depthwise conv the fused op reproduces exactly."""
    key = qualname(conv)
    if key not in ("torch.nn.modules.conv.Conv2d", "timm.layers.conv2d_same.Conv2dSame",
                   "efficientnet_pytorch.utils.Conv2dStaticSamePadding",
                   "efficientnet_pytorch.utils.Conv2dDynamicSamePadding"):
        return f"{type(conv).__name__} is not a plain Conv2d"
    if has_hooks(conv):
        return "module has hooks"
    c = conv.in_channels
    if conv.groups != c or conv.out_channels != c:
        return "not depthwise (groups != channels or channel multiplier != 1)"
    k = conv.kernel_size
    if k[0] != k[1] or k[0] % 2 == 0:
        return f"kernel {k} is not square and odd"
    if conv.dilation != (1, 1):
        return f"dilation {conv.dilation} is not supported"
    if conv.stride[0] != conv.stride[1] or conv.stride[0] not in (1, 2):
        return f"stride {conv.stride} is not supported"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} is not supported"
    if conv_padding(conv) is None:
        return f"padding {conv.padding} has no fused equivalent"
    return None


MIXED_CONV = "timm.layers.mixed_conv2d.MixedConv2d"


def depthwise_parts(conv: nn.Module) -> tuple[list, Optional[str]]:
    """The depthwise convs that make up ``conv`` and None, or ([], the reason it cannot fuse).
    A plain depthwise conv is its own one part; a timm MixedConv2d (MixNet) with depthwise groups
    is its groups in channel order (its forward: split x by ``splits``, conv each, concatenate)."""
    if qualname(conv) != MIXED_CONV:
        reason = depthwise_problem(conv)
        return ([], reason) if reason else ([conv], None)
    if has_hooks(conv):
        return [], "module has hooks"
    parts = list(conv.values())
    if list(getattr(conv, "splits", ())) != [getattr(c, "in_channels", None) for c in parts]:
        return [], "MixedConv2d groups do not match its channel splits"
    for i, part in enumerate(parts):
        reason = depthwise_problem(part)
        if reason:
            return [], f"MixedConv2d group {i}: {reason}"
    if len({part.stride for part in parts}) != 1:
        return [], "MixedConv2d groups have different strides"
    return parts, None


def conv_padding(conv: nn.Module) -> Optional[Union[str, int]]:
    """The fused op's padding argument equivalent to the conv's own padding, or None."""
    key = qualname(conv)
    if key in ("timm.layers.conv2d_same.Conv2dSame", "efficientnet_pytorch.utils.Conv2dDynamicSamePadding"):
        return "tf_same"
    if key == "efficientnet_pytorch.utils.Conv2dStaticSamePadding":
        return "static"  # checked per input size by the block rule
    if isinstance(conv.padding, str):  # PyTorch "same" (stride 1, odd k: k//2 per side) / "valid"
        return {"same": "same", "valid": 0}.get(conv.padding)
    ph, pw = conv.padding
    return ph if ph == pw else None
