"""The one mechanism that chooses a backend for a fused op.

Resolution order for every op call:

1. an explicit ``backend=`` argument of the op or module,
2. the innermost ``fastblocks.backend(name)`` context, else the last ``fastblocks.set_backend(name)``,
3. the environment variable ``FASTBLOCKS_BACKEND`` (read once, at import),
4. ``"auto"``.

``"auto"`` takes the first backend that is available and supports the call's configuration, in the
order measured for this (device, op, input layout, phase) in :data:`fastblocks._auto_table.AUTO_TABLE`
(generated from committed benchmark results by ``python -m benchmarks.auto_table``), followed by the
device's default order :data:`AUTO_PREFERENCE` for backends the table does not rank. A backend named explicitly that cannot run the
call raises :class:`BackendUnavailableError`; it is never silently replaced by another.

``"reference"`` is the plain PyTorch composition (autograd through ATen ops); every other backend
runs inside the op's ``torch.library`` custom op, which resolves the name at run time, so
``torch.compile`` sees one op - except where graph capture traces through it (a backend registered
with :func:`register_graph_capture`; see ``fastblocks/ops/_capture.py``): then the name is resolved
when the graph is traced.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ._validate import memory_format_of

# cuda_emulated: the CUDA kernels on a CPU emulator, for tests (never in AUTO_PREFERENCE).
BACKENDS = ("reference", "eager", "cpu", "triton", "cuda", "cuda_emulated")
SELECTABLE = BACKENDS + ("auto",)

# Default order per device type, for calls the benchmark-derived AUTO_TABLE does not cover. On CUDA
# the Triton kernels come first: their kernels are tested on CPU under the interpreter, while the CUDA C++
# kernels have no run-time test without a GPU.
AUTO_PREFERENCE: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "cuda", "eager"),
    "cpu": ("cpu", "eager"),
}
# ops whose forward arguments say whether they train: op -> index of the `training` argument
_TRAINING_ARG: dict[str, int] = {}
AUTO_FALLBACK = ("eager",)


class BackendUnavailableError(RuntimeError):
    """A backend was requested by name but cannot run this call."""


@dataclass(frozen=True)
class BackendImpl:
    """One backend's implementation of one op.

    forward / backward take the op's custom-op arguments (minus ``backend``) and return what the
    custom op returns. ``supports(*forward_args)`` returns None when the backend can run the call,
    else a short reason (used in error messages and by ``auto``).
    """

    forward: Callable[..., Any]
    backward: Callable[..., Any]
    supports: Callable[..., str | None] = lambda *a, **k: None


# op name -> backend name -> implementation
_REGISTRY: dict[str, dict[str, BackendImpl]] = {}
# (op, backend) -> check of a call's static configuration (see register_config_check)
_CONFIG_CHECKS: dict[tuple[str, str], Callable[..., str | None]] = {}
# backend name -> callable returning None when usable in this process, else the reason
_AVAILABILITY: dict[str, Callable[[], str | None]] = {
    "reference": lambda: None,
    "eager": lambda: None,
}


def register_backend(name: str, availability: Callable[[], str | None]) -> None:
    """Declare a backend and how to tell whether it can run in this process."""
    if name not in BACKENDS:
        raise ValueError(f"backend name must be one of {BACKENDS}, got {name!r}")
    _AVAILABILITY[name] = availability


def register_impl(op: str, backend: str, impl: BackendImpl) -> None:
    """Register ``backend``'s implementation of ``op`` (called by backend modules at import)."""
    if backend not in BACKENDS or backend == "reference":
        raise ValueError(f"cannot register an implementation for backend {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = impl


def register_config_check(op: str, backend: str, check: Callable[..., str | None]) -> None:
    """Declare which static configurations (keyword arguments such as ``kernel_size``, ``stride``)
    ``backend`` can run for ``op``: ``check(**config)`` returns None or the reason. Registered
    whether or not the backend's kernels are installed, so :func:`fastblocks.patch` can leave a
    layer unfused, with the reason, when the backend it was asked for could never run it."""
    if backend not in BACKENDS or backend == "reference":
        raise ValueError(f"cannot register a configuration check for backend {backend!r}")
    _CONFIG_CHECKS[op, backend] = check


def config_problem(op: str, backend: str, **config) -> str | None:
    """Why ``backend`` cannot run ``op`` with this static configuration, or None (also when the
    backend declared no check: the call itself then decides)."""
    check = _CONFIG_CHECKS.get((op, backend))
    return None if check is None else check(**config)


def register_training_arg(op: str, index: int) -> None:
    """Declare which forward argument of ``op`` is its ``training`` flag (selects the table phase)."""
    _TRAINING_ARG[op] = index


# Input H * W from which a 4-D call counts as "large" in the auto table (coarse on purpose: a few
# layer shapes per class; at EfficientNet-B0 shapes it splits 112 / 56 from 28 / 14 / 7).
LARGE_PLANE = 32 * 32


def plane_size_class(h: int, w: int) -> str:
    """The auto table's size class of an (N, C, H, W) input: "large" or "small" planes (kernels can
    win at one and lose at the other, e.g. the cpu backend's NCHW depthwise kernels)."""
    return "large" if h * w >= LARGE_PLANE else "small"


def auto_order(op: str, device: torch.device, args: tuple) -> tuple[str, ...]:
    """The backends ``auto`` tries for this call, fastest first: the measured order for the call's
    (device, op, layout, phase, size class), else for its (device, op, layout, phase), then the
    device's default order."""
    from ._auto_table import AUTO_TABLE

    x = args[0]
    layout = "channels_last" if memory_format_of(x) == torch.channels_last else "nchw"
    index = _TRAINING_ARG.get(op)
    phase = "any" if index is None else ("train" if args[index] else "eval")
    default = AUTO_PREFERENCE.get(device.type, AUTO_FALLBACK)
    key = (device.type, op, layout, phase)
    measured = ()
    if x.dim() == 4:
        measured = AUTO_TABLE.get(key + (plane_size_class(x.shape[2], x.shape[3]),), ())
    measured = measured or AUTO_TABLE.get(key, ())
    return tuple(dict.fromkeys(measured + default))


def _unavailable_reason(name: str) -> str | None:
    check = _AVAILABILITY.get(name)
    if check is None:
        return f"backend {name!r} is not installed in this build"
    return check()


def available_backends() -> list[str]:
    """Backends that can run in this process, in the canonical order of :data:`BACKENDS`."""
    return [b for b in BACKENDS if _unavailable_reason(b) is None]


def _check_name(name: object, what: str = "backend") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str naming one of {SELECTABLE}, got {type(name).__name__}")
    if name not in SELECTABLE:
        raise ValueError(f"{what} must be one of {SELECTABLE}, got {name!r}")
    return name


def _env_default() -> str:
    value = os.environ.get("FASTBLOCKS_BACKEND", "auto").strip() or "auto"
    return _check_name(value, "environment variable FASTBLOCKS_BACKEND")


class _State(threading.local):
    def __init__(self) -> None:
        self.stack: list[str] = []


_DEFAULT = [_env_default()]
_STATE = _State()


def set_backend(name: str) -> None:
    """Set the process-wide backend (``"auto"``, ``"reference"``, ``"eager"``, ...)."""
    _DEFAULT[0] = _check_name(name)


def get_backend() -> str:
    """The backend name currently requested (before ``auto`` is resolved)."""
    return _STATE.stack[-1] if _STATE.stack else _DEFAULT[0]


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Context manager: ``with fastblocks.backend("eager"): ...`` (thread-local, nestable)."""
    _STATE.stack.append(_check_name(name))
    try:
        yield
    finally:
        _STATE.stack.pop()


def requested(explicit: str | None) -> str:
    """The requested backend name for one call: the explicit argument, else the current setting."""
    return get_backend() if explicit is None else _check_name(explicit)


def resolve(op: str, name: str, device: torch.device, args: tuple) -> tuple[str, BackendImpl]:
    """Resolve ``name`` (possibly ``"auto"``) to (backend name, implementation) for ``op`` on ``args``."""
    impls = _REGISTRY.get(op, {})
    if name == "auto":
        order = auto_order(op, device, args)
        for candidate in order:
            impl = impls.get(candidate)
            if impl is None or _unavailable_reason(candidate) is not None:
                continue
            if impl.supports(*args) is None:
                return candidate, impl
        raise BackendUnavailableError(
            f"fastblocks: no backend in {order} can run {op} on device {device.type!r}"
        )
    if name == "reference":
        raise AssertionError("the reference backend runs outside the custom op")
    reason = _unavailable_reason(name)
    if reason is None and name not in impls:
        reason = f"backend {name!r} has no implementation of {op}"
    if reason is None:
        reason = impls[name].supports(*args)
    if reason is not None:
        raise BackendUnavailableError(f"fastblocks: cannot run {op} with backend {name!r}: {reason}")
    return name, impls[name]


def impl_for(op: str, name: str, device: torch.device, args: tuple) -> BackendImpl:
    """The implementation :func:`resolve` picks."""
    return resolve(op, name, device, args)[1]


# ----------------------------------------------------------------------------------------------
# Graph capture (see fastblocks/ops/_capture.py): backends whose forward / backward can be traced
# by torch.compile / torch.export instead of being called as one opaque op.
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphCapture:
    """How a backend is traced. ``reason(device)``: None when calls on ``device`` can be traced,
    else why not; ``context()``: entered around the traced call (e.g. routes kernel launches through
    ``torch.library.wrap_triton``); ``kernels()``: the Triton kernels it may launch (their source
    goes into torch.compile's cache keys)."""

    reason: Callable[[torch.device], str | None]
    context: Callable[[], contextlib.AbstractContextManager]
    kernels: Callable[[], list]


_CAPTURE: dict[str, GraphCapture] = {}


def register_graph_capture(backend: str, capture: GraphCapture) -> None:
    """Declare that ``backend``'s implementations can be traced into a graph."""
    if backend not in BACKENDS:
        raise ValueError(f"backend name must be one of {BACKENDS}, got {backend!r}")
    _CAPTURE[backend] = capture


def graph_capture(backend: str, device: torch.device) -> GraphCapture | None:
    """The backend's :class:`GraphCapture` when calls on ``device`` can be traced, else None."""
    capture = _CAPTURE.get(backend)
    if capture is None or capture.reason(device) is not None:
        return None
    return capture


def capture_kernels() -> list:
    """Every kernel a traceable backend may put into a graph."""
    return [k for capture in _CAPTURE.values() for k in capture.kernels()]
