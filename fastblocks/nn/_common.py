"""Helpers shared by the fused modules: BN call arguments, autocast, tensor sharing."""

from __future__ import annotations

import torch
from torch import nn


def bn_arguments(bn: nn.modules.batchnorm._BatchNorm, training: bool) -> dict:
    """The fused-op keyword arguments equivalent to ``bn.forward`` in the given mode.

    Mirrors nn.BatchNorm2d: counts ``num_batches_tracked`` (in place), momentum=None means a
    cumulative average, eval mode without running stats uses batch statistics.
    """
    factor = 0.0 if bn.momentum is None else bn.momentum
    if training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = training or (bn.running_mean is None and bn.running_var is None)
    track = not training or bn.track_running_stats
    return dict(bn_weight=bn.weight, bn_bias=bn.bias,
                running_mean=bn.running_mean if track else None,
                running_var=bn.running_var if track else None,
                training=use_batch_stats, momentum=factor, eps=bn.eps)


def autocast_input(x: torch.Tensor, *weights: torch.Tensor):
    """Cast x and conv weights like autocast would for F.conv2d (no-op outside autocast)."""
    device_type = x.device.type
    try:
        enabled = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if enabled else None
    except TypeError:  # older torch: no per-device query
        enabled = device_type == "cuda" and torch.is_autocast_enabled()
        dtype = torch.get_autocast_gpu_dtype() if enabled else None
    except RuntimeError:  # a device type autocast has no mode for (meta: shape inference)
        enabled = False
    if not enabled:
        return (x,) + weights
    return (x.to(dtype),) + tuple(w.to(dtype) if w is not None else None for w in weights)


def share_bn_tensors(dst: nn.modules.batchnorm._BatchNorm, src: nn.modules.batchnorm._BatchNorm) -> None:
    """Make ``dst`` hold exactly ``src``'s parameter and buffer objects (same names, same tensors)."""
    for name in ("weight", "bias"):
        dst._parameters[name] = src._parameters.get(name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        dst._buffers[name] = src._buffers.get(name)
    for name in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
        setattr(dst, name, getattr(src, name))


def has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None) or module._state_dict_hooks
                or module._load_state_dict_pre_hooks)


class NotScriptable:
    """Mixin of the fused modules: ``torch.jit.script`` of a model holding one raises a clear
    TypeError (their forwards reach the custom ops through Python dispatch, which TorchScript cannot
    compile) instead of TorchScript's error about variadic arguments somewhere inside."""

    def __prepare_scriptable__(self):  # called by torch.jit.script on every module before compiling
        raise TypeError(
            f"torch.jit.script cannot compile fastblocks' {type(self).__name__}: script an unpatched copy "
            f"(fastblocks.unpatch(copy.deepcopy(model))), or use torch.jit.trace, torch.export or torch.compile, "
            f"which run the fused ops")
