"""Fill torch.compile's on-disk caches with the op benchmark's ``compile`` variants, in parallel.

``python -m benchmarks.gpu.inductor_warm [--device cuda] [--jobs 6] [--ops ...] [--modes ...]
[--dtype bfloat16] [--batch 128] [--channels-last] [--deadline +SECONDS]``

Every ``compile`` row of ``benchmarks.run`` is a fresh torch.compile of one layer (Inductor lowers
it and compiles its generated Triton kernels: seconds each, one after another, minutes for the
quick GPU benchmark). This makes the same compiles (:func:`benchmarks.op_bench.warm_compile`: same
modules, inputs and calls) in ``--jobs`` processes, so the benchmark that follows with the same
``TORCHINDUCTOR_CACHE_DIR`` gets its graphs from Inductor's FX graph cache (its JSON's
``meta.compile_caches`` counts the hits). Nothing is timed here. Inductor also records which of a
kernel's configs won its autotuning (``*.best_config``); tuned beside other processes that choice
is not to be trusted, so those records are deleted at the end and the benchmark tunes again.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import torch

from ..cases import OPS, QUICK_OP_MODELS, select_op_cases
from ..deadline import parse_deadline
from ..op_bench import MODES, warm_compile
from .shards import parse_shard, run_shards


def inductor_cache_dir() -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def forget_autotuning(root: str) -> int:
    """Delete Inductor's autotuning records (``*.best_config``) under ``root``; returns how many."""
    paths = glob.glob(os.path.join(root, "**", "*.best_config"), recursive=True)
    for p in paths:
        os.remove(p)
    return len(paths)


def _cases(args):
    return select_op_cases(tuple(args.op_models), tuple(args.ops), args.limit)


def _shard(args) -> int:
    from ..run import DTYPES

    index, count = parse_shard(args.shard)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    failed = 0
    for case in _cases(args)[index::count]:
        try:
            warm_compile(case, device=args.device, dtype=DTYPES[args.dtype], batch=args.batch,
                         memory_format=fmt, modes=tuple(args.modes))
        except Exception as err:  # the benchmark will report this case; warm the rest
            failed += 1
            print(f"inductor_warm: {case.label}: {type(err).__name__}: {str(err).splitlines()[0][:300]}",
                  file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--jobs", type=int, default=max(1, min(6, (os.cpu_count() or 1) // 2)))
    parser.add_argument("--op-models", nargs="+", default=list(QUICK_OP_MODELS))
    parser.add_argument("--ops", nargs="+", default=["dwconv_bn_act", "squeeze_excite", "activation"], choices=OPS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="the first N cases, as benchmarks.run --limit")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--deadline", type=parse_deadline, default=None,
                        help="+SECONDS or a Unix time: stop then (what is cached stays)")
    parser.add_argument("--shard", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.batch < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--jobs, --batch and --limit must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.shard:
        return _shard(args)
    argv = sys.argv[1:] if argv is None else list(argv)
    jobs = min(args.jobs, len(_cases(args))) or 1
    # Each process has its own pool of compile workers: share the cores instead of oversubscribing.
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    code = run_shards("benchmarks.gpu.inductor_warm", argv, jobs, args.deadline,
                      env={"TORCHINDUCTOR_COMPILE_THREADS": threads})
    root = inductor_cache_dir()
    print(f"inductor_warm: cache {root}, {forget_autotuning(root)} autotuning records deleted", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
