"""BatchNorm folded into the conv before it, at eval: the folded weights are a cache of the
module's own tensors, never a copy the model keeps in its state.

The cache is built on the first eval forward (under no_grad, outside inference mode, so it can be
used in any later grad mode), checked on every eval forward by the version counters and data
pointers of the tensors it was built from (an optimizer step, ``load_state_dict``, ``.to(dtype)``,
``.to(memory_format=...)`` and ``.copy_`` all change one of them) and rebuilt when they changed,
and dropped when the module goes to training mode or is unpatched. ``state_dict()`` never sees it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator, Optional

import torch
from torch import nn

from ..ops._fused_op import plain_eager
from .conv_fusion import ConvRunner

Tensor = torch.Tensor

_UNFOLDED = threading.local()


@contextlib.contextmanager
def unfolded() -> Iterator[None]:
    """Inside this block eval forwards run the original modules, unfolded: for tools that must see
    every module of the model run (hooks on BatchNorm or activation modules)."""
    depth = getattr(_UNFOLDED, "depth", 0)
    _UNFOLDED.depth = depth + 1
    try:
        yield
    finally:
        _UNFOLDED.depth = depth


def fold_batchnorm(weight: Tensor, bias: Optional[Tensor], bn: nn.modules.batchnorm._BatchNorm
                   ) -> tuple[Tensor, Tensor]:
    """(weight', bias') of the conv ``(weight, bias)`` followed by ``bn`` in eval mode:
    weight' = weight * gamma / sqrt(var + eps) per output channel, bias' = (bias - mean) * that
    scale + beta. Computed in float64, returned in ``weight``'s dtype and memory format; no autograd
    graph. ``bn`` must track running statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False): it cannot be folded")
    with torch.no_grad():
        var = bn.running_var.double()
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bias is not None:
            shift = shift + bias.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        shape = (-1,) + (1,) * (weight.dim() - 1)
        fmt = torch.channels_last if weight.dim() == 4 and weight.is_contiguous(
            memory_format=torch.channels_last) and not weight.is_contiguous() else torch.contiguous_format
        w = (weight.double() * scale.reshape(shape)).to(weight.dtype).contiguous(memory_format=fmt)
        return w, shift.to(weight.dtype)


def fold_sources(conv: nn.Module, bn: Optional[nn.modules.batchnorm._BatchNorm]) -> tuple:
    """The tensors folded weights are computed from (None where absent; the conv's alone without
    ``bn``)."""
    if bn is None:
        return (conv._parameters["weight"], conv._parameters.get("bias"))
    return (conv._parameters["weight"], conv._parameters.get("bias"), bn._parameters.get("weight"),
            bn._parameters.get("bias"), bn._buffers.get("running_mean"), bn._buffers.get("running_var"))


def fold_active(conv: nn.Module, bn: Optional[nn.modules.batchnorm._BatchNorm]) -> bool:
    """Whether ``conv`` -> ``bn`` runs folded now: both in eval mode, plain eager execution (not
    traced, compiled, exported or under a dispatch mode: those see the original modules), no
    autocast, and no gradient needed for any source tensor. With grad enabled and a parameter
    requiring grad the original modules run, so parameter gradients stay exact; otherwise input
    gradients flow through the folded conv (its weights are constants)."""
    if conv.training or (bn is not None and bn.training) or \
            not eval_state_ok(conv._parameters["weight"].device.type):
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in fold_sources(conv, bn)))


def eval_state_ok(device_type: str) -> bool:
    """The global side of :func:`fold_active`: not inside :func:`unfolded`, plain eager execution,
    no autocast on ``device_type`` (meta tensors never fold: nothing to compute)."""
    if device_type == "meta" or getattr(_UNFOLDED, "depth", 0) or not plain_eager(()):
        return False
    return not torch.is_autocast_enabled(device_type)


def _tensor_key(t: Optional[Tensor]):
    return None if t is None else (t._version, t.data_ptr(), t.dtype, t.device)


