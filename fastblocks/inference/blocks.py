"""Whole-block eval forwards of inverted-residual blocks once patched (timm ``InvertedResidual`` /
``DepthwiseSeparableConv``, torchvision ``MBConv``, timm ReXNet ``LinearBottleneck``): float32
channels_last CPU input runs the block in one C++ call (``fastblocks_kernels::mbconv_eval``);
otherwise, for the MBConv layouts, one Python function runs the folded 1x1 conv, the fused
depthwise conv, the SE and the folded projection conv with the residual add fused, instead of ~10
module calls and a separate add (a ReXNet block then runs its own forward). Installed by ``patch``
where every part is folded; otherwise (training, gradients needed, hooks) the block's own forward
runs."""

from __future__ import annotations

import itertools
import operator
import sys
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

from .._act import ACTIVATIONS
from ..nn import AbsorbedBatchNorm2d, DWConvBNAct, SqueezeExcite, SqueezeExciteWithNorm
from ..patch.classify import IDENTITY, act_name, qualname
from .conv_fusion import eval_kernels_available
from .fold import eval_state_ok, fold_active, fold_batchnorm
from .modules import FOLD_ATTR
from .se import se_gate

BLOCK_ATTR = "_fastblocks_block_eval"
_DROP_PATH = (IDENTITY, "timm.layers.drop.DropPath")  # identities at eval
_TORCHVISION_MBCONV = "torchvision.models.efficientnet.MBConv"
_STOCHASTIC_DEPTH = "torchvision.ops.stochastic_depth.StochasticDepth"  # the identity at eval
# timm qualname -> (1x1 expansion conv or None, depthwise conv, its absorbed BN, projection conv)
_TIMM_LAYOUTS = {
    "timm.models._efficientnet_blocks.InvertedResidual": ("conv_pw", "conv_dw", "bn2", "conv_pwl"),
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": (None, "conv_dw", "bn1", "conv_pw"),
}
_REXNET = "timm.models.rexnet.LinearBottleneck"
_LAYOUTS = set(_TIMM_LAYOUTS) | {_TORCHVISION_MBCONV, _REXNET}
# C-level attribute reads over the block's modules: the whole-block forward checks them every call
_TRAINING = operator.attrgetter("training")
_FORWARD_HOOKS = operator.attrgetter("_forward_hooks")
_FORWARD_PRE_HOOKS = operator.attrgetter("_forward_pre_hooks")
_CHANNELS_LAST = torch.channels_last


_VERSION = operator.attrgetter("_version")
_DATA_PTR = torch.Tensor.data_ptr
_EPS = operator.attrgetter("eps")
_NONES = itertools.repeat(None)


