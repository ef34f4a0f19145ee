"""A benchmark run's wall-clock deadline.

A run with a fixed time (a job's time limit, a step of the GPU suite) that is killed at its limit
leaves only what it already wrote. With ``--deadline`` the run skips work that would end past the deadline
(judged by the longest piece of the same kind so far) and records what it skipped, so the results
it writes are complete for what they contain and honest about what they lack.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Iterator, Optional


def parse_deadline(text: str) -> float:
    """``+SECONDS`` (from now) or an absolute Unix time; argparse type for ``--deadline``."""
    try:
        value = float(text[1:]) if text.startswith("+") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected +SECONDS or a Unix time, got {text!r}") from None
    at = time.time() + value if text.startswith("+") else value
    if value <= 0 or at <= time.time():
        raise argparse.ArgumentTypeError(f"the deadline {text!r} is not in the future")
    return at


class Deadline:
    """``allows(kind)`` before a piece of work, ``with measure(kind):`` around it."""

    def __init__(self, at: Optional[float]):
        self.at = at
        self.longest: dict[str, float] = {}
        self.skipped: list[str] = []

    def allows(self, kind: str, what: str, default_s: float = 0.0) -> bool:
        """True when ``what`` (a piece of ``kind``) is expected to end before the deadline; else
        records it as skipped. ``default_s``: the expected length before one has been measured."""
        if self.at is None or time.time() + self.longest.get(kind, default_s) <= self.at:
            return True
        self.skipped.append(what)
        return False

    @contextlib.contextmanager
    def measure(self, kind: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.longest[kind] = max(self.longest.get(kind, 0.0), time.time() - start)
