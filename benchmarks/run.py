"""fastblocks benchmarks: ``python -m benchmarks.run --device {cpu,cuda} [--quick] ...``.

Op level: every fused op on the layer shapes of real models (derived by running them), eval
forward / train forward / train forward+backward, against the eager reference and torch.compile of
it. Model level: training-step and inference throughput plus memory of whole models (eager,
torch.compile, patched, patched + torch.compile; with ``--peers`` also ONNX Runtime and OpenVINO on
the unpatched model's ONNX export, inference only). Writes benchmarks/results/<slug>.json and .md
and PNG plots under benchmarks/results/plots/, and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import shlex
import subprocess
import sys
from typing import Optional

import torch

import fastblocks as fb

from . import report, targets
from .cases import OP_MODELS, OPS, QUICK_OP_MODELS, select_op_cases
from .compiled import compile_cache_counters
from .deadline import Deadline, parse_deadline
from .model_bench import EXTRA_VARIANTS, MODELS, QUICK_MODELS, VARIANTS, ModelBench, memory_vs_batch
from .model_bench import MODES as MODEL_MODES
from .op_bench import MODES, VariantFactory, bench_case
from .peers import PEERS
from .peers import version as peer_version
from .timing import copy_bandwidth

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# --quick: the ops the targets name (torch.compile of every case dominates the run time)
QUICK_OPS = ("dwconv_bn_act", "squeeze_excite", "activation")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
# recorded with every result: OpenMP's wait policy decides how 2 threads fare on a busy machine
THREADING_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# --peers: inference against ONNX Runtime and OpenVINO; each option given on the command line wins
PEER_PRESET = dict(models=["efficientnet_b0", "mobilenetv2_100", "mobilenetv3_large_100", "rexnet_100",
                           "torchvision:efficientnet_b0"],
                   model_batch=[1, 8], model_layouts=list(LAYOUTS), model_modes=["inference"],
                   variants=["eager", "compile", "fastblocks", *PEERS], ops=["none"], memory_batches=[],
                   model_repeats=10, tag="peers")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _git_commit() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def _load_average() -> Optional[list]:
    """The system's 1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _slug(text: str) -> str:
    keep = "".join(c.lower() if c.isalnum() else "-" for c in text)
    return "-".join(p for p in keep.split("-") if p)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="EfficientNet-B0 layer shapes only, fewer models and repeats (GPU: < 8 min)")
    p.add_argument("--ops", nargs="*", default=None, choices=OPS + ("none",),
                   help=f"ops to benchmark (default: all; quick: {QUICK_OPS}; none skips the op level)")
    p.add_argument("--op-models", nargs="*", default=None, help=f"models giving the op shapes (default {OP_MODELS})")
    p.add_argument("--limit", type=int, default=None, help="benchmark only the first N op cases (smoke runs)")
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    p.add_argument("--models", nargs="*", default=None,
                   help=f"model-level benchmarks (default {MODELS}; quick: fewer); pass none to skip")
    p.add_argument("--variants", nargs="*", default=None, choices=VARIANTS + EXTRA_VARIANTS,
                   help=f"model-level variants (default {' '.join(VARIANTS)})")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="op-level dtype (default: GPU bfloat16, CPU float32)")
    p.add_argument("--batch", type=int, default=None, help="op-level batch (default: GPU 128, CPU 8)")
    p.add_argument("--model-batch", type=int, nargs="+", default=None,
                   help="model-level batch, or several (default: GPU 256, CPU 8)")
    p.add_argument("--model-layouts", nargs="+", default=None, choices=tuple(LAYOUTS),
                   help="model-level input and model layouts (default: channels_last with --channels-last, else nchw)")
    p.add_argument("--model-modes", nargs="+", default=None, choices=MODEL_MODES,
                   help=f"model-level modes (default {' '.join(MODEL_MODES)})")
    p.add_argument("--model-repeats", type=int, default=None,
                   help="model-level timed calls per variant, taken in turns (default: quick 5, else 12)")
    p.add_argument("--peers", action="store_true",
                   help="inference against ONNX Runtime and OpenVINO (CPU); unless given: "
                        + "; ".join(f"--{k.replace('_', '-')} {v if not isinstance(v, list) else ' '.join(map(str, v))}"
                                    for k, v in PEER_PRESET.items()))
    p.add_argument("--memory-batches", type=int, nargs="*", default=None, help="batches for the memory-vs-batch plot")
    p.add_argument("--channels-last", action="store_true", help="channels_last inputs and models")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile columns")
    p.add_argument("--op-backends", nargs="+", default=None,
                   help="fastblocks backends timed at op level (default: every available one but reference; "
                        "the reference and compile columns are always there)")
    p.add_argument("--no-plots", action="store_true", help="write JSON and markdown only (plots: benchmarks.report)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", default=RESULTS, help="results directory")
    p.add_argument("--tag", default="", help="extra text for the result file name")
    p.add_argument("--deadline", type=parse_deadline, default=None,
                   help="+SECONDS or a Unix time: skip (and record) op cases and model variants that would "
                        "end later; results are written after each one")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    for name in ("batch", "threads", "limit", "model_repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.model_batch is not None and min(args.model_batch) < 1:
        p.error(f"--model-batch must be positive integers, got {args.model_batch}")
    gpu = args.device == "cuda"
    if args.peers:
        if gpu:
            p.error("--peers: ONNX Runtime and OpenVINO are benchmarked on the CPU only (--device cpu)")
        for name, value in PEER_PRESET.items():
            if getattr(args, name) in (None, ""):
                setattr(args, name, list(value) if isinstance(value, list) else value)
        args.variants += [v for v in PEERS if v not in args.variants]
    args.variants = list(VARIANTS) if args.variants is None else args.variants
    args.model_layouts = args.model_layouts or ["channels_last" if args.channels_last else "nchw"]
    args.model_modes = args.model_modes or list(MODEL_MODES)
    if args.op_backends is not None:
        timed = _timed_backends(args.device)
        unknown = [b for b in args.op_backends if b not in timed]
        if unknown:
            p.error(f"--op-backends: {', '.join(unknown)} cannot be timed on {args.device} here "
                    f"(available: {', '.join(timed) or 'none'})")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.batch = args.batch or (128 if gpu else 8)
    args.model_batch = args.model_batch or [256 if gpu else 8]
    if args.op_models is None:
        args.op_models = list(QUICK_OP_MODELS if args.quick else OP_MODELS)
    if args.ops is None and args.quick:
        args.ops = list(QUICK_OPS)
    if args.models is None:
        args.models = list(QUICK_MODELS[args.device] if args.quick else MODELS)
    if args.models == ["none"]:
        args.models = []
    if args.memory_batches is None:
        args.memory_batches = ([32, 64, 128, 256] if gpu else [2, 4, 8, 16])[:3 if args.quick else 4]
    return args


def _timed_backends(device: str) -> list[str]:
    """The fastblocks backends an op row can time on ``device``."""
    # cuda_emulated (the CUDA kernels on a CPU emulator) and the Triton interpreter are test tools,
    # not backends to time.
    backends = [b for b in fb.available_backends() if b not in ("reference", "cuda_emulated")]
    if device == "cpu":
        backends = [b for b in backends if b != "triton"]
    return backends


def _progress_bar():
    """tqdm, or a plain stand-in where it is not installed (a bare GPU machine's python3 may lack it)."""
    try:
        from tqdm import tqdm

        return tqdm
    except ImportError:
        def plain(items, desc="", unit=""):
            items = list(items)
            for i, item in enumerate(items):
                print(f"{desc}: {i + 1}/{len(items)} {unit}", flush=True)
                yield item

        plain.write = lambda text: print(text, flush=True)
        return plain


def run_environment(device: str, program: str, argv: list[str], **extra) -> dict:
    """What a result file records about its run: device, versions, threads, command, date, git
    commit, backends; ``extra``: the program's own settings."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = device == "cuda"
    return dict(
        device=device,
        device_name=torch.cuda.get_device_name() if gpu else f"{_cpu_name()} ({torch.get_num_threads()} threads)",
        torch=torch.__version__, triton=triton_version, cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        python=platform.python_version(), threads=torch.get_num_threads(),
        command=f"python -m {program} " + " ".join(shlex.quote(a) for a in argv),
        date=datetime.datetime.now().isoformat(timespec="seconds"), git_commit=_git_commit(),
        backends=fb.available_backends(), load_average_start=_load_average(),
        threading_env={k: os.environ.get(k) for k in THREADING_ENV}, **extra)


def environment(args: argparse.Namespace, argv: list[str]) -> dict:
    peers = {v: peer_version(v) for v in args.variants if v in PEERS}
    return run_environment(args.device, "benchmarks.run", argv, op_batch=args.batch, model_batch=args.model_batch,
                           model_layouts=args.model_layouts, model_modes=args.model_modes,
                           dtype=args.dtype, layout="channels_last" if args.channels_last else "nchw",
                           quick=args.quick, op_models=args.op_models, **({"peers": peers} if peers else {}))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tqdm = _progress_bar()

    gpu = args.device == "cuda"
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    result = dict(meta=environment(args, argv), op_rows=[], model_rows=[], memory_rows=[])
    if gpu:
        result["meta"]["copy_bandwidth"] = copy_bandwidth("cuda")
    copy_bps = result["meta"].get("copy_bandwidth", {}).get("bytes_per_s")

    backends = args.op_backends or _timed_backends(args.device)
    factory = VariantFactory(backends, with_compile=not args.no_compile)
    name = torch.cuda.get_device_name() if gpu else "cpu-" + _cpu_name()
    slug = "-".join(p for p in (_slug(name), result["meta"]["date"][:10], "quick" if args.quick else "",
                                "cl" if args.channels_last else "", _slug(args.tag)) if p)
    deadline = Deadline(args.deadline)

    def checkpoint(final: bool = False):
        """Write what is measured so far (a run killed later still leaves it); plots at the end."""
        result["meta"]["skipped"] = list(deadline.skipped)
        result["meta"]["complete"] = final and not deadline.skipped
        result["meta"]["compile_caches"] = compile_cache_counters()
        # how busy the machine was (1, 5, 15-minute averages): other processes slow every variant
        result["meta"]["load_average_end" if final else "load_average_last"] = _load_average()
        report.add_ratios(result)
        result["targets"] = targets.evaluate(result)
        return report.write(result, args.out, slug, with_plots=final and not args.no_plots)

    ops = None if args.ops is None else tuple(o for o in args.ops if o != "none")
    if ops != ():
        cases = select_op_cases(tuple(args.op_models), ops, args.limit,
                                progress=lambda s: tqdm.write(f"benchmarks: {s}"))
        for case in tqdm(cases, desc="op cases", unit="case"):
            if not deadline.allows(case.op, case.label):
                continue
            with deadline.measure(case.op):
                bench_case(case, factory, device=args.device, dtype=DTYPES[args.dtype], batch=args.batch,
                           memory_format=memory_format, modes=tuple(args.modes), quick=args.quick,
                           copy_bps=copy_bps, on_row=result["op_rows"].append)
            checkpoint()
    variants = tuple(v for v in args.variants if not (args.no_compile and v.endswith("compile")))
    # every model at one (batch, layout) before the next: a run cut short by --deadline still compares them all
    configs = [(m, b, lay) for b in args.model_batch for lay in args.model_layouts for m in args.models]
    for model, batch, layout in tqdm(configs, desc="models", unit="model"):
        what = model if len(configs) == len(args.models) else f"{model} batch {batch} {layout}"
        new_bench = functools.partial(ModelBench, model, args.device, batch, LAYOUTS[layout], args.quick,
                                      modes=tuple(args.model_modes), repeats=args.model_repeats)
        bench = None
        if gpu:
            for variant in variants:
                # a compiled variant compiles the whole model twice (inference, training): minutes
                kind = "model compile" if variant.endswith("compile") else "model"
                if not deadline.allows(kind, f"{what} {variant}", default_s=120.0 if "compile" in kind else 0.0):
                    continue
                with deadline.measure(kind):
                    bench = bench or new_bench()
                    bench.run((variant,), result["model_rows"].append)
                checkpoint()
        elif deadline.allows("model, all variants", what):
            # CPU: all variants in one run, timed in turns (ModelBench.run): ratios without drift
            with deadline.measure("model, all variants"):
                bench = new_bench()
                bench.run(variants, result["model_rows"].append)
            checkpoint()
        del bench
        if gpu:
            torch.cuda.empty_cache()
    for model in args.models if args.memory_batches else ():
        if deadline.allows("memory", f"{model} memory vs batch"):
            with deadline.measure("memory"):
                memory_vs_batch(model, args.device, tuple(args.memory_batches), LAYOUTS[args.model_layouts[0]],
                                result["memory_rows"].append)
        if gpu:
            torch.cuda.empty_cache()

    json_path, md_path = checkpoint(final=True)
    print(report.markdown(result))
    print(f"wrote {json_path}\nwrote {md_path}")
    if deadline.skipped:
        print(f"deadline: skipped {len(deadline.skipped)}: {', '.join(deadline.skipped)}", file=sys.stderr)
    failed = [r for r in result["op_rows"] + result["model_rows"] if r.get("status") in ("wrong", "error")]
    if failed:
        print(f"{len(failed)} variant(s) failed their correctness check or crashed (see 'status' in the JSON)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
