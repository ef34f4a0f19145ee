"""Fill Triton's cache with every kernel the GPU op benchmark will autotune, compiled in parallel.

``python -m benchmarks.gpu.triton_warm [--jobs 16] [--models efficientnet_b0] [--ops ...]
[--dtype bfloat16] [--channels-last] [--batch 128] [--deadline +SECONDS]``, or ``--gpu-tests``

Triton's autotuner compiles every config of a kernel specialisation, one after another, the first
time it meets it: about 440 compiles for the quick GPU op benchmark, minutes of GPU-machine time.
This runs the benchmark's op cases through the ``triton`` backend in ``--jobs`` processes
under :class:`benchmarks.triton_codegen.CompileOnly` (every config compiled for ``sm_<arch>``,
nothing launched), so a benchmark that follows on the same machine, with the same Triton,
``TRITON_CACHE_DIR``, shapes and dtype, finds the binaries in the cache and only times them. Where a
cache key differs the autotuner compiles as before: nothing is lost but the warm-up time.

``--gpu-tests`` does the same for the cases of ``tests/test_triton_gpu.py`` (``SPECS``), run as
the tests run them but on CPU tensors, with the comparisons switched off (nothing is computed;
only the compiles count). Set FASTBLOCKS_TRITON_CONFIGS as the tests will (the GPU suite uses 1).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..deadline import parse_deadline
from ..triton_codegen import MODES, CompileOnly, compile_cases, select_cases
from .shards import parse_shard, run_shards


def _cases(args):
    return select_cases(args.models, args.ops, progress=lambda *_: None)


def _import_tests() -> None:
    """Make the test modules importable as the tests import them (``tests.helpers``, and the
    Triton test modules by their bare names)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for path in (root, os.path.join(root, "tests")):
        if path not in sys.path:
            sys.path.insert(0, path)


def _test_specs() -> list:
    _import_tests()
    from test_triton_gpu import SPECS

    return list(SPECS.values())


def _compile_test_specs(specs) -> list[str]:
    _import_tests()
    from test_triton_interpreter import run_case

    from tests import helpers

    # Nothing runs, so every comparison would fail and stop the case before its backward pass.
    helpers.assert_close_to_reference = lambda *args, **kwargs: 0.0
    failures = []
    for spec in specs:
        try:
            run_case(spec, device="cpu")
        except Exception as err:  # a kernel that does not compile: report it, warm the rest
            failures.append(f"{spec}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
    return failures


def _shard(args) -> int:
    from ..run import DTYPES

    index, count = parse_shard(args.shard)
    cases = (_test_specs() if args.gpu_tests else _cases(args))[index::count]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    failures = []
    with CompileOnly(args.arch, all_configs=True) as ctx:
        if args.gpu_tests:
            failures = _compile_test_specs(cases)
        else:
            failures = compile_cases(ctx, cases, batch=args.batch, dtype=DTYPES[args.dtype], memory_format=fmt,
                                     modes=tuple(args.modes), progress=lambda *_: None)
    for line in failures:
        print(f"failed: {line}", file=sys.stderr)
    print(f"shard {args.shard}: {len(cases)} cases, {len(ctx.compiled)} kernels")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: CPU count)")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--models", nargs="+", default=["efficientnet_b0"], help="or 'smoke' (small cases)")
    parser.add_argument("--ops", nargs="+", default=["dwconv_bn_act", "squeeze_excite", "activation"],
                        help="default: the quick benchmark's ops")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--batch", type=int, default=128, help="the benchmark's batch (default 128)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--gpu-tests", action="store_true", help="the cases of tests/test_triton_gpu.py instead")
    parser.add_argument("--deadline", type=parse_deadline, default=None,
                        help="+SECONDS or a Unix time: stop compiling then (what is cached stays)")
    parser.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # "i/N": one worker's share
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.batch < 2:
        parser.error("--jobs must be >= 1 and --batch >= 2")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: this compiles for a GPU")
    if args.shard:
        return _shard(args)

    jobs = min(args.jobs, len(_test_specs() if args.gpu_tests else _cases(args)))
    argv = sys.argv[1:] if argv is None else list(argv)
    code = run_shards("benchmarks.gpu.triton_warm", argv, jobs, args.deadline)
    print(f"triton_warm: cache {os.environ.get('TRITON_CACHE_DIR', '~/.triton/cache')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
