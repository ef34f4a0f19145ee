"""Synchronised BatchNorm (SyncBatchNorm semantics) for the fused ops, on any device and backend.

``fastblocks::sync_batch_norm`` is [optional depthwise conv ->] BatchNorm with statistics all-reduced
over a process group -> activation, as one ``torch.library`` custom op whose real implementation
performs the collectives (so ``torch.compile`` sees one op and no graph break). It works with any
``torch.distributed`` backend, gloo on CPU included (PyTorch's own SyncBatchNorm needs a GPU).

Forward (training), per layer:

1. z = x, or z = depthwise_conv(x) + conv_bias (computed for the statistics, then freed);
2. per-channel local mean / biased variance of z (Welford, float32; float64 for float64 inputs),
   turned into sum, sum of squares and count and packed into one float64 tensor (2C + 1,);
3. **one** ``all_reduce`` (SUM) of that tensor; global mean / biased variance from it (float64:
   the sum-of-squares difference does not cancel catastrophically);
4. normalise + act in one pass with the global statistics, by the resolved backend's fused
   *eval-mode* forward (conv recomputed inside it for dwconv);
5. the caller updates running stats with the global count (unbiased variance with N_global - 1).

Saved for backward: x (+ conv weight / bias), the BN affine params, the global mean / var and the
global count - nothing full-size besides x. Backward recomputes z and BN(z), forms
du = dy * act'(BN(z)), reduces sum(du) and sum(du * x_hat) locally (float64 accumulation),
**one** ``all_reduce`` of both (float64, 2C values),
then dz = gamma * invstd * (du - S(du)/N - x_hat * S(du x_hat)/N) (SyncBatchNorm's formula), and dx,
dW, db through the depthwise conv (ATen ``convolution_backward``). dgamma / dbeta are the *local*
sums, as in SyncBatchNorm: DDP averages parameter gradients itself, so every gradient equals
1/world_size times the gradient of the sum of the per-rank losses.

The process group travels into the op as its name (custom ops cannot take ProcessGroup objects);
``""`` means the default group. Without an initialised process group, or with world size 1, the
op runs no collective and equals BatchNorm; the modules (:mod:`fastblocks.nn.batchnorm`) call the
plain fused ops then.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist

from .. import _dispatch
from .._act import act_backward, canonical_act
from .._recompute import offer
from .._validate import check_input, conv_out_hw, memory_format_of
from ..backends import reference
from ..backends.eager._common import (_compute_view, acc_dtype, bn_act_forward, dwconv_backward,
                                      dwconv_forward)
from ._batchnorm import check_bn_args
from ._graph_backward import graph_requested
from ._plumbing import fake_slot, from_slot, grad_slot, needs, run_forward
from .dwconv_bn_act import check_call

Tensor = torch.Tensor
_DIMS = (0, 2, 3)


# ----------------------------------------------------------------------------- process groups

def need_sync(process_group=None) -> bool:
    """True when BN statistics must be synchronised: torch.distributed is initialised and the group
    (default: the whole world) has more than one rank. Mirrors nn.SyncBatchNorm.forward."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


def group_name(process_group=None) -> str:
    """The name a custom op carries for ``process_group`` ("" for the default group)."""
    if process_group is None:
        return ""
    name = getattr(process_group, "group_name", None)
    if name is None:  # older torch
        name = dist.distributed_c10d._get_process_group_name(process_group)
    return name


def resolve_group(name: str):
    """ProcessGroup of a :func:`group_name` (None for the default group).

    ``torch.distributed.distributed_c10d._resolve_process_group`` (torch >= 2.2, used by functional
    collectives); otherwise a scan of the c10d name table."""
    if not name:
        return None
    c10d = dist.distributed_c10d
    resolve = getattr(c10d, "_resolve_process_group", None)
    if resolve is not None:
        try:
            return resolve(name)
        except (RuntimeError, ValueError, KeyError):
            pass
    for pg, pg_name in getattr(c10d, "_world").pg_names.items():
        if pg_name == name:
            return pg
    raise ValueError(f"fastblocks: no process group named {name!r}")


