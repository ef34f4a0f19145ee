"""Graph capture: torch.compile / torch.export trace through a fused op into its Triton kernels.

Every fused op is a ``torch.library`` custom op whose body resolves the backend at run time, so by
default torch.compile sees one opaque call. Ops defined with :func:`fused_op` also register a
decomposition for AOTAutograd's functional tracing (the mechanism behind
``torch.library.triton_op``): when a call resolves to a backend that supports graph capture (the
``triton`` backend on CUDA tensors: its launchers then go through ``torch.library.wrap_triton``),
the traced graph gets the op's body instead of the op: the Triton kernel launches (Inductor's
user-defined-kernel nodes, which Inductor autotunes and launches from its own wrapper) and the
small torch ops between them. Calls that resolve to any other backend (the
compiled extension, eager) stay one opaque call.

With capture, the backend is chosen when the graph is traced, not at every call. Autograd is
unchanged: the op's registered backward (recompute from x and the statistics) is what the backward
graph traces, through the backward op, which is captured the same way.

A fused op may also register a *form* (:func:`register_form`): plain torch ops computing its
outputs, which functional tracing records instead of the op while the form's condition holds (the
dynamo ONNX exporter, :mod:`fastblocks.onnx`, whose runtimes do not know the op).

``FASTBLOCKS_GRAPH_CAPTURE=0`` (read at every trace) keeps every op opaque; torch.export honours
``torch._functorch.config.decompose_custom_triton_ops`` as it does for ``triton_op``. Needs
``torch.library.wrap_triton`` and ``CustomOpDef.register_torch_dispatch`` (torch >= 2.6); older
versions keep the opaque ops.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional

import torch

from .. import _dispatch

ENV = "FASTBLOCKS_GRAPH_CAPTURE"


class NotCapturable(Exception):
    """Raised while tracing when the call resolved to a backend that cannot be traced."""


class _Tracing(threading.local):
    def __init__(self) -> None:
        self.active = False


_TRACING = _Tracing()


def supported() -> bool:
    """This torch has what graph capture needs."""
    from torch._library.custom_ops import CustomOpDef

    return hasattr(torch.library, "wrap_triton") and hasattr(CustomOpDef, "register_torch_dispatch")


def enabled() -> bool:
    """Capture is on unless FASTBLOCKS_GRAPH_CAPTURE is 0 / false / no / off, or torch.export asked
    to keep Triton-backed ops whole."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    config = getattr(torch._functorch, "config", None)
    return bool(getattr(config, "decompose_custom_triton_ops", True))


def enable(name: str, opdef, fn: Callable) -> None:
    """Let graph capture trace the custom op ``opdef`` ("namespace::name", body ``fn``) where this
    torch can."""
    if supported():
        _register_decomposition(name, opdef, fn)
        _register_cache_kernels(name)


# name -> (form, when): while ``when()`` holds, functional tracing records ``form(*op args)`` (plain
# torch ops, same outputs) in place of the op; fastblocks.onnx registers the ONNX export forms.
_FORMS: dict[str, tuple[Callable, Callable[[], bool]]] = {}


def register_form(name: str, form: Callable, when: Callable[[], bool]) -> None:
    """Trace ``form`` instead of the fused op ``name`` whenever ``when()`` is true (e.g. while a
    graph is being exported to a format that does not know the op)."""
    _FORMS[name] = (form, when)


def active_form(name: str) -> Optional[Callable]:
    """The form registered for the fused op ``name`` if its condition holds now, else None."""
    entry = _FORMS.get(name)
    return entry[0] if entry is not None and entry[1]() else None


def run(op: str, backend: str, forward_args: tuple, call: Callable[[_dispatch.BackendImpl], Any]) -> Any:
    """Resolve ``backend`` for ``op`` on ``forward_args`` and return ``call(impl)``; while a fused
    op is being decomposed, only for a backend that can be traced (else :class:`NotCapturable`)."""
    device = forward_args[0].device
    name, impl = _dispatch.resolve(op, backend, device, forward_args)
    if not _TRACING.active:
        return call(impl)
    capture = _dispatch.graph_capture(name, device)
    if capture is None:
        raise NotCapturable(name)
    _TRACING.active = False  # the decision is made; nothing below is another fused op's body
    with capture.context():
        return call(impl)


def _register_decomposition(name: str, opdef, fn: Callable) -> None:
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode

    known = (FakeTensor, FunctionalTensor)

    def decompose(mode, op, types, args, kwargs):
        if any(t is not torch.Tensor and not issubclass(t, known) for t in types):
            return NotImplemented  # a tensor subclass: let it handle the op (as triton_op does)
        form = active_form(name)
        if form is not None:
            with mode:
                return form(*args, **kwargs)
        if enabled():
            previous = _TRACING.active
            _TRACING.active = True
            try:
                with mode:
                    return fn(*args, **kwargs)
            except NotCapturable:
                pass  # nothing was traced yet: the body resolves the backend first
            finally:
                _TRACING.active = previous
        return mode.__torch_dispatch__(op, types, args, kwargs)

    opdef.register_torch_dispatch(FunctionalTensorMode, decompose)


class _CaptureKernels(Sequence):
    """The kernels of every traceable backend, listed when torch.compile computes a cache key
    (listing them at ``import fastblocks`` would import triton). A read-only sequence, like the
    list torch keeps there for a triton_op."""

    def __getitem__(self, index):
        return _dispatch.capture_kernels()[index]

    def __len__(self) -> int:
        return len(_dispatch.capture_kernels())


def _register_cache_kernels(name: str) -> None:
    # AOTAutograd's cache keys a graph on the source of the Triton kernels behind each
    # triton_op in it; without this entry an edited kernel could be served from a stale cache.
    table = getattr(getattr(torch._library, "triton", None), "triton_ops_to_kernels", None)
    if isinstance(table, dict):
        table[name] = _CaptureKernels()
