"""torch.compile for the benchmarks' "compile" variants: a fresh Dynamo cache for each, and proof
that it compiled.

Dynamo keeps one cache per code object and, after ``recompile_limit`` (8) entries, runs that code
eagerly with only a log warning. Every op case's reference module shares one ``forward``, so
without a reset only the first eight (case, mode) compiles were compiled at all: the rest of a
"compile" column would have timed eager PyTorch under the compile label.
"""

from __future__ import annotations

from typing import Callable

import torch


def compile_fresh(fn: Callable, **kwargs) -> Callable:
    """``torch.compile(fn, **kwargs)`` after ``torch._dynamo.reset()``. Resetting discards every
    earlier compiled variant, so build one only after the previous one is no longer timed."""
    torch._dynamo.reset()
    return torch.compile(fn, **kwargs)


def graphs_compiled() -> int:
    """Graphs Dynamo has compiled in this process (a counter that only grows)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class ExpectCompiled:
    """``with ExpectCompiled("what"): first_call()`` raises RuntimeError when the calls inside
    compiled no graph (a frame Dynamo skipped or ran eagerly): a compile row must time compiled code."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> "ExpectCompiled":
        self._before = graphs_compiled()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and graphs_compiled() == self._before:
            raise RuntimeError(f"torch.compile compiled no graph for {self.what}: it would have run eagerly")
        return False


def compile_cache_counters() -> dict:
    """Hits / misses of torch.compile's on-disk caches in this process (Inductor's FX graph cache,
    the AOTAutograd cache): whether a warm-up (``benchmarks.gpu.inductor_warm``) served the compiles."""
    from torch._dynamo.utils import counters

    return {f"{group}.{name}": int(n) for group in ("inductor", "aot_autograd")
            for name, n in sorted(counters[group].items())
            if name.startswith(("fxgraph_cache", "autograd_cache"))}
