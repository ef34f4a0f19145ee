"""find_unfused_bn_act: BatchNorm -> activation pairs a model runs that fb.patch left unfused.

``fb.patch`` knows the forward order of Sequentials and of the blocks in its rules only; a BN whose
output goes straight into an activation module inside some other forward is invisible to it. This
runs the model once and watches the tensors: a BN module's output that reaches an activation
module unchanged (same tensor, not modified in place since) is such a pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..inference.fold import unfolded
from ..inference.modules import FoldedBatchNormMixin
from ..nn import MemoryEfficientAct
from .classify import act_name, describe_act, qualname
from .patcher import _check_model

# Activation modules watched besides those fastblocks fuses (act_name): the ones it cannot fuse,
# so the report says why.
_OTHER_ACTS = (nn.LeakyReLU, nn.GELU, nn.Mish, nn.ELU, nn.CELU, nn.SELU, nn.PReLU, nn.Tanh, nn.Softplus)


@dataclass(frozen=True)
class UnfusedPair:
    bn: str          # module path of the BatchNorm
    act: str         # module path of the activation its output goes to
    activation: str  # fastblocks' act name ("relu", "silu", ...), or what it is and why it is not fusable
    fusable: bool    # whether the kernels have this activation (a rule for the block would fuse it)


def _is_fastblocks(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] == "fastblocks"


def find_unfused_bn_act(model: nn.Module, *args: Any, **kwargs: Any) -> list:
    """Run ``model(*args, **kwargs)`` once (eval mode, no grad; the mode is restored, running stats
    are not touched) and return an :class:`UnfusedPair` for every BatchNorm module (not a fastblocks
    one) whose output an activation module receives unchanged: BN -> act pairs a patched model still
    runs unfused, in the order they ran. Use it on a patched model to see what ``fb.patch`` could not
    reach (the BN and act inside a forward its rules do not know), or on any model. Every BN output
    is kept alive until the forward ends (so tensor identity means what it says): use a small input."""
    _check_model(model)
    outputs: dict = {}  # id(tensor) -> (bn path, tensor, version at the BN's output)
    found: list = []
    handles = []

    def bn_hook(path):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = (path, output, output._version)
        return hook

    def act_hook(path, name, what):
        def hook(module, inputs):
            x = inputs[0] if inputs else None
            seen = outputs.get(id(x)) if isinstance(x, torch.Tensor) else None
            if seen is not None and seen[1] is x and seen[2] == x._version:
                found.append(UnfusedPair(seen[0], path, what, name is not None))
        return hook

    try:
        for path, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                # fastblocks' BNs are fused already, but for those only folded at eval
                if not _is_fastblocks(module) or isinstance(module, FoldedBatchNormMixin):
                    handles.append(module.register_forward_hook(bn_hook(path)))
                continue
            if module._modules or (_is_fastblocks(module) and not isinstance(module, MemoryEfficientAct)):
                continue  # leaves only (an activation is one), and of fastblocks' only its standalone act
            name = act_name(module)  # read before the hook goes on (a hooked module is not fused)
            if name == "identity":
                continue
            if name is not None or isinstance(module, _OTHER_ACTS) or "activation" in qualname(module):
                what = describe_act(module) if name is None else name
                handles.append(module.register_forward_pre_hook(act_hook(path, name, what)))
        training = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad(), unfolded():  # the BN and act modules must run to be seen
                model(*args, **kwargs)
        finally:
            for m, mode in training:
                m.training = mode
    finally:
        for handle in handles:
            handle.remove()
    return found
