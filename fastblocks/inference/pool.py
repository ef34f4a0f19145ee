"""Global average pools of a patched model (timm ``SelectAdaptivePool2d`` with ``pool_type="avg"``,
``nn.AdaptiveAvgPool2d(1)``): on a channels_last float32 CPU map, when no gradient is needed, one
C++ call (``fastblocks_kernels::channel_pool``, the squeeze-and-excitation ops' channel means)
instead of PyTorch's pool and flatten modules. A batch-1 pool of a 7x7x1280 head map took 30 us through timm's module (15 us in
``adaptive_avg_pool2d`` itself) for 62k additions. Anything else, or a hook on the pool's inner
modules, runs the module's own forward."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..patch.classify import qualname
from .blocks import global_state_ok, kernel_input, modules_ok

POOL_ATTR = "_fastblocks_global_pool"  # True: the pool flattens to (N, C); False: (N, C, 1, 1)
_TIMM_POOL = "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d"


def _is_global(output_size) -> bool:
    return output_size == 1 or tuple(output_size) == (1, 1)


def _flattens(module: nn.Module) -> Optional[bool]:
    """Whether the global average pool ``module`` returns (N, C) (True) or (N, C, 1, 1) (False);
    None where it is not one this module takes."""
    if type(module) is nn.AdaptiveAvgPool2d:
        return False if _is_global(module.output_size) else None
    if qualname(module) != _TIMM_POOL or getattr(module, "pool_type", None) != "avg":
        return None
    pool, flatten = module._modules.get("pool"), module._modules.get("flatten")
    if type(pool) is not nn.AdaptiveAvgPool2d or not _is_global(pool.output_size):
        return None
    if type(flatten) is nn.Identity:
        return False
    if type(flatten) is nn.Flatten and flatten.start_dim == 1 and flatten.end_dim == -1:
        return True
    return None


class GlobalPoolMixin:
    """Forward of a global average pool: the C++ pool where it serves, else the module's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad) and kernel_input(x) and global_state_ok() and \
                modules_ok(list(self._modules.values())):
            y = torch.ops.fastblocks_kernels.channel_pool(x)
            return y if self.__dict__[POOL_ATTR] else y.view(y.shape[0], y.shape[1], 1, 1)
        return super().forward(x)


def install_global_pools(patcher) -> int:
    """Give every global average pool of the model the C++ forward; returns how many."""
    from ..patch.patcher import fused_class

    count, inner = 0, set()
    for module in list(patcher.model.modules()):
        flattens = _flattens(module)
        if flattens is None or POOL_ATTR in module.__dict__ or id(module) in inner:
            continue
        inner.update(id(m) for m in module.modules())  # a timm pool's own AdaptiveAvgPool2d
        patcher.swap_class(module, fused_class(type(module), GlobalPoolMixin))
        patcher.set_attr(module, POOL_ATTR, flattens)
        count += 1
    return count
