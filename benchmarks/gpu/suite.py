"""Run the GPU test + benchmark suite within N seconds, with ahead-of-time compiled Triton kernels.

``python3 -m benchmarks.gpu.suite --out DIR [--budget 540] [--skip STEP ...] [--list] [--smoke]``

One command runs the whole suite on a GPU machine with its own python3 (torch + triton; no
``.venv``, no prior build) and ends within ``--budget`` seconds, checks and benchmarks in order of
need. Phases run one after another; the chains of a phase side by side, the steps of a chain one
after another (:mod:`benchmarks.gpu.runner`):

1. unpack the Triton cache compiled ahead of time on another machine for this GPU's stack
   (``make gpu-carry``: :mod:`benchmarks.gpu.triton_cache`), when there is one.
2. compile ahead on the CPUs while the GPU checks correctness: the Triton cache is topped up
   (:mod:`benchmarks.gpu.triton_warm`) and the Triton GPU tests run; torch.compile's caches are
   filled for the op benchmark's ``compile`` columns (:mod:`benchmarks.gpu.inductor_warm`). Nothing
   here is timed. The CUDA extension is built in the background (``nice``), through the later
   phases if need be.
3. the op benchmark alone on the GPU: EfficientNet-B0's depthwise layers, SE and SiLU, batch 128,
   bf16, channels_last, eval and train fwd+bwd, against eager PyTorch and torch.compile.
4. what time is left: the CUDA backend's GPU tests, then the model benchmark.

The benchmarks are given their own ``--deadline`` (their phase's end less 20 s) and write their
results after every case. ``DIR`` receives suite.json (every step: command, status, exit code,
seconds, Triton kernels cached before / after), suite.md, suite.log (the steps' output) and the
benchmarks' JSON + markdown (no plots: ``python -m benchmarks.report RESULT.json`` draws them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .runner import ROOT, TRITON_CACHE, Phase, Step, Suite, gpu_problem, skipped_by_hand

# made by `make gpu-carry` (Makefile) on a machine with the GPU machine's Python / torch / Triton
AHEAD_OF_TIME_TRITON_CACHE = os.path.join(ROOT, ".gpu-carry", "triton-cache.tar.gz")


def plan(out: str, device: str = "cuda", smoke: bool = False) -> list:
    """The suite's phases. ``smoke``: the same commands on ``device`` at tiny sizes (a dry run on
    the CPU, where the GPU tests skip themselves)."""
    py = sys.executable
    ops = ["--ops", "dwconv_bn_act", "squeeze_excite", "activation"]
    modes = ["--modes", "eval", "train_fwd_bwd"]
    small = ["--batch", "2", "--limit", "2"] if smoke else []
    bench = [py, "-m", "benchmarks.run", "--device", device, "--quick", "--channels-last", "--out", out, "--no-plots"]
    one_config = {"FASTBLOCKS_TRITON_CONFIGS": "1"}
    jobs = str(max(1, min(6, (os.cpu_count() or 2) // 3)))
    pytest = [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    unpack = [Step("unpack-triton-cache", [py, "-m", "benchmarks.gpu.triton_cache", "unpack",
                                           AHEAD_OF_TIME_TRITON_CACHE, "--cache", TRITON_CACHE])]
    triton_tests = [Step("warm-triton-tests", [py, "-m", "benchmarks.gpu.triton_warm", "--gpu-tests", "--jobs", jobs],
                         env=one_config, deadline_flag=True),
                    # + the CUDA-graph timer the op benchmark relies on (its one gpu test)
                    Step("test-triton", pytest + ["tests/test_triton_gpu.py", "tests/test_benchmarks.py"],
                         env=one_config)]
    warm_bench = [Step("warm-triton-bench", [py, "-m", "benchmarks.gpu.triton_warm", "--channels-last",
                                             "--jobs", jobs] + (["--models", "smoke"] if smoke else []),
                       deadline_flag=True)]
    warm_compile = [Step("warm-inductor", [py, "-m", "benchmarks.gpu.inductor_warm", "--device", device,
                                           "--channels-last", "--jobs", "4", *ops, *modes]
                         + (small + ["--dtype", "float32"] if smoke else []), deadline_flag=True)]
    # needed only by the last phase: built at low priority while the others run
    build = [Step("build-cuda", ["nice", "-n", "19", py, "setup.py", "-q", "build_ext", "--inplace"],
                  env={"FASTBLOCKS_BUILD_CPU": "0", "MAX_JOBS": "4"}, background=True)]
    op_bench = [Step("bench-ops", bench + ops + modes + ["--models", "none", "--tag", "ops", "--op-backends",
                                                         "triton" if device == "cuda" else "eager"] + small,
                     deadline_flag=True)]
    rest = [Step("test-cuda", pytest + ["tests/test_cuda_backend.py"], requires="build-cuda"),
            # the recompute="depthwise" variant last: the one whose GPU time is least known
            Step("bench-models", bench + ["--ops", "none", "--tag", "models", "--variants", "eager", "compile",
                                          "fastblocks", "fastblocks+compile", "fastblocks-dw-recompute"]
                 + (["--model-batch", "2", "--models", "mobilenetv2_100", "--memory-batches"] if smoke else []),
                 deadline_flag=True)]
    return [Phase("unpack the ahead-of-time compiled Triton cache", [unpack], cap_s=60, reserve=0.89),
            Phase("compile ahead + correctness", [triton_tests, warm_bench, warm_compile, build],
                  cap_s=240, reserve=0.5),
            Phase("op benchmark", [op_bench], cap_s=420, reserve=0.04),
            Phase("CUDA tests + model benchmark", [rest], cap_s=600, reserve=0.0)]


def main(argv=None) -> int:
    """Run the suite (or ``--list`` its plan); exit code 0 when every step that ran succeeded,
    1 otherwise, 2 when torch sees no GPU (nothing is run)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", os.path.join(ROOT, "benchmarks", "results")),
                        help="where the results go (default $OUT, else benchmarks/results)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole suite (default 540)")
    parser.add_argument("--skip", nargs="*", default=[], help="steps not to run")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument("--smoke", action="store_true", help="the same steps at tiny sizes on the CPU (dry run)")
    parser.add_argument("--logs", default=os.path.join(ROOT, "build", "gpu-suite-logs"), help="the steps' full logs")
    args = parser.parse_args(argv)
    if args.budget < 60:
        parser.error(f"--budget must be at least 60 seconds, got {args.budget}")
    phases = plan(os.path.abspath(args.out), device="cpu" if args.smoke else "cuda", smoke=args.smoke)
    names = [s.name for p in phases for c in p.chains for s in c]
    unknown = sorted(set(args.skip) - set(names))
    if unknown:
        parser.error(f"--skip: unknown step(s) {', '.join(unknown)} (steps: {', '.join(names)})")
    if args.list:
        for p in phases:
            print(f"{p.name} (at most {p.cap_s:.0f} s, keeps {p.reserve:.0%} of the budget for later):")
            for c in p.chains:
                print("  " + " -> ".join(s.name for s in c))
        return 0
    suite = Suite(os.path.abspath(args.out), args.budget, args.logs)
    if not args.smoke:
        problem = gpu_problem()
        if problem:  # every step would fail: stop now, the budget unspent
            suite.meta["aborted"] = problem
            suite.write()
            print(f"gpu suite: {problem}", file=sys.stderr)
            return 2
    for phase in phases:
        print(f"[{suite.clock()}] phase: {phase.name}", flush=True)
        suite.run_phase(phase, set(args.skip))
    suite.finish()
    bad = [s.name for s in suite.steps if s.status != "ok" and not skipped_by_hand(s)]
    print(f"gpu suite: {time.time() - suite.start:.0f} s; not ok: {', '.join(bad) or 'none'}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