class FoldedConvBN:
    """A conv module and the BatchNorm module after it (+ an activation), run at eval as one conv
    on folded weights (:class:`~fastblocks.inference.conv_fusion.ConvRunner`). ``bn`` None: the
    conv alone, on its own weights (a 1x1 conv with no BatchNorm after it).

    ``active()`` (:func:`fold_active`) says whether the folded path runs now. The conv and the BN
    ask the same question, so the BN passes its input through exactly when the conv applied it.
    """

    def __init__(self, conv: nn.Module, bn: Optional[nn.modules.batchnorm._BatchNorm], act: str, stride: tuple,
                 padding: tuple, dilation: tuple, groups: int) -> None:
        self.conv, self.bn, self.act = conv, bn, act
        self.geometry = (tuple(stride), tuple(padding), tuple(dilation), groups)
        self._key = None
        self._runner: Optional[ConvRunner] = None
        self._cpp = None  # fastblocks._C.ConvEvalRunner on the runner's weights, where one serves

    def sources(self) -> tuple:
        return fold_sources(self.conv, self.bn)

    def _slots(self) -> tuple:
        """(dict, name) of every source tensor slot: the conv's and the BN's own dicts."""
        conv, bn = self.conv, self.bn
        slots = [(conv._parameters, "weight"), (conv._parameters, "bias")]
        if bn is not None:
            slots += [(bn._parameters, "weight"), (bn._parameters, "bias"), (bn._buffers, "running_mean"),
                      (bn._buffers, "running_var")]
        return tuple(slots)

    def rebuild_cpp(self) -> None:
        """A C++ runner (``fastblocks._C.ConvEvalRunner``) for the current ConvRunner where it takes
        fastblocks' pointwise or direct kernel on CPU float32 weights, else none."""
        runner, self._cpp = self._runner, None
        runner_class = getattr(sys.modules.get("fastblocks._C"), "ConvEvalRunner", None)
        if runner is None or runner_class is None or runner.weight.device.type != "cpu" or \
                runner.weight.dtype != torch.float32:
            return
        if runner.gemm:
            kind, args = "pointwise", (runner.panels, runner.bias, runner.act)
        elif runner.direct:
            p0, p1 = runner.padding
            kind, args = "direct", (runner._direct_taps, runner.bias, runner.weight.shape[-1], runner.stride[0],
                                    [p0, p0, p1, p1], runner.act)
        else:
            return
        bns = () if self.bn is None else (self.bn,)
        self._cpp = runner_class(kind, args, self._slots(), bns, (self.conv,) + bns)

    def active(self) -> bool:
        """Whether the folded conv runs now (:func:`fold_active`)."""
        return fold_active(self.conv, self.bn)

    def runner(self) -> ConvRunner:
        """The conv runner on current folded weights, rebuilt when a source tensor changed."""
        key = tuple(map(_tensor_key, self.sources())) + (None if self.bn is None else self.bn.eps,)
        if key != self._key or self._runner is None:
            with torch.inference_mode(False), torch.no_grad():
                conv = self.conv
                if self.bn is None:
                    weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
                else:
                    weight, bias = fold_batchnorm(conv.weight, conv.bias, self.bn)
                self._runner = ConvRunner(weight, bias, *self.geometry, self.act)
            self._key = key
            self.rebuild_cpp()
        return self._runner

    def __call__(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        return self.runner()(x, residual)

    def clear(self) -> None:
        """Drop the folded weights (rebuilt on the next eval forward)."""
        self._key, self._runner, self._cpp = None, None, None

    def __getstate__(self) -> dict:  # pickles and deep copies never carry the cache
        state = dict(self.__dict__)
        state["_key"], state["_runner"], state["_cpp"] = None, None, None
        return state

    def __setstate__(self, state: dict) -> None:  # folds pickled before the C++ runner existed
        state.setdefault("_cpp", None)
        self.__dict__.update(state)
