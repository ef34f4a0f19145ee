"""Recompute-on-load across ops: keep a cheap recipe instead of a full-size activation.

Inside :func:`recompute_scope` (entered by patched models around their forward), fused ops
*offer* their output with a recipe (e.g. y = act(BN(x)) from x and per-channel stats, or
y = x * gate(logits)). When autograd later saves such a tensor for backward - typically as the
input of the next conv - the saved-tensor hook stores the recipe (whose sources are saved anyway)
instead, and recomputes the tensor when backward unpacks it. This is how a patched MBConv keeps
neither the expansion activation nor the SE output, only the expansion conv output and the
depthwise output.

Outside a scope, under torch.compile (whose partitioner already recomputes) or without grad
mode, offering is a no-op.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Callable, Iterator

import torch

from . import utils


class _Recipe:
    __slots__ = ("fn", "args", "extra")

    def __init__(self, fn: Callable, args: tuple, extra: tuple):
        self.fn, self.args, self.extra = fn, args, extra

    def materialise(self) -> torch.Tensor:
        return self.fn(*(_unpack(a) for a in self.args), *self.extra)


class _SharedSource:
    """One source tensor behind several recipes (the channel slices of one tensor, see
    :func:`offer_parts`): packed once, and materialised once, the result kept while any of those
    recipes is alive (their backward nodes run one after another)."""

    __slots__ = ("source", "packed", "value")

    def __init__(self, source: torch.Tensor):
        self.source, self.packed, self.value = source, None, None

    def pack(self) -> "_SharedSource":
        if self.source is not None:
            self.packed, self.source = _pack(self.source), None  # keep no reference past packing
        return self

    def materialise(self) -> torch.Tensor:
        if self.value is None:
            self.value = _unpack(self.packed)
        return self.value


class _State(threading.local):
    def __init__(self) -> None:
        self.depth = 0
        self.offers: dict = {}


_STATE = _State()


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def offer(y: torch.Tensor, fn: Callable, sources: tuple, extra: tuple = ()) -> None:
    """Declare that ``y == fn(*sources, *extra)``; used only if something saves ``y`` in this scope."""
    if _STATE.depth == 0 or not torch.is_grad_enabled() or _compiling():
        return
    _STATE.offers[id(y)] = (weakref.ref(y), y._version, sources, fn, extra)


def offer_parts(parts: list, fn: Callable, source: torch.Tensor, extras: list) -> None:
    """Declare ``parts[i] == fn(source, *extras[i])`` (e.g. channel slices of ``source``) with one
    shared packing of ``source``: saving several parts stores ``source`` (or its own recipe) once,
    and backward recomputes it once."""
    if _STATE.depth == 0 or not torch.is_grad_enabled() or _compiling():
        return
    shared = _SharedSource(source)
    for part, extra in zip(parts, extras):
        offer(part, fn, (shared,), tuple(extra))


def _pack_source(s):
    if isinstance(s, torch.Tensor):
        return _pack(s)
    return s.pack() if isinstance(s, _SharedSource) else s


def _pack(t: torch.Tensor):
    entry = _STATE.offers.get(id(t))
    # Only the unmodified tensor equals its recipe: an in-place op (x += shortcut, ReLU(inplace))
    # bumps the version counter, and then the tensor itself is saved.
    if entry is not None and entry[0]() is t and entry[1] == t._version:
        _, _, sources, fn, extra = entry
        return _Recipe(fn, tuple(_pack_source(s) for s in sources), extra)
    utils.notify_saved(t)
    return t


def _unpack(obj):
    return obj.materialise() if isinstance(obj, (_Recipe, _SharedSource)) else obj


@contextlib.contextmanager
def recompute_scope() -> Iterator[None]:
    """Activate recompute-on-load for the fused ops run inside (no-op under torch.compile / no_grad)."""
    if _compiling() or not torch.is_grad_enabled():
        yield
        return
    _STATE.depth += 1
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _STATE.depth -= 1
        if _STATE.depth == 0:
            _STATE.offers.clear()