def _all_reduce(t: Tensor, name: str) -> None:
    """In-place SUM all_reduce over the named group; nothing without a group / with one rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    group = resolve_group(name)
    if dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)


# ----------------------------------------------------------------------------- math

def _local_moments(z: Tensor) -> Tensor:
    """Packed float64 [sum (C), sum of squares (C), count (1)] of z over (N, H, W). The sums come
    from Welford mean / M2 in the accumulation dtype, so they carry no cancellation error."""
    c = z.shape[1]
    n = z.numel() // c
    if n == 0:
        return torch.zeros(2 * c + 1, dtype=torch.float64, device=z.device)
    za = _compute_view(z)[0]
    var, mean = torch.var_mean(za, dim=_DIMS, correction=0)
    mean = mean.double()
    total = torch.full((1,), float(n), dtype=torch.float64, device=z.device)
    return torch.cat([mean * n, (var.double() + mean * mean) * n, total])


def _conv(x, weight, conv_bias, stride, padding_mode, padding, dilation):
    if weight is None:
        return x
    return dwconv_forward(x, weight, conv_bias, stride, padding_mode, padding, dilation)


def _view(t: Tensor) -> Tensor:
    return t.reshape(1, -1, 1, 1)


@torch.library.custom_op("fastblocks::sync_batch_norm", mutates_args=())
def _forward(x: Tensor, weight: Optional[Tensor], bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
             conv_bias: Optional[Tensor], stride: int, padding_mode: str, padding: int, dilation: int,
             eps: float, act: str, group: str, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (y, mean, var, count): y in x's dtype and memory format; the global per-channel mean
    and biased variance in float32 (float64 for float64 x); the global count (0-dim float64)."""
    c = x.shape[1]
    z = _conv(x, weight, conv_bias, stride, padding_mode, padding, dilation)
    packed = _local_moments(z)
    del z
    _all_reduce(packed, group)
    count = packed[2 * c]
    if float(count) <= 1:
        raise ValueError(f"training=True needs more than 1 value per channel over all ranks to compute "
                         f"batch statistics, got {int(count)}")
    mean64 = packed[:c] / count
    var64 = (packed[c:2 * c] / count - mean64 * mean64).clamp_min(0)
    dt = acc_dtype(x)
    mean, var = mean64.to(dt), var64.to(dt)
    if weight is None:
        if backend == "reference":
            y = reference.bn_act(x, bn_weight, bn_bias, mean, var, False, 0.0, eps, act)
        else:
            y = run_forward("bn_act", backend, (x, bn_weight, bn_bias, mean, var, False, eps, act))[0]
    else:
        if backend == "reference":
            y = reference.dwconv_bn_act(x, weight, bn_weight, bn_bias, mean, var, conv_bias, stride,
                                        padding_mode, padding, dilation, False, 0.0, eps, act)
        else:
            y = run_forward("dwconv_bn_act", backend, (x, weight, bn_weight, bn_bias, mean, var, conv_bias,
                                                       stride, padding_mode, padding, dilation, False, eps,
                                                       act))[0]
    return y.contiguous(memory_format=memory_format_of(x)), mean, var, count.clone()


@_forward.register_fake
def _forward_fake(x, weight, bn_weight, bn_bias, conv_bias, stride, padding_mode, padding, dilation,
                  eps, act, group, backend):
    n, c, h, w = x.shape
    if weight is not None:
        k = weight.shape[-1]
        h, w = conv_out_hw(padding_mode, padding, k, stride, dilation, h, w)
    y = x.new_empty((n, c, h, w)).contiguous(memory_format=memory_format_of(x))
    stats = x.new_empty((c,), dtype=acc_dtype(x))
    return y, stats, torch.empty_like(stats), x.new_empty((), dtype=torch.float64)