def kernel_input(x: torch.Tensor) -> bool:
    """x is what the whole-block op takes: a 4-D channels_last float32 CPU tensor."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
            and x.is_contiguous(memory_format=_CHANNELS_LAST))


def global_state_ok() -> bool:
    """The compiled kernels exist, no global module hook is registered, plain eager execution and
    no autocast on the CPU (:func:`~fastblocks.inference.fold.eval_state_ok`)."""
    if not eval_kernels_available() or _module_globals._global_forward_hooks or \
            _module_globals._global_forward_pre_hooks:
        return False
    return eval_state_ok("cpu")  # x's device; the arguments hold CPU tensors only


def modules_ok(modules: list) -> bool:
    """Every module is in eval mode and has no forward (pre-)hook that a whole-block call would skip."""
    return not (any(map(_TRAINING, modules)) or any(map(_FORWARD_HOOKS, modules))
                or any(map(_FORWARD_PRE_HOOKS, modules)))


def _runner_for(args: Optional[tuple], slots: tuple, batchnorms: list):
    """A ``fastblocks._C.MBConvRunner`` holding ``args`` (mbconv_eval's after x) and checking the
    tensors of ``slots`` ((dicts, names)) and the eps of ``batchnorms`` in C++ every call; None
    without arguments or where the extension has no runner."""
    if args is None:
        return None
    runner_class = getattr(sys.modules.get("fastblocks._C"), "MBConvRunner", None)
    if runner_class is None:
        return None
    return runner_class(args, tuple(zip(*slots)), tuple(batchnorms))


class BlockEval:
    """The eval forward of one inverted-residual block (see the module docstring).
    ``act_after_dw``: the canonical activation of a separate module after the depthwise conv and
    the SE (ReXNet's ``act_dw``; the SE then gates the depthwise output before it), else None.
    A residual adds x to the first C_in output channels (all of them but in ReXNet)."""

    def __init__(self, block: nn.Module, expand: Optional[nn.Module], dw: nn.Module, se: Optional[nn.Module],
                 project: nn.Module, residual: bool, act_after_dw: Optional[str] = None) -> None:
        self.expand = None if expand is None else expand.__dict__[FOLD_ATTR]
        self.dw, self.se, self.residual = dw, se, residual
        self.act_after_dw = act_after_dw
        self.project = project.__dict__[FOLD_ATTR]
        self.modules = list(block.modules())[1:]  # the block's own hooks ran in its __call__ already
        self.batchnorms = [f.bn for f in (self.expand, self.project) if f is not None] + [dw.batchnorm]
        if type(se) is SqueezeExciteWithNorm:
            self.batchnorms.append(se.bn)
        self._key, self._args = None, None
        self._slots = self._source_slots()
        self._present, self._absent = self._slots, ((), ())  # the slots split at the last rebuild
        self._op = None
        self._runner = None  # the C++ call with its checks (fastblocks._C.MBConvRunner), built with _args

    def active(self) -> bool:
        """Every part runs folded now and no forward hook would be skipped (the Python path serves
        the MBConv layouts only)."""
        if self.act_after_dw is not None:
            return False
        if _module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks:
            return False
        if any(m._forward_hooks or m._forward_pre_hooks for m in self.modules):
            return False
        folds = (self.project,) if self.expand is None else (self.expand, self.project)
        return all(f.active() for f in folds) and fold_active(self.dw, self.dw.batchnorm)

    def _se_modules(self) -> list:
        """The SE's modules whose tensors the whole-block call reads: reduce conv (, BN), expand conv."""
        if self.se is None:
            return []
        if type(self.se) is SqueezeExciteWithNorm:
            return [self.se.fc1, self.se.bn, self.se.fc2]
        return [self.se._modules[name] for name in self.se.names]

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
        for module in self._se_modules():
            dicts += [module._parameters, module._parameters]
            names += ["weight", "bias"]
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                dicts += [module._buffers, module._buffers]
                names += ["running_mean", "running_var"]
        return tuple(dicts), tuple(names)

    def _split_slots(self) -> tuple:
        """(present, absent): the source slots holding a tensor now and those holding None, each
        as (dicts, names)."""
        dicts, names = self._slots
        split = ([], [])
        for d, n in zip(dicts, names):
            split[d.get(n) is None].append((d, n))
        return tuple(tuple(zip(*part)) or ((), ()) for part in split)

    def _key_of(self, present: list) -> Optional[tuple]:
        """The versions and data pointers of ``present`` (the tensors of the present slots) and the
        BatchNorms' eps; None when a slot changed between tensor and None since the last rebuild."""
        if not all(map(operator.is_, map(dict.get, *self._absent), _NONES)):
            return None
        try:
            return (*map(_VERSION, present), *map(_DATA_PTR, present), *map(_EPS, self.batchnorms))
        except (AttributeError, TypeError):  # a present slot holds None now
            return None

    def _se_args(self) -> Optional[tuple]:
        """(w1 (R, C), b1, w2 (C, R), b2, act, gate) of the SE for ``mbconv_eval``, a BatchNorm
        inside folded into w1 / b1; None where a weight is not float32."""
        if self.se is None:
            return (None, None, None, None, "identity", "sigmoid")
        if type(self.se) is SqueezeExciteWithNorm:
            reduce, excite, bn = self.se.fc1, self.se.fc2, self.se.bn
            act, gate = act_name(self.se.act), self.se.gate_name
        else:
            reduce, excite = (self.se._modules[name] for name in self.se.names)
            bn, act, gate = None, self.se.act, self.se.gate
        if reduce.weight.dtype != torch.float32 or excite.weight.dtype != torch.float32:
            return None
        r, c = reduce.weight.shape[0], reduce.weight.shape[1]
        with torch.no_grad():
            w1, b1 = reduce.weight, reduce.bias
            if bn is not None:
                w1, b1 = fold_batchnorm(w1, b1, bn)
            return (w1.reshape(r, c).contiguous(), b1, excite.weight.reshape(c, r).contiguous(), excite.bias, act, gate)

    def _whole_block_args(self) -> Optional[tuple]:
        """The arguments of ``fastblocks_kernels::mbconv_eval`` after x, from the folded parts
        (None where a part cannot take it)."""
        if any(t is not None and t.device.type != "cpu" for t in map(dict.get, *self._slots)):
            return None  # the op reads CPU tensors; the call checks only x's device
        plan = self.dw.eval_plan()
        project = self.project.runner()
        expand = None if self.expand is None else self.expand.runner()
        if plan is None or not plan.eval_kernel_ok or not project.gemm or (expand is not None and not expand.gemm):
            return None
        se_args = self._se_args()
        if se_args is None:
            return None
        dw = plan.fold.runner()
        k = self.dw.weight.shape[-1]
        p = k // 2 if plan.padding_mode == "same" else plan.padding
        dw_act, gate_act = self.dw.act, "identity"
        if self.act_after_dw is not None:  # after the gate where there is an SE, else fused into the dw conv
            dw_act, gate_act = (self.act_after_dw, "identity") if self.se is None else ("identity", self.act_after_dw)
        return (((None, None, "identity") if expand is None else (expand.panels, expand.bias, expand.act))
                + (dw.depthwise_taps(), dw.bias, k, self.dw.stride, [p, p, p, p], dw_act) + se_args
                + (gate_act, project.panels, project.bias, self.residual))

    def whole_block(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The block in one C++ call (``fastblocks_kernels::mbconv_eval``) where it serves: float32
        channels_last CPU input, eval mode, plain eager, nothing needing a gradient, no hooks. The
        arguments are cached and rebuilt when any source tensor changed (version, storage) or a
        BatchNorm's eps did. None where it does not serve (the caller then checks the slow path)."""
        if not (global_state_ok() and modules_ok(self.modules)):
            return None
        return self.run(x)

    def run(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``whole_block`` once the caller checked the global state and the modules: the C++ runner
        where its checks pass, else the arguments checked (rebuilt) here; None where the op does
        not serve x."""
        runner = self._runner
        if runner is not None:
            y = runner(x)
            if y is not None:
                return y
        if not kernel_input(x):
            return None
        args = self.current_args(x.requires_grad)
        if args is None:
            return None
        if runner is not None and runner is self._runner:
            # the runner saw a change the argument key does not (a slot refilled with the same tensor)
            self._runner = _runner_for(args, self._slots, self.batchnorms)
        return self._op(x, *args)

    def current_args(self, input_requires_grad: bool) -> Optional[tuple]:
        """The cached arguments after x (rebuilt where a source changed, ``_op`` resolved), or None
        where the whole-block call does not serve: a gradient is needed, or a part cannot take it.
        The caller checked x, the global state and the modules (:func:`kernel_input`,
        :func:`global_state_ok`, :func:`modules_ok`)."""
        present = list(map(dict.get, *self._present))
        key = self._key_of(present)
        if key is None or key != self._key:
            self._present, self._absent = self._split_slots()
            present = list(map(dict.get, *self._present))
            self._args = self._whole_block_args()
            self._key = self._key_of(present)
            self._runner = _runner_for(self._args, self._slots, self.batchnorms)
            if self._op is None:
                self._op = torch.ops.fastblocks_kernels.mbconv_eval.default  # the overload, resolved once
        if torch.is_grad_enabled() and (input_requires_grad or any(t.requires_grad for t in present)):
            return None
        return self._args

    def __getstate__(self) -> dict:  # pickles and deep copies never carry the cached arguments
        state = dict(self.__dict__)
        state["_key"], state["_args"], state["_op"], state["_runner"] = None, None, None, None
        return state

    def __setstate__(self, state: dict) -> None:  # plans pickled before these attributes existed
        state.setdefault("act_after_dw", None)
        state.setdefault("_op", None)
        state.setdefault("_runner", None)
        state.setdefault("_present", state["_slots"])
        state.setdefault("_absent", ((), ()))
        self.__dict__.update(state)

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
        # The gate scales the projection's weights: per tile inside the channels_last kernel, else
        # as a scaled copy of the weight where it holds fewer numbers than z.
        if runner.gemm_ready(z, residual) and (z.is_contiguous(memory_format=_CHANNELS_LAST)
                                               or runner.weight.shape[0] <= z.shape[2] * z.shape[3]):
            return runner(z, residual, in_scale=gate)
        if z.requires_grad and torch.is_grad_enabled():
            z = z * gate.view(gate.shape[0], gate.shape[1], 1, 1)
        else:
            z = z.mul_(gate.view(gate.shape[0], gate.shape[1], 1, 1))
        return runner(z, residual)


class BlockParts(NamedTuple):
    """The modules of an inverted-residual block that :class:`BlockEval` runs."""
    expand: Optional[nn.Module]  # 1x1 expansion conv, None without expansion
    dw: nn.Module  # depthwise conv (DWConvBNAct once fused)
    dw_bn: nn.Module  # its BatchNorm (absorbed once fused)
    se: Optional[nn.Module]
    project: nn.Module  # 1x1 projection conv
    residual: bool
    act_after_dw: Optional[str] = None  # an activation module after the depthwise conv and SE (ReXNet)


def _timm_parts(block: nn.Module):
    expand_name, dw_name, dw_bn_name, project_name = _TIMM_LAYOUTS[qualname(block)]
    parts = block._modules
    if parts.get("conv_s2d") is not None:
        return "space-to-depth stem"
    if qualname(parts.get("aa")) != IDENTITY:
        return "anti-aliasing"
    if getattr(block, "has_skip", False) and qualname(parts.get("drop_path")) not in _DROP_PATH:
        return "unknown drop path"
    se = parts.get("se")
    if qualname(se) != IDENTITY and type(se) is not SqueezeExcite:
        return "SE not fused"
    return BlockParts(parts.get(expand_name) if expand_name else None, parts.get(dw_name), parts.get(dw_bn_name),
                      se if type(se) is SqueezeExcite else None, parts.get(project_name),
                      bool(getattr(block, "has_skip", False)))


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
    if any(qualname(m) != IDENTITY for m in (first[-1],) + ((first[2],) if expand is not None else ())):
        return "activation not fused"
    return BlockParts(expand, dw, dw_bn, layers[-2], layers[-1][0], bool(block.use_res_connect))


def _rexnet_parts(block: nn.Module):
    """ReXNet LinearBottleneck: [conv_exp ConvNormAct] -> conv_dw ConvNormAct (no act) -> [SE with
    a BN inside] -> act_dw -> conv_pwl ConvNormAct; the input added to the first C_in channels."""
    parts = block._modules
    if block.drop_path is not None and qualname(block.drop_path) not in _DROP_PATH:
        return "unknown drop path"
    cnas = [parts.get(name) for name in ("conv_exp", "conv_dw", "conv_pwl")]
    if any(c is not None and c._modules.get("aa") is not None and qualname(c._modules["aa"]) != IDENTITY
           for c in cnas):
        return "anti-aliasing"
    exp, dw_cna, pwl = cnas
    se = parts.get("se")
    if se is not None and type(se) is not SqueezeExciteWithNorm:
        return "SE not fused"
    if se is not None and (act_name(se.act) is None or se.bn.running_mean is None or se.bn.running_var is None):
        return "SE activation unknown or its BatchNorm without running statistics"
    act = act_name(parts.get("act_dw"))
    if act is None or act not in ACTIVATIONS:  # the kernels' activation set
        return "activation after the depthwise conv not fused"
    dw = dw_cna._modules.get("conv")
    if isinstance(dw, DWConvBNAct) and dw.act != "identity":
        return "depthwise conv with its own activation"
    return BlockParts(None if exp is None else exp._modules.get("conv"), dw, dw_cna._modules.get("bn"), se,
                      pwl._modules.get("conv"), bool(block.use_shortcut), act)


def _parts(block: nn.Module):
    """The :class:`BlockParts` of a known block, or why it cannot run :class:`BlockEval`."""
    name = qualname(block)
    if name == _TORCHVISION_MBCONV:
        parts = _torchvision_parts(block)
    elif name == _REXNET:
        parts = _rexnet_parts(block)
    else:
        parts = _timm_parts(block)
    if isinstance(parts, str):
        return parts
    expand, dw, dw_bn, project = parts.expand, parts.dw, parts.dw_bn, parts.project
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
    p = _parts(block)
    return BlockEval(block, p.expand, p.dw, p.se, p.project, p.residual, p.act_after_dw)


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
