"""Measurement helpers."""

from __future__ import annotations

from typing import Any, Callable

import torch


_OBSERVERS: list = []


def notify_saved(t: torch.Tensor) -> None:
    """Called by fastblocks' own saved-tensor hooks (recompute scopes shadow outer hooks), so
    :func:`saved_tensor_bytes` still sees every tensor kept for backward."""
    for observer in _OBSERVERS:
        observer(t)


def saved_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Bytes autograd keeps for backward while ``fn()`` runs, each storage counted once.

    Every tensor saved for backward (by ATen autograd formulas, custom Functions and custom ops)
    passes through ``torch.autograd.graph.saved_tensors_hooks``; we record its storage and size.
    Parameters saved by the graph count too (they are a small, equal share for every variant).
    Tensors kept by fastblocks' recompute-on-load hooks (patched models) are counted as well: for
    a recomputed tensor, its sources.
    """
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            key = (t.device.type, t.device.index, storage.data_ptr())
            seen[key] = max(seen.get(key, 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse)
            seen[("id", id(t))] = t.numel() * t.element_size()
        return t

    _OBSERVERS.append(pack)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        _OBSERVERS.remove(pack)
    return sum(seen.values())
