"""What the Triton kernels compile to for a GPU, on a machine without one.

``python -m benchmarks.triton_codegen [--arch 90] [--models efficientnet_b0 | smoke] [--ops ...]
[--dtype bfloat16] [--channels-last] [--batch 16] [--configs all|first] [--modes ...] [--limit N]
[--tag T]``

Rows that look alike in the table differ in Triton's integer specialisation (an argument divisible
by 16, or equal to 1), which gives a separate binary.

Runs every op case of the models (the shapes ``benchmarks.run`` times, from ``cases.py``) through
the ``triton`` backend in eval, train forward and train forward+backward on CPU tensors, with a
stand-in CUDA driver: every kernel launch becomes a compile for ``sm_<arch>`` (each autotune
config, or the first) and nothing runs. Each distinct compiled kernel is then read back:

- registers, spill stores and stack frame per thread (``ptxas -v`` on the PTX), shared memory,
  the occupancy they allow;
- PTX instructions inside loops (the per-tile body of the persistent passes), and how many of
  them are warp shuffles / barriers (cross-thread reductions);
- the widest global load / store in the PTX (16 bytes = one 128-bit access per thread; 2 or 4
  bytes means the bandwidth-bound passes execute 4-8x more memory instructions than needed).

It says nothing about speed; it shows whether the code the targets depend on was generated (and
whether it compiles at all with the installed Triton) on a machine without a GPU. Writes
benchmarks/results/codegen-sm<arch>-triton<version>[-tag].json and .md. Run it in its own process:
it replaces Triton's active driver and the JIT's launch path for the whole process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Hopper: per-SM limits used for the occupancy estimate.
SM_LIMITS = {"regs": 65536, "warps": 64, "blocks": 32, "smem": 228 * 1024, "smem_per_block_reserved": 1024}
H100_SMS = 132
MODES = ("eval", "train_fwd", "train_fwd_bwd")


@dataclass
class Compiled:
    """One compiled kernel specialization."""
    kernel: str
    constexprs: dict
    num_warps: int
    num_stages: int
    binary: object = field(repr=False)
    cases: list = field(default_factory=list)  # "model path mode" that launched it


def _constexpr_view(fn, kwargs: dict) -> dict:
    """The compile-time parameters of a launch, printable (block sizes, MODE, ACT, ...)."""
    names = {p.name for p in fn.params if p.is_constexpr}
    out = {}
    for k, v in kwargs.items():
        if k in names:
            out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def stand_in_cuda_driver(arch: int = 90):
    """A Triton driver that reports a CUDA ``sm_<arch>`` target without a GPU: enough for Triton
    to compile (and for torch's Triton-kernel analysis to lower to TTIR), nothing can launch."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    target = GPUTarget("cuda", arch, 32)

    class StandInCudaDriver(DriverBase):
        @classmethod
        def is_active(cls):
            return True

        def map_python_to_cpp_type(self, ty):
            return "void*"

        def get_current_target(self):
            return target

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise RuntimeError("compile-only: nothing is benchmarked")

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

    return StandInCudaDriver()


class CompileOnly(contextlib.AbstractContextManager):
    """Every Triton launch in the block compiles for ``sm_<arch>`` and returns without running.

    Autotuned kernels compile each config (``all_configs``) or the first. The ``triton`` backend
    is told to accept CPU tensors (its interpreter path), while the kernels keep their GPU
    autotune configs, so nothing else in the call chain changes.
    """

    def __init__(self, arch: int = 90, all_configs: bool = True, sms: int = H100_SMS):
        self.arch = arch
        self.all_configs = all_configs
        self.sms = sms
        self.compiled: dict[tuple, Compiled] = {}
        self.label = ""
        self._undo = []

    def _patch(self, obj, name, value):
        self._undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def __enter__(self):
        import triton
        from triton.runtime import driver as driver_config
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction

        import fastblocks.kernels._common as common
        from fastblocks.backends import triton as triton_backend

        if common.INTERPRET:
            raise RuntimeError("unset TRITON_INTERPRET: the kernels were imported for the interpreter")
        self._patch(driver_config, "_active", stand_in_cuda_driver(self.arch))
        ctx = self
        jit_run = JITFunction.run

        def run(fn, *args, grid, warmup, **kwargs):
            binary = jit_run(fn, *args, grid=grid, warmup=True, **kwargs)
            view = _constexpr_view(fn, kwargs)
            warps = kwargs.get("num_warps", binary.metadata.num_warps)
            stages = kwargs.get("num_stages", binary.metadata.num_stages)
            key = (fn.__name__, tuple(sorted(view.items())), warps, stages, binary.hash)
            entry = ctx.compiled.setdefault(key, Compiled(fn.__name__, view, warps, stages, binary))
            if ctx.label and ctx.label not in entry.cases:
                entry.cases.append(ctx.label)
            return binary

        def autotuned_run(tuner, *args, **kwargs):
            kwargs.pop("warmup", None)
            tuner.nargs = dict(zip(tuner.arg_names, args))
            configs = tuner.prune_configs(kwargs)  # what the autotuner would benchmark
            configs = configs if ctx.all_configs else configs[:1]
            for config in configs:
                tuner.fn.run(*args, warmup=True, **kwargs, **config.all_kwargs())

        self._patch(JITFunction, "run", run)
        self._patch(Autotuner, "run", autotuned_run)
        self._patch(common, "target_programs", lambda device: 4 * self.sms)
        self._patch(triton_backend, "_interpret", lambda: True)
        self.triton_version = triton.__version__
        return self

    def __exit__(self, *exc):
        for obj, name, value in reversed(self._undo):
            setattr(obj, name, value)
        self._undo.clear()
        return False


# ----------------------------------------------------------------------------------------------
# Reading the binaries
# ----------------------------------------------------------------------------------------------

_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[A-Za-z0-9_:]+)*)")


