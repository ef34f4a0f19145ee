"""Op-level benchmark cases derived from real models (no hard-coded shape lists that can drift).

Each model is built, patched with ``fastblocks.patch`` and run once at batch 1; a pre-hook on every
fused module records the module and its input shape. A case is one distinct (module config, input
shape); the benchmark then runs a copy of that module at the requested batch size with each
backend set on it (``module.backend = name``), so every column runs the same layer with the same
parameters and inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

import fastblocks as fb
from fastblocks.nn import (BatchNormAct2d, DWConvBNAct, EffectiveSqueezeExcite, EfficientChannelAttention,
                           MemoryEfficientAct, SqueezeExcite, SqueezeExciteWithNorm)

# Models whose layers give the op shapes. timm names, plus "zoo:<name>" for fastblocks.zoo (and
# "torchvision:<name>" for torchvision.models, see build_model).
OP_MODELS = ("efficientnet_b0", "mobilenetv2_100", "mobilenetv3_large_100", "rexnet_100", "zoo:eca_mobilenet_v2")
QUICK_OP_MODELS = ("efficientnet_b0",)
MODEL_RESOLUTION = 224

# fused module class -> op name
OP_OF = {
    DWConvBNAct: "dwconv_bn_act",
    BatchNormAct2d: "bn_act",
    SqueezeExcite: "squeeze_excite",
    SqueezeExciteWithNorm: "gate_scale",
    EffectiveSqueezeExcite: "gate_scale",
    EfficientChannelAttention: "eca",
    MemoryEfficientAct: "activation",
}
OPS = tuple(dict.fromkeys(OP_OF.values()))


def op_of(module: nn.Module) -> Optional[str]:
    """The op a fused module runs, None for other modules. By class hierarchy: ``fb.patch`` may
    replace a module with a subclass of the fused class (mixing in the original's behaviour)."""
    return next((OP_OF[cls] for cls in type(module).__mro__ if cls in OP_OF), None)


def build_model(name: str, num_classes: int = 1000) -> nn.Module:
    """A randomly initialised model by timm name, ``zoo:<name>`` (fastblocks.zoo) or
    ``torchvision:<name>`` (torchvision.models, no weights)."""
    if name.startswith("zoo:"):
        from fastblocks import zoo

        return zoo.create(name[4:], num_classes=num_classes)
    if name.startswith("torchvision:"):
        import torchvision

        return torchvision.models.get_model(name[len("torchvision:"):], weights=None, num_classes=num_classes)
    import timm

    return timm.create_model(name, num_classes=num_classes)


@dataclass
class OpCase:
    op: str
    model: str
    path: str  # module path in the patched model (first occurrence)
    module: nn.Module = field(repr=False)
    shape: tuple  # (C, H, W) of the input
    config: str  # the module's extra_repr and kernel size etc., for the table
    also_in: list = field(default_factory=list)  # other (model, path) with the same config and shape

    @property
    def label(self) -> str:
        c, h, w = self.shape
        return f"{self.op} c{c}@{h}x{w} {self.config}"

    def instantiate(self, device: str, dtype: torch.dtype) -> nn.Module:
        """A fresh copy of the module on ``device``: parameters in ``dtype`` except BN tensors,
        which stay float32 as in mixed-precision training (fastblocks accepts float32 BN tensors
        with low-precision x, like cuDNN)."""
        m = copy.deepcopy(self.module).to(device)
        for mod in iter_with_bn(m):
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                continue
            for name, p in list(mod.named_parameters(recurse=False)):
                p.data = p.data.to(dtype)
        return m


def iter_with_bn(module: nn.Module):
    """The module, its submodules and the BN a DWConvBNAct references without owning it."""
    for m in module.modules():
        yield m
        if isinstance(m, DWConvBNAct) and "bn" not in m._modules:
            yield m.batchnorm


def to_float64(module: nn.Module) -> nn.Module:
    """``module.double()`` including the BN a DWConvBNAct references without owning it."""
    for m in iter_with_bn(module):
        m.double() if m is not module else None
    return module.double()


def set_training(module: nn.Module, training: bool) -> None:
    for m in iter_with_bn(module):
        m.training = training


def set_backend(module: nn.Module, name: str) -> None:
    for m in module.modules():
        if op_of(m) is not None:
            m.backend = name


def _config(module: nn.Module) -> str:
    if isinstance(module, DWConvBNAct):
        c, _, k, _ = module.weight.shape
        pad = "" if module.padding == "same" else f" pad={module.padding}"
        return f"k{k} s{module.stride}{pad} {module.act}"
    if isinstance(module, BatchNormAct2d):
        return module.act
    if isinstance(module, SqueezeExcite):
        reduce = getattr(module, module.names[0])
        return f"rd{reduce.out_channels} {module.act}/{module.gate}"
    if isinstance(module, SqueezeExciteWithNorm):
        return f"rd{module.fc1.out_channels} {module.gate_name}"
    if isinstance(module, EffectiveSqueezeExcite):
        return f"effective {module.gate_name}"
    if isinstance(module, EfficientChannelAttention):
        return f"k{module.conv.weight.shape[-1]} {module.gate}"
    if isinstance(module, MemoryEfficientAct):
        return module.act
    return module.extra_repr()


def collect_cases(models: tuple, ops: Optional[tuple] = None,
                  progress: Callable[[str], None] = lambda s: None) -> list[OpCase]:
    """Distinct op cases of the given models, in model order then forward order.

    ``activation`` cases are the stand-alone activations the patch leaves plus, for each fused
    BN+act whose act is silu / hardswish, the same act at that shape (what a memory-efficient
    Swish replaces when a model is not patched).
    """
    cases: dict[tuple, OpCase] = {}
    for model_name in models:
        progress(f"shapes of {model_name}")
        model = build_model(model_name).eval()
        fb.patch(model, backend="reference")
        seen: list[tuple[str, nn.Module, tuple]] = []
        names = {m: n for n, m in model.named_modules()}
        hooks = [m.register_forward_pre_hook(lambda mod, inp: seen.append((names[mod], mod, tuple(inp[0].shape[1:]))))
                 for m in model.modules() if op_of(m) is not None]
        with torch.no_grad():
            model(torch.randn(1, 3, MODEL_RESOLUTION, MODEL_RESOLUTION))
        for h in hooks:
            h.remove()
        for path, module, shape in seen:
            entries = [(op_of(module), module, _config(module))]
            if isinstance(module, BatchNormAct2d) and module.act in ("silu", "hardswish"):
                entries.append(("activation", MemoryEfficientAct(module.act), module.act))
            for op, mod, config in entries:
                if ops is not None and op not in ops:
                    continue
                key = (op, config, shape)
                if key in cases:
                    cases[key].also_in.append((model_name, path))
                else:
                    cases[key] = OpCase(op, model_name, path, mod, shape, config)
    return list(cases.values())


def select_op_cases(models: tuple, ops: Optional[tuple], limit: Optional[int] = None,
                    progress: Callable[[str], None] = lambda s: None) -> list[OpCase]:
    """The op benchmark's cases: :func:`collect_cases`, the first ``limit``, ordered by ``ops``
    (under a deadline the first ops named are the ones that get measured)."""
    cases = collect_cases(models, ops, progress=progress)
    cases = cases[:limit] if limit else cases
    if ops:
        cases.sort(key=lambda c: ops.index(c.op))
    return cases