@torch.library.custom_op("fastblocks::sync_batch_norm_backward", mutates_args=())
def _backward_op(dy: Tensor, x: Tensor, weight: Optional[Tensor], bn_weight: Optional[Tensor],
                 bn_bias: Optional[Tensor], conv_bias: Optional[Tensor], mean: Tensor, var: Tensor,
                 count: Tensor, stride: int, padding_mode: str, padding: int, dilation: int, eps: float,
                 act: str, group: str, mask: Sequence[bool]
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, weight, bn_weight, bn_bias, conv_bias); empty tensors where mask is False.
    One all_reduce (of sum(du), sum(du * x_hat)) when any gradient flows below the BN."""
    need_x, need_w, need_gamma, need_beta, need_b = mask
    z = _conv(x, weight, conv_bias, stride, padding_mode, padding, dilation)
    z_dtype, z_format = z.dtype, memory_format_of(z)
    za, gamma, beta, m, v = _compute_view(z, bn_weight, bn_bias, mean, var)
    del z
    xhat = torch.batch_norm(za, None, None, m, v, False, 0.0, eps, False)
    u = xhat if gamma is None and beta is None else torch.batch_norm(za, gamma, beta, m, v, False, 0.0, eps, False)
    du = act_backward(act, u, dy.to(za.dtype))
    del u
    # Per-channel sums accumulated in float64 (as ATen's CPU BN kernels do), one all_reduce.
    sums = torch.cat([du.sum(_DIMS, dtype=torch.float64), (du * xhat).sum(_DIMS, dtype=torch.float64)])
    c = za.shape[1]
    dgamma = sums[c:].to(za.dtype, copy=True) if need_gamma else None
    dbeta = sums[:c].to(za.dtype, copy=True) if need_beta else None
    dz = None
    if need_x or need_w or need_b:
        _all_reduce(sums, group)  # same condition on every rank: the masks agree across ranks
        mean_du, mean_du_xhat = (sums / count).to(za.dtype).split(c)
        k = torch.rsqrt(v + eps)
        if gamma is not None:
            k = k * gamma
        dz = torch.addcmul(du - _view(mean_du), xhat, _view(-mean_du_xhat)).mul_(_view(k))
    del du, xhat, za
    dx = dw = db = None
    if dz is not None:
        dz = dz.to(z_dtype).contiguous(memory_format=z_format)
        if weight is None:
            dx = dz
        else:
            dx, dw, db = dwconv_backward(dz, x, weight, stride, padding_mode, padding, dilation,
                                         need_x, need_w, need_b)
    likes = (x, weight, bn_weight, bn_bias, conv_bias)
    return tuple(grad_slot(g, like, x, m) for g, like, m in zip((dx, dw, dgamma, dbeta, db), likes, mask))


@_backward_op.register_fake
def _backward_fake(dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var, count, stride, padding_mode,
                   padding, dilation, eps, act, group, mask):
    likes = (x, weight, bn_weight, bn_bias, conv_bias)
    return tuple(fake_slot(like, x, m) for like, m in zip(likes, mask))


def _setup_context(ctx, inputs, output):
    (x, weight, bn_weight, bn_bias, conv_bias, stride, padding_mode, padding, dilation,
     eps, act, group, backend) = inputs
    _, mean, var, count = output
    ctx.save_for_backward(x, weight, bn_weight, bn_bias, conv_bias, mean, var, count)
    ctx.config = (stride, padding_mode, padding, dilation, eps, act, group)


def _autograd_backward(ctx, dy, _dmean, _dvar, _dcount):
    if graph_requested():
        raise RuntimeError("double backward (create_graph=True) through a synchronised "
                           "BatchNorm is not supported (nor by nn.SyncBatchNorm): compute the gradient penalty "
                           "without SyncBatchNorm, e.g. on a copy of the model with plain BatchNorm2d")
    x, weight, bn_weight, bn_bias, conv_bias, mean, var, count = ctx.saved_tensors
    mask = needs(ctx, 0, 1, 2, 3, 4)
    if not any(mask):
        return (None,) * 13
    grads = _backward_op(dy, x, weight, bn_weight, bn_bias, conv_bias, mean, var, count, *ctx.config, mask)
    return tuple(from_slot(g, m) for g, m in zip(grads, mask)) + (None,) * 8


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public wrappers

def _check_not_empty(x: Tensor) -> None:
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (N = 0), which the synchronised BatchNorm ops do not take: "
                         "run that step unpatched (fastblocks.unpatch(model)) or skip the empty batch")


def _update_running_stats(running_mean, running_var, mean, var, count, momentum) -> None:
    """As F.batch_norm with the global count (a tensor: no host sync, traceable)."""
    if running_mean is None:
        return
    with torch.no_grad():
        unbiased = var * (count / (count - 1)).to(var.dtype)
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def sync_bn_act(x: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor], *, momentum: float = 0.1,
                eps: float = 1e-5, act: str = "silu", process_group=None,
                backend: Optional[str] = None) -> Tensor:
    """Training-mode BatchNorm2d -> act with batch statistics synchronised over ``process_group``
    (default: the whole world), as nn.SyncBatchNorm computes them; updates running_* in place with
    the global statistics. Shapes / dtypes as :func:`fastblocks.ops.bn_act`. Without an initialised
    process group (or with one rank) it equals ``bn_act(..., training=True)``.
    Saved for backward: x, the affine params, global mean / var / count."""
    check_input(x, "x")
    _check_not_empty(x)
    _, momentum, eps = check_bn_args(x, x.shape[1], bn_weight, bn_bias, running_mean, running_var,
                                     True, momentum, eps)
    act = canonical_act(act)
    name = _dispatch.requested(backend)
    y, mean, var, count = _forward(x, None, bn_weight, bn_bias, None, 1, "int", 0, 1, eps, act,
                                   group_name(process_group), name)
    _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    offer(y, bn_act_forward, (x, bn_weight, bn_bias, mean, var), (eps, act))
    return y


def sync_dwconv_bn_act(x: Tensor, weight: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                       running_mean: Optional[Tensor], running_var: Optional[Tensor], *,
                       conv_bias: Optional[Tensor] = None, stride: int = 1,
                       padding: Union[str, int] = "same", dilation: int = 1, momentum: float = 0.1,
                       eps: float = 1e-5, act: str = "silu", process_group=None,
                       backend: Optional[str] = None) -> Tensor:
    """Depthwise conv -> training-mode BatchNorm with statistics synchronised over ``process_group``
    -> act. Arguments as :func:`fastblocks.ops.dwconv_bn_act` (training is implied). Saved for
    backward: x, the conv weight / bias, the affine params, global mean / var / count."""
    stride, padding_mode, pad, dilation, _, momentum, eps, act, _ = check_call(
        x, weight, bn_weight, bn_bias, running_mean, running_var, conv_bias, stride, padding, dilation,
        True, momentum, eps, act, check_count=False)
    _check_not_empty(x)
    name = _dispatch.requested(backend)
    y, mean, var, count = _forward(x, weight, bn_weight, bn_bias, conv_bias, stride, padding_mode, pad,
                                   dilation, eps, act, group_name(process_group), name)
    _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return y
