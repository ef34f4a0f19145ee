"""Run one command split over parallel processes: ``python -m MODULE ... --shard i/N``.

The warm-up tools (``triton_warm``, ``inductor_warm``) compile ahead of a GPU run what the run would
otherwise compile one piece after another; each process takes every N-th piece.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Optional


def parse_shard(text: str) -> tuple[int, int]:
    """"i/N" -> (i, N)."""
    index, count = (int(v) for v in text.split("/"))
    if not 0 <= index < count:
        raise ValueError(f"--shard must be i/N with 0 <= i < N, got {text!r}")
    return index, count


def run_shards(module: str, argv: list[str], jobs: int, deadline: Optional[float] = None,
               env: Optional[dict] = None) -> int:
    """Start ``jobs`` processes ``python -m module *argv --shard i/jobs`` and wait for them; those
    still running at ``deadline`` (a Unix time) are killed. Returns the largest |exit code|."""
    if jobs < 1:
        print(f"{module}: nothing to do", flush=True)
        return 0
    start = time.time()
    full_env = dict(os.environ, **(env or {}))
    procs = [subprocess.Popen([sys.executable, "-m", module, *argv, "--shard", f"{i}/{jobs}"], env=full_env)
             for i in range(jobs)]
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=None if deadline is None else max(0.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            p.kill()  # what a killed worker already wrote to a cache is whole (both caches write atomically)
            codes.append(p.wait())
    late = sum(c < 0 for c in codes)
    print(f"{module}: {jobs} processes, {time.time() - start:.0f} s"
          + (f", {late} stopped at the deadline" if late else ""), flush=True)
    return max(abs(c) for c in codes)
