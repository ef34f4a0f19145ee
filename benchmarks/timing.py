"""Timers: CUDA events on GPU, torch.utils.benchmark on CPU; both return median / p10 / p90 seconds.

GPU timing: warm up, then time every call with its own pair of events and take quantiles over
many calls. When one input set is smaller than the L2 cache, callers pass several input sets
(``calls``) and they are used in turn, so a kernel does not read its inputs from L2 left warm by
the previous call.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class Timing:
    median: float  # seconds
    p10: float
    p90: float
    samples: int

    def as_dict(self) -> dict:
        return {"median_s": self.median, "p10_s": self.p10, "p90_s": self.p90, "samples": self.samples}


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(times: Sequence[float]) -> Timing:
    return Timing(statistics.median(times), _quantile(times, 0.1), _quantile(times, 0.9), len(times))


def _cpu_timer(calls: Sequence[Callable[[], object]]):
    """A torch.utils.benchmark Timer whose statement runs ``calls`` in turn (one per run), warmed up."""
    from torch.utils import benchmark

    state = {"i": 0}

    def run_next() -> None:
        fn = calls[state["i"] % len(calls)]
        state["i"] += 1
        fn()

    run_next()  # warm-up (first-call allocations, lazy init)
    return benchmark.Timer(stmt="run_next()", globals={"run_next": run_next}, num_threads=torch.get_num_threads())


def time_cpu(calls: Sequence[Callable[[], object]], min_run_time: float) -> Timing:
    """torch.utils.benchmark's blocked_autorange over ``calls`` used in turn (one per run)."""
    return summarize(_cpu_timer(calls).blocked_autorange(min_run_time=min_run_time).times)


def time_cpu_interleaved(variants: dict, min_run_time: float, rounds: int = 5) -> dict:
    """Several variants ({name: calls}) timed in ``rounds`` rounds in which they take turns, each
    a blocked_autorange of ``min_run_time / rounds``: a slow spell of a shared machine then falls
    on every variant alike instead of on whichever ran during it, which keeps their ratios honest.
    Returns {name: Timing over all rounds' blocks}, or {name: the exception} for a variant that
    raised (it is dropped from the later rounds)."""
    timers, results = {}, {}
    for name, calls in variants.items():
        try:
            timers[name] = _cpu_timer(calls)
        except Exception as err:  # noqa: BLE001 - a failing variant is reported, the others go on
            results[name] = err
    times = {name: [] for name in timers}
    for _ in range(rounds):
        for name in list(timers):
            try:
                times[name] += timers[name].blocked_autorange(min_run_time=min_run_time / rounds).times
            except Exception as err:  # noqa: BLE001
                results[name] = err
                del timers[name]
    for name in timers:
        results[name] = summarize(times[name])
    return {name: results[name] for name in variants}


