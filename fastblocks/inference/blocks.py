"""Whole-block eval forwards of MBConv blocks once patched (timm ``InvertedResidual`` /
``DepthwiseSeparableConv``, torchvision ``MBConv``): float32 channels_last CPU input runs the block
in one C++ call (``fastblocks_kernels::mbconv_eval``); otherwise one Python function runs the
folded 1x1 conv, the fused depthwise conv, the SE and the folded projection conv with the residual
add fused, instead of ~10 module calls and a separate add. Installed by ``patch`` where every part
is folded; otherwise (training, gradients needed, hooks) the block's own forward runs."""

from __future__ import annotations

import operator
from typing import Optional

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

from ..nn import AbsorbedBatchNorm2d, DWConvBNAct, SqueezeExcite
from ..patch.classify import qualname
from .conv_fusion import eval_kernels_available
from .fold import eval_state_ok, fold_active
from .modules import FOLD_ATTR
from .se import se_gate

BLOCK_ATTR = "_fastblocks_block_eval"
_IDENTITY = "torch.nn.modules.linear.Identity"
_DROP_PATH = ("torch.nn.modules.linear.Identity", "timm.layers.drop.DropPath")  # identities at eval
_TORCHVISION_MBCONV = "torchvision.models.efficientnet.MBConv"
_STOCHASTIC_DEPTH = "torchvision.ops.stochastic_depth.StochasticDepth"  # the identity at eval
# timm qualname -> (1x1 expansion conv or None, depthwise conv, its absorbed BN, projection conv)
_TIMM_LAYOUTS = {
    "timm.models._efficientnet_blocks.InvertedResidual": ("conv_pw", "conv_dw", "bn2", "conv_pwl"),
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": (None, "conv_dw", "bn1", "conv_pw"),
}
_LAYOUTS = set(_TIMM_LAYOUTS) | {_TORCHVISION_MBCONV}
# C-level attribute reads over the block's modules: the whole-block forward checks them every call
_TRAINING = operator.attrgetter("training")
_FORWARD_HOOKS = operator.attrgetter("_forward_hooks")
_FORWARD_PRE_HOOKS = operator.attrgetter("_forward_pre_hooks")
_CHANNELS_LAST = torch.channels_last


def _source_key(t: Optional[torch.Tensor]):
    return None if t is None else (t._version, t.data_ptr())


