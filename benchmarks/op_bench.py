"""Op-level benchmark: each fused op on real layer shapes, three modes, every variant.

Modes: ``eval`` (forward, no grad, running statistics), ``train_fwd`` (forward with autograd
recording, batch statistics), ``train_fwd_bwd`` (forward + backward to x and every parameter).
Variants: ``reference`` (plain PyTorch composition, eager), ``compile`` (torch.compile of that same
reference module) and each available fastblocks backend. Every variant is checked against a
float64 run of the reference on the same inputs before it is timed; a variant that fails the check
is reported, not timed. On CUDA each variant is timed twice (the row's ``timing``): per call, as an
eager caller waits for it, and as CUDA-graph replays, the device time alone.
"""

from __future__ import annotations

import contextlib
import copy
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import fastblocks as fb
from fastblocks.utils import saved_tensor_bytes

from .cases import OpCase, iter_with_bn, set_backend, set_training, to_float64
from .compiled import ExpectCompiled, compile_fresh
from .timing import copies_to_defeat_l2, cpu_run_time, time_calls, time_cpu_interleaved, time_cuda_graph

MODES = ("eval", "train_fwd", "train_fwd_bwd")
# How a row was timed: per-call CUDA events / CPU timer (what an eager caller waits), or CUDA-graph
# replays (GPU only: what the kernels cost with the host's launch overhead removed).
PER_CALL, CUDA_GRAPH = "per_call", "cuda_graph"
TIMINGS = (PER_CALL, CUDA_GRAPH)
# rel. error bounds (CONVENTIONS numerics table): forward, gradients
TOLERANCE = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-4),
             torch.float16: (1e-2, 2e-2), torch.bfloat16: (1e-2, 2e-2)}


def minimal_bytes(op: str, mode: str, x_bytes: int, y_bytes: int) -> int:
    """Bytes a fused implementation must move, counting full-size tensors only ((N, C) vectors
    and weights are negligible). Statistics need a pass over the input before normalising, so a
    training forward reads x twice; a backward reads x and dy once for the per-channel reductions
    and again to write dx (conv output and activation are recomputed, never stored). SE / ECA read
    x once to pool and once to scale."""
    two_pass = op in ("dwconv_bn_act", "bn_act")
    gated = op in ("squeeze_excite", "eca")
    x_reads = 2 if gated or (two_pass and mode != "eval") else 1
    fwd = x_reads * x_bytes + y_bytes
    if mode != "train_fwd_bwd":
        return fwd
    dy_bytes, dx_bytes = y_bytes, x_bytes
    if two_pass:
        bwd = 2 * x_bytes + 2 * dy_bytes + dx_bytes
    elif gated or op == "gate_scale":
        bwd = x_bytes + 2 * dy_bytes + dx_bytes
    else:  # activation
        bwd = x_bytes + dy_bytes + dx_bytes
    return fwd + bwd


@dataclass
class Inputs:
    x: torch.Tensor
    dy: Optional[torch.Tensor]


def _make_inputs(case: OpCase, module: torch.nn.Module, batch: int, device: str, dtype: torch.dtype,
                 memory_format, seed: int) -> Inputs:
    g = torch.Generator(device="cpu").manual_seed(seed)
    c, h, w = case.shape
    x = torch.randn(batch, c, h, w, generator=g, dtype=torch.float32)
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)
    with torch.no_grad():
        set_training(module, False)
        y = module(x)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    return Inputs(x, dy.contiguous(memory_format=memory_format))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _run(module, mode: str, inp: Inputs, params: list) -> list[torch.Tensor]:
    """The op call for ``mode``; returns [y] or [y, dx, *dparams]."""
    if mode == "eval":
        with torch.no_grad():
            return [module(inp.x)]
    x = inp.x.detach().requires_grad_(True)
    y = module(x)
    if mode == "train_fwd":
        return [y]
    grads = torch.autograd.grad(y, [x] + params, inp.dy)
    return [y] + list(grads)


