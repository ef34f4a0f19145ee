"""BatchNorm argument checks and the running-statistics update shared by dwconv_bn_act and bn_act."""

from __future__ import annotations

from typing import Optional

import torch

from .._validate import check_bool, check_optional, check_running_stats, scalar_float


def check_bn_args(x: torch.Tensor, channels: int, bn_weight, bn_bias, running_mean, running_var,
                  training, momentum, eps) -> tuple[bool, float, float]:
    """Validate the BN half of an op's arguments; returns (training, momentum, eps)."""
    check_optional(bn_weight, "bn_weight", x, (channels,))
    check_optional(bn_bias, "bn_bias", x, (channels,))
    check_running_stats(running_mean, running_var, x, channels)
    training = check_bool(training, "training")
    momentum = scalar_float(momentum, "momentum", 0.0, 1.0)
    eps = scalar_float(eps, "eps", 0.0, None, low_open=True)
    if not training and running_mean is None:
        raise ValueError("training=False needs running_mean and running_var (eval mode normalises with "
                         "running statistics); pass training=True to use batch statistics")
    return training, momentum, eps


def check_batch_count(count: int) -> None:
    """Batch statistics over one value per channel are undefined: F.batch_norm's error (an empty
    batch passes, as there: it leaves the running statistics alone)."""
    if count == 1:
        raise ValueError(f"training=True needs more than 1 value per channel to compute batch statistics, got {count}")


def update_running_stats(running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                         mean: torch.Tensor, var: torch.Tensor, momentum: float, count: int) -> None:
    """running = (1 - momentum) * running + momentum * batch, with the unbiased batch variance,
    exactly as F.batch_norm does."""
    if running_mean is None:
        return
    with torch.no_grad():
        unbiased = var * (count / (count - 1))
        # the same arithmetic as running.mul_(1 - m).add_(batch, alpha=m) per tensor, in two
        # multi-tensor launches instead of four (each is a kernel launch on the GPU)
        stats = [running_mean, running_var]
        torch._foreach_mul_(stats, 1 - momentum)
        torch._foreach_add_(stats, [mean.to(running_mean.dtype), unbiased.to(running_var.dtype)], alpha=momentum)