class BlockEval:
    """The eval forward of one MBConv block (see the module docstring)."""

    def __init__(self, block: nn.Module, expand: Optional[nn.Module], dw: nn.Module, se: Optional[nn.Module],
                 project: nn.Module, residual: bool) -> None:
        self.expand = None if expand is None else expand.__dict__[FOLD_ATTR]
        self.dw, self.se, self.residual = dw, se, residual
        self.project = project.__dict__[FOLD_ATTR]
        self.modules = list(block.modules())[1:]  # the block's own hooks ran in its __call__ already
        self.batchnorms = [f.bn for f in (self.expand, self.project) if f is not None] + [dw.batchnorm]
        self._key, self._args = None, None
        self._slots = self._source_slots()

    def active(self) -> bool:
        """Every part runs folded now and no forward hook would be skipped."""
        if _module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks:
            return False
        if any(m._forward_hooks or m._forward_pre_hooks for m in self.modules):
            return False
        folds = (self.project,) if self.expand is None else (self.expand, self.project)
        return all(f.active() for f in folds) and fold_active(self.dw, self.dw.batchnorm)

    def _source_slots(self) -> tuple:
        """(dicts, names) of every tensor the whole-block call reads besides x (folded or not): the
        modules' own ``_parameters`` / ``_buffers`` dicts, which assigning a new parameter or buffer
        updates in place, so ``map(dict.get, *slots)`` always reads the current tensors."""
        dicts, names = [], []
        convs_bns = [(f.conv, f.bn) for f in (self.expand, self.project) if f is not None]
        convs_bns.append((self.dw, self.dw.batchnorm))
        for conv, bn in convs_bns:
            dicts += [conv._parameters, conv._parameters, bn._parameters, bn._parameters, bn._buffers, bn._buffers]
            names += ["weight", "bias", "weight", "bias", "running_mean", "running_var"]
        if self.se is not None:
            for name in self.se.names:
                conv = self.se._modules[name]
                dicts += [conv._parameters, conv._parameters]
                names += ["weight", "bias"]
        return tuple(dicts), tuple(names)

    def _whole_block_args(self) -> Optional[tuple]:
        """The arguments of ``fastblocks_kernels::mbconv_eval`` after x, from the folded parts
        (None where a part cannot take it)."""
        plan = self.dw.eval_plan()
        project = self.project.runner()
        expand = None if self.expand is None else self.expand.runner()
        if plan is None or not plan.eval_kernel_ok or not project.gemm or (expand is not None and not expand.gemm):
            return None
        dw = plan.fold.runner()
        k = self.dw.weight.shape[-1]
        p = k // 2 if plan.padding_mode == "same" else plan.padding
        se_args = (None, None, None, None, "identity", "sigmoid")
        if self.se is not None:
            reduce, excite = (self.se._modules[name] for name in self.se.names)
            r, c = reduce.weight.shape[0], reduce.weight.shape[1]
            if reduce.weight.dtype != torch.float32 or excite.weight.dtype != torch.float32:
                return None
            with torch.no_grad():
                se_args = (reduce.weight.reshape(r, c).contiguous(), reduce.bias, excite.weight.reshape(c, r).contiguous(),
                           excite.bias, self.se.act, self.se.gate)
        return (((None, None, "identity") if expand is None else (expand.matrix_t, expand.bias, expand.act))
                + (dw.depthwise_taps(), dw.bias, k, self.dw.stride, [p, p, p, p], self.dw.act) + se_args
                + (project.matrix_t, project.bias, self.residual))

    def whole_block(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The block in one C++ call (``fastblocks_kernels::mbconv_eval``) where it serves: float32
        channels_last CPU input, eval mode, plain eager, nothing needing a gradient, no hooks. The
        arguments are cached and rebuilt when any source tensor changed (version, storage) or a
        BatchNorm's eps did. None where it does not serve (the caller then checks the slow path)."""
        if not (x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
                and x.is_contiguous(memory_format=_CHANNELS_LAST) and self._whole_block_ok()):
            return None
        sources = list(map(dict.get, *self._slots))
        if torch.is_grad_enabled() and (x.requires_grad or any(t is not None and t.requires_grad for t in sources)):
            return None
        key = list(map(_source_key, sources))
        key.append(tuple(m.eps for m in self.batchnorms))
        if key != self._key:
            self._args = self._whole_block_args()
            self._key = key
        if self._args is None:
            return None
        return torch.ops.fastblocks_kernels.mbconv_eval(x, *self._args)

    def __getstate__(self) -> dict:  # pickles and deep copies never carry the cached arguments
        state = dict(self.__dict__)
        state["_key"], state["_args"] = None, None
        return state

    def _whole_block_ok(self) -> bool:
        if not eval_kernels_available() or _module_globals._global_forward_hooks or \
                _module_globals._global_forward_pre_hooks:
            return False
        modules = self.modules
        if any(map(_TRAINING, modules)) or any(map(_FORWARD_HOOKS, modules)) or \
                any(map(_FORWARD_PRE_HOOKS, modules)):
            return False
        return eval_state_ok(self.dw.weight.device.type)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        residual = x if self.residual else None
        if self.se is None:
            return self.project(self.dw.forward(y), residual)
        plan = self.dw.eval_plan()
        z, pooled = (None, None) if plan is None else plan.with_pool(y)
        if z is None:
            z = self.dw.forward(y)
        gate = se_gate(self.se, z.mean((2, 3)) if pooled is None else pooled)
        runner = self.project.runner()
        # The gate scales the projection's weight rows where they are fewer numbers than z's.
        if runner.gemm_ready(z, residual) and runner.weight.shape[0] <= z.shape[2] * z.shape[3]:
            return runner(z, residual, in_scale=gate)
        if z.requires_grad and torch.is_grad_enabled():
            z = z * gate.view(gate.shape[0], gate.shape[1], 1, 1)
        else:
            z = z.mul_(gate.view(gate.shape[0], gate.shape[1], 1, 1))
        return runner(z, residual)


def _timm_parts(block: nn.Module):
    expand_name, dw_name, dw_bn_name, project_name = _TIMM_LAYOUTS[qualname(block)]
    parts = block._modules
    if parts.get("conv_s2d") is not None:
        return "space-to-depth stem"
    if qualname(parts.get("aa")) != _IDENTITY:
        return "anti-aliasing"
    if getattr(block, "has_skip", False) and qualname(parts.get("drop_path")) not in _DROP_PATH:
        return "unknown drop path"
    se = parts.get("se")
    if qualname(se) != _IDENTITY and type(se) is not SqueezeExcite:
        return "SE not fused"
    return (parts.get(expand_name) if expand_name else None, parts.get(dw_name), parts.get(dw_bn_name),
            se if type(se) is SqueezeExcite else None, parts.get(project_name), bool(getattr(block, "has_skip", False)))


def _torchvision_parts(block: nn.Module):
    """torchvision MBConv: block = [expand Conv2dNormActivation], depthwise Conv2dNormActivation,
    SqueezeExcitation, projection Conv2dNormActivation; the residual through StochasticDepth."""
    layers = list(block.block)
    if len(layers) not in (3, 4) or type(layers[-2]) is not SqueezeExcite:
        return "SE not fused" if len(layers) in (3, 4) else "unknown layout"
    if qualname(block.stochastic_depth) != _STOCHASTIC_DEPTH:
        return "unknown drop path"
    first = [m for m in layers[:-2] for m in m]  # (expand conv, bn, act)? (dw, absorbed bn, act)
    expand = first[0] if len(layers) == 4 else None
    dw, dw_bn = first[-3], first[-2]
    if any(qualname(m) != _IDENTITY for m in (first[-1],) + ((first[2],) if expand is not None else ())):
        return "activation not fused"
    return expand, dw, dw_bn, layers[-2], layers[-1][0], bool(block.use_res_connect)


def _parts(block: nn.Module):
    """(expand conv or None, depthwise conv, its BN, SqueezeExcite or None, projection conv,
    residual) of a known MBConv block, or why it cannot run :class:`BlockEval`."""
    parts = _torchvision_parts(block) if qualname(block) == _TORCHVISION_MBCONV else _timm_parts(block)
    if isinstance(parts, str):
        return parts
    expand, dw, dw_bn, _, project, _ = parts
    if not isinstance(dw, DWConvBNAct) or not isinstance(dw_bn, AbsorbedBatchNorm2d):
        return "depthwise conv not fused"
    for role, conv in (("expansion", expand), ("projection", project)):
        if conv is not None and conv.__dict__.get(FOLD_ATTR) is None:
            return f"{role} conv not folded"
    if project.__dict__[FOLD_ATTR].act != "identity":
        return "projection with an activation"
    return parts


def block_eval_problem(block: nn.Module) -> Optional[str]:
    """None when ``block`` (a layout of :data:`_LAYOUTS`) can run :class:`BlockEval`."""
    parts = _parts(block)
    return parts if isinstance(parts, str) else None


def build_block_eval(block: nn.Module) -> BlockEval:
    expand, dw, _, se, project, residual = _parts(block)
    return BlockEval(block, expand, dw, se, project, residual)


class BlockEvalMixin:
    """Block forward: :class:`BlockEval` when active, else the block's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.__dict__.get(BLOCK_ATTR)
        if plan is not None:
            y = plan.whole_block(x)
            if y is not None:
                return y
            if plan.active():
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