def _params(module) -> list:
    seen, out = set(), []
    for m in iter_with_bn(module):
        for p in m.parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _check(outs: list, refs: list, dtype: torch.dtype, baseline: Optional[list] = None) -> Optional[str]:
    """None when every output / gradient is within the dtype's tolerance of the float64 run, or no
    worse than twice the error of ``baseline`` (the eager reference's own errors in this dtype:
    some gradients are ill-conditioned or exactly zero in exact arithmetic, e.g. the bias before a
    training-mode BN, where no finite-precision implementation meets a relative bound)."""
    fwd_tol, grad_tol = TOLERANCE[dtype]
    for i, (a, b) in enumerate(zip(outs, refs)):
        tol = fwd_tol if i == 0 else grad_tol
        if baseline is not None and baseline[i] < float("inf"):
            tol = max(tol, 2 * baseline[i])
        err = _rel_err(a, b)
        if not err <= tol:
            what = "output" if i == 0 else f"gradient {i - 1}"
            return f"{what} rel. error {err:.2e} > {tol:.1e}"
    return None


class VariantFactory:
    """Builds the module each variant times. The "compile" variant is compiled once per (case,
    training): train_fwd and train_fwd_bwd time the same compiled module (one forward + backward
    compile serves both), each build on a fresh Dynamo cache (see benchmarks/compiled.py)."""

    def __init__(self, backends: list[str], with_compile: bool):
        self.backends = backends
        self.with_compile = with_compile
        self._compiled: Optional[tuple] = None  # (base, training, owner, fn)

    def names(self) -> list[str]:
        return ["reference"] + (["compile"] if self.with_compile else []) + self.backends

    @staticmethod
    def build(name: str, base: torch.nn.Module, training: bool):
        """(module owning the parameters, callable to time) of an uncompiled variant."""
        m = copy.deepcopy(base)
        set_training(m, training)
        set_backend(m, "reference" if name in ("reference", "compile") else name)
        return m, m

    def variant(self, name: str, base: torch.nn.Module, training: bool):
        """(owner, fn, fresh): ``fresh`` is True when ``fn`` is a newly compiled module whose first
        call must compile a graph."""
        if name != "compile":
            return (*self.build(name, base, training), False)
        cached = self._compiled
        if cached is not None and cached[0] is base and cached[1] == training:
            return cached[2], cached[3], False
        owner, _ = self.build(name, base, training)
        fn = compile_fresh(owner, dynamic=False)
        self._compiled = (base, training, owner, fn)
        return owner, fn, True


def bench_case(case: OpCase, factory: VariantFactory, *, device: str, dtype: torch.dtype, batch: int,
               memory_format, modes: tuple, quick: bool, copy_bps: Optional[float],
               on_row: Callable[[dict], None]) -> None:
    base = case.instantiate(device, dtype)
    layout = "channels_last" if memory_format == torch.channels_last else "nchw"
    first = _make_inputs(case, base, batch, device, dtype, memory_format, seed=0)
    x_bytes = first.x.numel() * first.x.element_size()
    y_bytes = first.dy.numel() * first.dy.element_size()
    n_sets = copies_to_defeat_l2(device, x_bytes + y_bytes)
    inputs = [first] + [_make_inputs(case, base, batch, device, dtype, memory_format, seed=s)
                        for s in range(1, n_sets)]
    for mode in modes:
        training = mode != "eval"
        ref64, _ = VariantFactory.build("reference", base, training)
        ref64 = to_float64(ref64)
        ref_in = Inputs(first.x.double(), first.dy.double())
        expected = _run(ref64, mode, ref_in, _params(ref64))
        ref_lp, _ = VariantFactory.build("reference", base, training)
        baseline = [_rel_err(a, b) for a, b in zip(_run(ref_lp, mode, first, _params(ref_lp)), expected)]
        base_row = dict(op=case.op, label=case.label, model=case.model, path=case.path, shape=list(case.shape),
                        config=case.config, also_in=[f"{m}:{p}" for m, p in case.also_in], mode=mode,
                        batch=batch, dtype=str(dtype).replace("torch.", ""), layout=layout,
                        min_bytes=minimal_bytes(case.op, mode, x_bytes, y_bytes))
        # Every variant is built and checked first; then the correct ones are timed (on CPU
        # together, taking turns: benchmarks.timing.time_cpu_interleaved), and the rows are
        # reported in the variants' order.
        rows, timed = {}, {}
        for name in factory.names():
            row = rows[name] = dict(base_row, variant=name, timing=PER_CALL)
            try:
                owner, fn, fresh = factory.variant(name, base, training)
                params = _params(owner)
                with ExpectCompiled(f"{case.label} ({mode})") if fresh else contextlib.nullcontext():
                    outs = _run(fn, mode, first, params)
                problem = _check(outs, expected, dtype, baseline)
                if problem is not None:
                    row.update(status="wrong", error=problem)
                    continue
                if mode == "train_fwd" and name != "compile":
                    row["saved_bytes"] = saved_tensor_bytes(lambda: fn(first.x.detach().requires_grad_(True)))
                timed[name] = [(lambda inp=inp, fn=fn, params=params: _run(fn, mode, inp, params)) for inp in inputs]
            except Exception as err:  # a variant that crashes is a result to report, not a reason to stop
                _report_failure(row, err, device)
        graph_rows = {}
        if device == "cuda":
            for name, calls in timed.items():
                row = rows[name]
                try:
                    row.update(status="ok", **time_calls(device, calls, quick).as_dict())
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    calls[0]()
                    torch.cuda.synchronize()
                    row["peak_bytes"] = torch.cuda.max_memory_allocated()
                    _add_bandwidth(row, copy_bps)
                    graph_rows[name] = _graph_row(row, calls, quick, copy_bps)
                except Exception as err:
                    _report_failure(row, err, device)
        else:
            for name, result in time_cpu_interleaved(timed, min_run_time=cpu_run_time(quick)).items():
                row = rows[name]
                if isinstance(result, Exception):
                    _report_failure(row, result, device)
                else:
                    row.update(status="ok", **result.as_dict())
        for name, row in rows.items():
            on_row(row)
            if name in graph_rows:
                on_row(graph_rows[name])


