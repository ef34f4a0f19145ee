"""``fused_op``: a fused op as a ``torch.library`` custom op, called directly in plain eager mode.

The custom op is what torch.compile, torch.export, functorch transforms, tensor subclasses and
dispatch modes see: fake impl, registered autograd, graph capture (:mod:`._capture`). But calling
a Python custom op costs tens of microseconds of host time, and up to ~200 us a forward + backward
when autograd records it (``python -m benchmarks.host_overhead`` on a 2-core AMD EPYC CPU,
torch 2.14; one part: ``torch._library``'s autograd wrapper rebuilds the schema's argument list
per argument, ``fill_defaults``) — more than many of the ops' GPU kernels take. So a call from plain eager code (no tracing, no modes, no transforms, plain tensors)
runs the op's body directly, and when autograd must record it, through a
``torch.autograd.Function`` built from the same ``setup_context`` and backward the custom op
registers: same saved tensors (saved-tensor hooks see them alike), same gradients, same errors.
Anything else goes through the custom op. ``FASTBLOCKS_DIRECT_EAGER=0`` (read at import; or set
``fastblocks.ops._fused_op.DIRECT = False``) sends every call through the custom op.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch
from torch.autograd import forward_ad

from . import _capture

_PLAIN = (torch.Tensor, torch.nn.Parameter)
DIRECT = os.environ.get("FASTBLOCKS_DIRECT_EAGER", "1").strip().lower() not in ("0", "false", "no", "off")


def _probes() -> Optional[tuple]:
    """The torch internals :func:`plain_eager` asks, or None where this torch lacks one (then
    every call takes the custom op)."""
    try:
        return (torch.compiler.is_compiling, torch._C._len_torch_dispatch_stack,
                torch._C._is_torch_function_mode_enabled, torch._C._functorch.peek_interpreter_stack)
    except AttributeError:
        return None


_PROBES = _probes()


def plain_eager(args: tuple) -> bool:
    """Nothing would see this call but autograd: not compiling or exporting (Dynamo), no
    TorchScript tracing, no dispatch or torch-function mode (FakeTensorMode, make_fx, FlopCounter,
    ``with torch.device``), no functorch transform (vmap, grad), and no tensor subclass among
    ``args`` (FakeTensor, DTensor, ...)."""
    if _PROBES is None or not DIRECT:
        return False
    compiling, dispatch_modes, function_modes, functorch = _PROBES
    if compiling() or torch.jit.is_tracing() or dispatch_modes() or function_modes() or functorch() is not None:
        return False
    return all(type(a) in _PLAIN for a in args if isinstance(a, torch.Tensor))


def _differentiating_keys() -> frozenset:
    try:
        keys = torch._C._functorch.TransformType
        return frozenset((keys.Grad, keys.Jvp))
    except AttributeError:
        return frozenset()


_DIFFERENTIATING = _differentiating_keys()


def differentiating_transform() -> bool:
    """A ``torch.func`` transform that differentiates is active (grad, vjp, jacrev, jacfwd, jvp,
    hessian, or vmap over one of them), or forward-mode AD (``torch.autograd.forward_ad``): the
    autograd that ``torch.library`` registers for custom ops supports neither, so the ops run their
    reference composition there."""
    if _PROBES is None or _PROBES[0]():  # torch.compile traces the transforms itself
        return False
    if forward_ad._current_level >= 0:
        return True
    if _PROBES[3]() is None:
        return False
    stack = torch._C._functorch.get_interpreter_stack() or ()
    return any(interpreter.key() in _DIFFERENTIATING for interpreter in stack)


def _needs_autograd(args: tuple) -> bool:
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


class FusedOp:
    """Callable like the ``CustomOpDef`` it wraps (``register_fake``, ``register_autograd`` and every
    other attribute are the custom op's); see the module docstring for when a call bypasses it."""

    def __init__(self, name: str, opdef, fn: Callable) -> None:
        self._name = name
        self._opdef = opdef
        self._fn = fn
        self._function: Optional[type] = None

    def register_autograd(self, backward: Callable, *, setup_context: Callable) -> None:
        self._opdef.register_autograd(backward, setup_context=setup_context)
        self._function = _autograd_function(self._name, self._fn, backward, setup_context)

    def __call__(self, *args: Any) -> Any:
        if not plain_eager(args):
            return self._opdef(*args)
        if _needs_autograd(args):
            if self._function is None:  # no formula registered: the custom op says so in backward
                return self._opdef(*args)
            return self._function.apply(*args)
        return self._fn(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._opdef, name)


def _autograd_function(name: str, fn: Callable, backward: Callable, setup_context: Callable) -> type:
    """A ``torch.autograd.Function`` running ``fn`` (the op's body) with the op's own autograd
    formula; its inputs are the op's arguments, so ``ctx.needs_input_grad`` lines up with them.
    Outputs are fresh tensors (a custom op's body may not alias its inputs). Not
    ``once_differentiable``: the formula itself returns a differentiable result when autograd builds
    a graph of the backward (:mod:`._graph_backward`), as the custom op's does."""

    def forward(ctx, *args):
        out = fn(*args)
        setup_context(ctx, args, out)
        return out

    return type(f"{name.replace('::', '_')}_eager", (torch.autograd.Function,),
                {"forward": staticmethod(forward),
                 "backward": staticmethod(backward)})


def fused_op(name: str) -> Callable:
    """``torch.library.custom_op(name, mutates_args=())`` as a :class:`FusedOp`, with graph
    capture registered (:func:`._capture.enable`).

    The body must resolve its backend through :func:`._capture.run` before it runs any tensor op."""
    def define(fn: Callable) -> FusedOp:
        opdef = torch.library.custom_op(name, mutates_args=())(fn)
        _capture.enable(name, opdef, fn)
        return FusedOp(name, opdef, fn)
    return define