def time_cuda(calls: Sequence[Callable[[], object]], warmup_ms: float = 25.0, rep_ms: float = 100.0,
              max_reps: int = 1000) -> Timing:
    """Median / p10 / p90 of per-call CUDA-event times, cycling through ``calls``."""
    torch.cuda.synchronize()
    n = len(calls)
    # Estimate one call's time to size warm-up and repetitions.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    calls[0]()
    start.record()
    for i in range(5):
        calls[i % n]()
    end.record()
    torch.cuda.synchronize()
    estimate_ms = max(start.elapsed_time(end) / 5, 1e-3)
    for i in range(max(1, int(warmup_ms / estimate_ms))):
        calls[i % n]()
    reps = int(min(max_reps, max(10, rep_ms / estimate_ms)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        calls[i % n]()
        ends[i].record()
    torch.cuda.synchronize()
    return summarize([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)])


def cpu_run_time(quick: bool) -> float:
    """Seconds of timed runs per variant on CPU."""
    return 0.3 if quick else 1.0


def time_calls(device: str, calls: Sequence[Callable[[], object]], quick: bool) -> Timing:
    if device == "cuda":
        return time_cuda(calls, rep_ms=60.0 if quick else 200.0)
    return time_cpu(calls, min_run_time=cpu_run_time(quick))


def time_cuda_graph(calls: Sequence[Callable[[], object]], quick: bool, max_replays: int = 200) -> Timing:
    """Per-call device time with the host out of the picture: ``calls`` (each once, in turn) are
    captured into one CUDA graph, and each replay is timed with its own pair of events; the
    quantiles are of replay time / len(calls).

    Per-call event timing (:func:`time_cuda`) measures the host when it issues work slower than
    the GPU runs it (a few-microsecond kernel behind ~100 us of Python), so that timing says what
    an eager caller gets and this one what the kernels cost (for many small launches, capture a
    graph and time its replays). The calls must already have run (autotuning and
    compilation happen outside the capture); they are run three more times on a side stream
    before capture, as torch.cuda.make_graphed_callables does for autograd. Raises whatever the
    capture raises (a host sync inside a call, say)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for fn in calls:
                fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for fn in calls:
                fn()
        # per-replay events, as for any call (the first replay, its estimate run, uploads the graph)
        t = time_cuda([graph.replay], warmup_ms=0.0, rep_ms=30.0 if quick else 200.0, max_reps=max_replays)
        n = len(calls)
        return Timing(t.median / n, t.p10 / n, t.p90 / n, t.samples)
    finally:
        del graph
        torch.cuda.synchronize()


def l2_bytes(device: str) -> int:
    """L2 cache size of the current GPU (0 on CPU: the CPU rows reuse one input set)."""
    if device != "cuda":
        return 0
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 50 * 2**20))


def copies_to_defeat_l2(device: str, bytes_per_set: int, limit: int = 8) -> int:
    """How many distinct input sets to rotate so that consecutive calls do not hit a warm L2."""
    l2 = l2_bytes(device)
    if l2 == 0 or bytes_per_set <= 0:
        return 1
    return int(min(limit, max(1, -(-3 * l2 // bytes_per_set))))


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> dict:
    """Measured device-to-device copy bandwidth (bytes read + written per second)."""
    if device != "cuda":
        nbytes = min(nbytes, 256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_calls(device, [lambda: dst.copy_(src)], quick=False)
    return {"bytes": 2 * nbytes, "median_s": t.median, "bytes_per_s": 2 * nbytes / t.median}


def time_repeats(device: str, fn: Callable[[], object], repeats: int, warmup: int = 2) -> Timing:
    """``repeats`` timed calls of a long-running ``fn`` (a model step): CUDA events on GPU,
    torch.utils.benchmark (one call per measurement) on CPU."""
    if device != "cuda":
        (result,) = time_repeats_interleaved([fn], repeats, warmup)
        if isinstance(result, Exception):
            raise result
        return result
    for _ in range(warmup):
        fn()
    return time_cuda([fn], warmup_ms=0.0, rep_ms=0.0, max_reps=repeats) if repeats else summarize([0.0])


def time_repeats_interleaved(fns: Sequence[Callable[[], object]], repeats: int, warmup: int = 2, block: int = 1,
                             pause: float = 0.0, settle: float = 0.0, turn_cap: float = 0.2) -> list:
    """CPU: ``repeats`` rounds in which every long-running ``fn`` (a model step) takes a turn. On a
    shared machine a slow spell then falls on every fn alike instead of on whichever ran during it
    (timed one after another, identical code measured 10-20% apart on a shared 2-core machine).
    One wall-clock reading per call: steps last milliseconds and more (torch.utils.benchmark's
    timeit(1) would run each twice more as its own warm-up).

    A turn with ``pause`` > 0 first sleeps ``pause`` seconds and makes untimed calls for ``settle``
    seconds (at least one call): runtimes whose worker threads spin after a call (ONNX Runtime,
    OpenVINO's TBB) otherwise steal the cores from whichever fn runs next on a small machine (a
    batch-1 model measured ~1.4x slower in the calls right after an ONNX Runtime turn than after
    its own, and its first calls after the 20 ms pause 1.5-2.7x: the next fn's threads only
    settle ~30 ms in), and a fn's first call after another's finds cold caches. Then up to
    ``block`` calls are timed (at least one; no new call after ``turn_cap`` seconds). Returns one
    Timing per fn, or the exception for a fn that raised (dropped from later rounds)."""
    results: list = [None] * len(fns)
    times: dict = {}
    for i, fn in enumerate(fns):
        try:
            for _ in range(warmup):
                fn()
            times[i] = []
        except Exception as err:  # noqa: BLE001 - a failing fn is reported, the others go on
            results[i] = err
    for _ in range(repeats):
        for i in list(times):
            try:
                if pause > 0:
                    time.sleep(pause)
                    settle_end = time.perf_counter() + settle
                    fns[i]()
                    while time.perf_counter() < settle_end:
                        fns[i]()
                turn_start = time.perf_counter()
                for k in range(max(1, block)):
                    if k and time.perf_counter() - turn_start > turn_cap:
                        break
                    start = time.perf_counter()
                    fns[i]()
                    times[i].append(time.perf_counter() - start)
            except Exception as err:  # noqa: BLE001
                results[i] = err
                del times[i]
    for i, samples in times.items():
        results[i] = summarize(samples)
    return results