def _report_failure(row: dict, err: Exception, device: str) -> None:
    if isinstance(err, fb.BackendUnavailableError):
        row.update(status="n/a", error=str(err).split(": ")[-1])
        return
    row.update(status="error", error=f"{type(err).__name__}: {err}".splitlines()[0][:300])
    if device == "cuda":
        torch.cuda.synchronize()
    traceback.print_exception(err)


def _add_bandwidth(row: dict, copy_bps: Optional[float]) -> None:
    row["bytes_per_s"] = row["min_bytes"] / row["median_s"]
    if copy_bps:
        row["frac_copy_bw"] = row["bytes_per_s"] / copy_bps


def _graph_row(row: dict, calls: list, quick: bool, copy_bps: Optional[float]) -> dict:
    """The same variant timed as CUDA-graph replays (device time, no host launch cost): a row with
    timing "cuda_graph", or status "error" with the reason when the calls cannot be captured."""
    out = {k: v for k, v in row.items() if k not in ("median_s", "p10_s", "p90_s", "samples",
                                                      "bytes_per_s", "frac_copy_bw")}
    out["timing"] = CUDA_GRAPH
    try:
        out.update(time_cuda_graph(calls, quick).as_dict())
    except Exception as err:
        out.update(status="error", error=f"CUDA graph capture: {type(err).__name__}: {err}".splitlines()[0][:300])
        try:
            torch.cuda.synchronize()
        except Exception as sync_err:  # the per-call row stands; say the device is left broken
            out["error"] += f"; then {type(sync_err).__name__}: {sync_err}".splitlines()[0][:200]
        return out
    _add_bandwidth(out, copy_bps)
    return out


def warm_compile(case: OpCase, *, device: str, dtype: torch.dtype, batch: int, memory_format,
                 modes: tuple) -> None:
    """The first call of each mode's ``compile`` variant exactly as :func:`bench_case` makes it
    (same module, inputs and call; nothing checked or timed): what torch.compile writes to its
    on-disk caches then serves the benchmark's compiles (``benchmarks.gpu.inductor_warm``)."""
    factory = VariantFactory([], with_compile=True)
    base = case.instantiate(device, dtype)
    first = _make_inputs(case, base, batch, device, dtype, memory_format, seed=0)
    for mode in modes:
        owner, fn, fresh = factory.variant("compile", base, mode != "eval")
        with ExpectCompiled(f"{case.label} ({mode})") if fresh else contextlib.nullcontext():
            _run(fn, mode, first, _params(owner))
