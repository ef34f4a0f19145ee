"""Recompute-on-load across ops: keep a cheap recipe instead of a full-size activation.

Inside :func:`recompute_scope` (entered by patched models around their forward), fused ops
*offer* their output with a recipe (e.g. y = act(BN(x)) from x and per-channel stats, or
y = x * gate(logits)). When autograd later saves such a tensor for backward - typically as the
input of the next conv - the saved-tensor hook stores the recipe (whose sources are saved anyway)
instead, and recomputes the tensor when backward unpacks it. This is how a patched MBConv keeps
neither the expansion activation nor the SE output, only the expansion conv output and the
depthwise output.

Outside a scope, under torch.compile (whose partitioner already recomputes) or without grad
mode, offering is a no-op. Where saved-tensor hooks are disabled (inside ``torch.func.grad``,
``vjp``, ``jacrev``, ``hessian``, which refuse them), a scope installs none: the ops' outputs are then
saved as plain tensors (the fused ops themselves still save only their inputs and statistics).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Callable, Iterator

import torch

from . import utils


class _Recipe:
    """How to recompute one offered tensor. One recipe per tensor and scope, however many saves
    (or other recipes) refer to it, and it is computed once: the result is kept while anything
    still holds the recipe (e.g. a depthwise output both saved by the SE and a source of the SE
    output's recipe; never longer than the tensor itself would have been kept without recompute)."""

    __slots__ = ("fn", "args", "extra", "value")

    def __init__(self, fn: Callable, args: tuple, extra: tuple):
        self.fn, self.args, self.extra, self.value = fn, args, extra, None

    def materialise(self) -> torch.Tensor:
        if self.value is None:
            # no_grad: a backward building a graph (create_graph=True) unpacks with grad mode on, but
            # autograd links the unpacked tensor to the saved one's graph itself.
            with torch.no_grad():
                self.value = self.fn(*(_unpack(a) for a in self.args), *self.extra)
            self.args = ()  # the sources' own recipes (and their results) can go
        return self.value


# What a scope recomputes: "elementwise" (BN + act, gate * x: cheap) or also "depthwise" (a fused
# depthwise conv's output, recomputed by its one-pass eval form: more saved, more time).
LEVELS = ("elementwise", "depthwise")


class _State(threading.local):
    def __init__(self) -> None:
        self.depth = 0
        self.level = "elementwise"
        self.offers: dict = {}


_STATE = _State()


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def _hooks_allowed() -> bool:
    """Saved-tensor hooks may be installed here (functorch's grad transforms disable them)."""
    allowed = getattr(torch._C._autograd, "_saved_tensors_hooks_is_enabled", None)
    return allowed is None or allowed()


def offer(y: torch.Tensor, fn: Callable, sources: tuple, extra: tuple = (), level: str = "elementwise") -> None:
    """Declare that ``y == fn(*sources, *extra)``; used only if something saves ``y`` in a scope
    whose level includes ``level`` (:data:`LEVELS`)."""
    if _STATE.depth == 0 or not torch.is_grad_enabled() or _compiling():
        return
    if LEVELS.index(level) > LEVELS.index(_STATE.level):
        return
    _STATE.offers[id(y)] = [weakref.ref(y), y._version, sources, fn, extra, None]  # None: no recipe yet


def _channel_slice(source: torch.Tensor, start: int, size: int, fmt) -> torch.Tensor:
    part = source.narrow(1, start, size)
    return part if fmt is None else part.contiguous(memory_format=fmt)


def offer_channel_slices(parts, source: torch.Tensor, fmt=None) -> None:
    """Declare that ``parts`` are ``source`` split along dim 1 in order (views, or dense copies in
    memory format ``fmt``): a saved part is then recomputed from ``source`` (or its own recipe,
    computed once for all the parts)."""
    start = 0
    for part in parts:
        offer(part, _channel_slice, (source,), (start, part.shape[1], fmt))
        start += part.shape[1]


def _pack(t: torch.Tensor):
    entry = _STATE.offers.get(id(t))
    # Only the unmodified tensor equals its recipe: an in-place op (x += shortcut, ReLU(inplace))
    # bumps the version counter, and then the tensor itself is saved.
    if entry is not None and entry[0]() is t and entry[1] == t._version:
        if entry[5] is None:
            _, _, sources, fn, extra, _ = entry
            entry[5] = _Recipe(fn, tuple(_pack(s) if isinstance(s, torch.Tensor) else s for s in sources), extra)
        return entry[5]
    utils.notify_saved(t)
    return t


def _unpack(obj):
    return obj.materialise() if isinstance(obj, _Recipe) else obj


def check_level(level: object) -> str:
    """``level`` if it is one of :data:`LEVELS`, else a TypeError / ValueError naming ``recompute``."""
    if not isinstance(level, str):
        raise TypeError(f"recompute must be a str, one of {LEVELS}, got {type(level).__name__}")
    if level not in LEVELS:
        raise ValueError(f"recompute must be one of {LEVELS}, got {level!r}")
    return level


@contextlib.contextmanager
def recompute_scope(level: str = "elementwise") -> Iterator[None]:
    """Activate recompute-on-load for the fused ops run inside (no-op under torch.compile, no_grad
    and where saved-tensor hooks are disabled).
    ``level="depthwise"`` also recomputes fused depthwise outputs (see :data:`LEVELS`)."""
    check_level(level)
    if _compiling() or not torch.is_grad_enabled() or not _hooks_allowed():
        yield
        return
    _STATE.depth += 1
    outer, _STATE.level = _STATE.level, level
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _STATE.depth -= 1
        _STATE.level = outer
        if _STATE.depth == 0:
            _STATE.offers.clear()