def _access_bytes(suffixes: str) -> Optional[int]:
    parts = suffixes.strip(".").split(".")
    vec = 1
    width = None
    for p in parts:
        if p in ("v2", "v4", "v8"):
            vec = int(p[1:])
        m = re.fullmatch(r"[bfsu](\d+)", p)
        if m:
            width = int(m.group(1)) // 8
    return vec * width if width else None


def global_access_widths(ptx: str) -> dict:
    """{"ld": {bytes: count}, "st": {bytes: count}} over the PTX's global loads / stores."""
    out = {"ld": {}, "st": {}}
    for kind, suffixes in _ACCESS.findall(ptx):
        b = _access_bytes(suffixes)
        if b:
            out[kind][b] = out[kind].get(b, 0) + 1
    return out


def _ptxas() -> Optional[str]:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return path if os.access(path, os.X_OK) else None


def resource_usage(ptx: str, arch: int) -> dict:
    """Registers, spill stores / loads and stack frame in bytes per thread, from ``ptxas -v`` (the
    ptxas Triton ships) on the kernel's PTX; empty when ptxas is unavailable.

    (``cuobjdump -res-usage`` is not enough: it reports spills as STACK, not LOCAL.)"""
    tool = _ptxas()
    if tool is None or not ptx:
        return {}
    sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([tool, f"-arch={sm}", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    out = {}
    patterns = {"regs": r"Used (\d+) registers", "stack_bytes": r"(\d+) bytes stack frame",
                "spill_store_bytes": r"(\d+) bytes spill stores", "spill_load_bytes": r"(\d+) bytes spill loads"}
    for key, pattern in patterns.items():
        m = re.search(pattern, text)
        if m:
            out[key] = int(m.group(1))
    return out


_LABEL = re.compile(r"^\$(\w+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+\$(\w+);")


def loop_stats(ptx: str) -> dict:
    """Static counts over the PTX lines inside loops (between a label and a later branch back to
    it): instructions, warp shuffles, barriers."""
    lines = ptx.split("\n")
    labels, inside = {}, set()
    for i, line in enumerate(lines):
        m = _LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = i
        m = _BRANCH.search(line)
        if m and m.group(1) in labels:
            inside.update(range(labels[m.group(1)], i + 1))
    body = [lines[i] for i in sorted(inside)]
    return {"loop_instructions": sum(1 for l in body if l.rstrip().endswith(";")),
            "loop_shfl": sum(1 for l in body if "shfl.sync" in l),
            "loop_bar": sum(1 for l in body if re.search(r"\bbar\.sync|\bbarrier\.sync", l))}


def occupancy(regs: int, num_warps: int, smem: int) -> float:
    """Resident warps / max warps per SM allowed by registers, shared memory and warp slots."""
    per_warp = -(-regs * 32 // 256) * 256  # registers are allocated per warp in units of 256
    blocks = min(SM_LIMITS["blocks"], SM_LIMITS["warps"] // num_warps)
    if per_warp:
        blocks = min(blocks, SM_LIMITS["regs"] // (per_warp * num_warps))
    if smem:
        blocks = min(blocks, SM_LIMITS["smem"] // (smem + SM_LIMITS["smem_per_block_reserved"]))
    return blocks * num_warps / SM_LIMITS["warps"]


def describe(entry: Compiled, arch: int) -> dict:
    binary = entry.binary
    usage = resource_usage(binary.asm.get("ptx", ""), arch)
    smem = int(getattr(binary.metadata, "shared", 0) or 0)
    widths = global_access_widths(binary.asm.get("ptx", ""))
    row = {
        "kernel": entry.kernel,
        "constexprs": entry.constexprs,
        "num_warps": entry.num_warps,
        "num_stages": entry.num_stages,
        "shared_bytes": smem,
        **usage,
        **loop_stats(binary.asm.get("ptx", "")),
        "global_ld_bytes": widths["ld"],
        "global_st_bytes": widths["st"],
        "widest_ld": max(widths["ld"], default=0),
        "widest_st": max(widths["st"], default=0),
        "cases": entry.cases,
    }
    if "regs" in usage:
        row["occupancy"] = round(occupancy(usage["regs"], entry.num_warps, smem), 3)
    return row


# ----------------------------------------------------------------------------------------------
# Driving the ops
# ----------------------------------------------------------------------------------------------

def compile_cases(ctx: CompileOnly, cases, *, batch: int, dtype: torch.dtype, memory_format,
                  modes=MODES, progress=print) -> list[str]:
    """Run each case's module through the triton backend in each mode inside ``ctx``; returns the
    failures as "case: error" lines (a kernel that does not compile is a failure, not a crash)."""
    from .cases import set_backend, set_training
    from .op_bench import _make_inputs, _params, _run

    failures = []
    for i, case in enumerate(cases):
        module = case.instantiate("cpu", dtype)
        set_backend(module, "triton")
        name = f"{case.op} {case.config} {case.shape}"
        progress(f"[{i + 1}/{len(cases)}] {name}")
        for mode in modes:
            ctx.label = f"{case.model}:{case.path} {mode}"
            try:
                inputs = _make_inputs(case, module, batch, "cpu", dtype, memory_format, seed=i)
                set_training(module, mode != "eval")
                _run(module, mode, inputs, _params(module))
            except Exception as err:  # report every failing case, keep going
                failures.append(f"{name} {mode}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
        ctx.label = ""
    return failures


def select_cases(models: list, ops: Optional[list], progress=print) -> list:
    """The op cases of ``models`` (``["smoke"]``: :func:`smoke_cases`), only ``ops`` if given."""
    from .cases import collect_cases

    if models == ["smoke"]:
        return [c for c in smoke_cases() if not ops or c.op in ops]
    return collect_cases(tuple(models), tuple(ops) if ops else None, progress=progress)


def smoke_cases(channels: int = 32, size: int = 9):
    """A few small cases that reach every kernel family (dwconv k3 s1 / k5 s2, BN+act, SE,
    activation): what the CI test compiles. ``channels`` a multiple of 16 lets Triton prove the
    16-byte alignment of channels_last rows."""
    from torch import nn

    from fastblocks.nn import BatchNormAct2d, DWConvBNAct, MemoryEfficientAct, SqueezeExcite

    from .cases import OpCase

    c, shape = channels, (channels, size, size)
    cases = []
    for k, stride in ((3, 1), (5, 2)):
        weight = nn.Parameter(torch.randn(c, 1, k, k) / k)
        module = DWConvBNAct(weight, None, nn.BatchNorm2d(c), stride, "same", act="silu", own_bn=True)
        cases.append(OpCase("dwconv_bn_act", "smoke", f"dw_k{k}_s{stride}", module, shape, f"k{k} s{stride} silu"))
    # leaky_relu: the act with a constant of its own (its kink is relu's)
    cases.append(OpCase("bn_act", "smoke", "bn", BatchNormAct2d(c, act="leaky_relu"), shape, "leaky_relu"))
    # gelu: tl.math.erf must lower for sm_90; gelu_tanh: the act with the longest expression
    cases.append(OpCase("bn_act", "smoke", "bn_gelu", BatchNormAct2d(c, act="gelu"), shape, "gelu"))
    se = SqueezeExcite(nn.Conv2d(c, 8, 1), nn.Conv2d(8, c, 1), act="silu", gate="sigmoid")
    cases.append(OpCase("squeeze_excite", "smoke", "se", se, shape, "rd8 silu/sigmoid"))
    cases.append(OpCase("activation", "smoke", "act", MemoryEfficientAct("hardswish"), shape, "hardswish"))
    cases.append(OpCase("activation", "smoke", "act_gelu_tanh", MemoryEfficientAct("gelu_tanh"), shape, "gelu_tanh"))
    return cases


def _row_text(row: dict) -> str:
    spec = ", ".join(f"{k}={v}" for k, v in row["constexprs"].items() if k not in ("ACC",))
    return spec


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# Triton codegen for sm_{meta['arch']} (compiled on a machine without a GPU; nothing ran)", "",
             f"- triton {meta['triton']}, torch {meta['torch']}", f"- command: `{meta['command']}`",
             f"- date: {meta['date']}, git {meta['git_commit']}",
             f"- cases: {meta['models']} at batch {meta['batch']}, {meta['dtype']}, "
             f"{'channels_last' if meta['channels_last'] else 'NCHW'}; configs: {meta['configs']}", ""]
    if result["failures"]:
        lines += ["## Failures", ""] + [f"- {f}" for f in result["failures"]] + [""]
    s = result["summary"]
    lines += ["## Summary", "",
              f"- {s['kernels']} compiled kernels; spilling registers: {s['spilling']}; "
              f"median registers {s['median_regs']}; widest global load 16 B in {s['ld16']} of them, "
              f"store 16 B in {s['st16']}", "",
              "## Kernels", "",
              "| kernel | specialization | warps | regs | spill st B | smem B | occupancy | loop instr (shfl, bar) | widest ld / st B | ld widths (B: count) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["kernels"]:
        widths = " ".join(f"{b}:{n}" for b, n in sorted(row["global_ld_bytes"].items()))
        lines.append(f"| {row['kernel']} | {_row_text(row)} | {row['num_warps']} | {row.get('regs', '?')} | "
                     f"{row.get('spill_store_bytes', '?')} | {row['shared_bytes']} | {row.get('occupancy', '?')} | "
                     f"{row['loop_instructions']} ({row['loop_shfl']}, {row['loop_bar']}) | "
                     f"{row['widest_ld']} / {row['widest_st']} | {widths} |")
    return "\n".join(lines) + "\n"


def summarize(rows: list[dict]) -> dict:
    regs = sorted(r["regs"] for r in rows if "regs" in r)
    return {
        "kernels": len(rows),
        "spilling": sum(1 for r in rows if r.get("spill_store_bytes", 0) > 0),
        "median_regs": regs[len(regs) // 2] if regs else None,
        "ld16": sum(1 for r in rows if r["widest_ld"] >= 16),
        "st16": sum(1 for r in rows if r["widest_st"] >= 16),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90)")
    parser.add_argument("--models", nargs="+", default=["efficientnet_b0"],
                        help="models whose layer shapes to compile, or 'smoke' (small cases, every kernel family)")
    parser.add_argument("--ops", nargs="+", default=None, help="only these ops (default: all)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--batch", type=int, default=16,
                        help="batch size (16 gives the same integer specialisation as 128)")
    parser.add_argument("--configs", default="all", choices=["all", "first"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    if args.batch < 2:
        parser.error("--batch must be >= 2 (training-mode BatchNorm needs more than one value per channel)")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: this compiles for a GPU")

    from .cases import OPS
    from .run import DTYPES, _git_commit, _slug

    if args.ops:
        bad = [o for o in args.ops if o not in OPS]
        if bad:
            parser.error(f"--ops: unknown {bad}; expected some of {list(OPS)}")
    torch.manual_seed(0)
    cases = select_cases(args.models, args.ops, progress=print)
    cases = cases[:args.limit] if args.limit is not None else cases
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    with CompileOnly(args.arch, all_configs=args.configs == "all") as ctx:
        failures = compile_cases(ctx, cases, batch=args.batch, dtype=DTYPES[args.dtype],
                                 memory_format=fmt, modes=tuple(args.modes))
    rows = sorted((describe(e, args.arch) for e in ctx.compiled.values()),
                  key=lambda r: (r["kernel"], _row_text(r), r["num_warps"]))
    result = {
        "meta": {"arch": args.arch, "triton": ctx.triton_version, "torch": torch.__version__,
                 "command": "python -m benchmarks.triton_codegen " + shlex.join(sys.argv[1:] if argv is None else argv),
                 "date": datetime.date.today().isoformat(), "git_commit": _git_commit(),
                 "models": args.models, "batch": args.batch, "dtype": args.dtype,
                 "channels_last": args.channels_last, "configs": args.configs, "modes": args.modes},
        "failures": failures,
        "summary": summarize(rows),
        "kernels": rows,
    }
    slug = _slug(f"codegen-sm{args.arch}-triton{ctx.triton_version}-{args.dtype}-"
                 f"{'cl' if args.channels_last else 'nchw'}{'-' + args.tag if args.tag else ''}")
    os.makedirs(args.out, exist_ok=True)
    import json

    with open(os.path.join(args.out, slug + ".json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    text = markdown(result)
    with open(os.path.join(args.out, slug + ".md"), "w") as f:
        f.write(text)
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
