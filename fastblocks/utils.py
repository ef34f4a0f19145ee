"""Measurement helpers."""

from __future__ import annotations

from typing import Any, Callable

import torch


def saved_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Bytes autograd keeps for backward while ``fn()`` runs, each storage counted once.

    Every tensor saved for backward (by ATen autograd formulas, custom Functions and custom ops)
    passes through ``torch.autograd.graph.saved_tensors_hooks``; we record its storage and size.
    Parameters saved by the graph count too (they are a small, equal share for every variant).
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

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())
