"""What ``fb.patch(model, recompute=...)`` trades: bytes saved for backward against training-step
time, per level, on the same patched model.

``python -m benchmarks.recompute_tradeoff [--device cpu|cuda] [--models ...] [--batch N]
[--channels-last] [--threads N]`` builds each model once (the model benchmark's ModelBench: same
inputs, SGD step, autocast on GPU), patches one copy per recompute level and reports, per level,
the bytes saved for backward by one training forward (deterministic) and the training-step time.
On CPU the levels are timed in turns (``timing.time_cpu_interleaved``: a slow spell of a shared
machine hits every level alike; timed one after another, later ones drifted slower by 10-20% on a
shared 2-core machine). Writes
``benchmarks/results/<device name>-<date>-recompute-tradeoff-<layout>[-tag].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import fastblocks as fb
from fastblocks._recompute import LEVELS

from .model_bench import ModelBench
from .report import write_whole
from .run import RESULTS, _cpu_name, _slug, run_environment
from .timing import time_cpu_interleaved, time_cuda

MODELS = ("efficientnet_b0", "mobilenetv2_100", "mobilenetv3_large_100", "rexnet_100", "mixnet_s")


def measure(name: str, device: str, batch: int, memory_format, run_time: float) -> list[dict]:
    bench = ModelBench(name, device, batch, memory_format, quick=True)
    steps, rows = {}, []
    for level in LEVELS:
        model, forward = bench.variant("fastblocks")
        fb.patch(model, recompute=level)  # patched again: only the level changes
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        steps[level] = [lambda m=model, f=forward, o=optimizer: bench._train_step(m, f, o)]
        rows.append(dict(model=name, batch=batch, level=level, saved_bytes=bench._saved_bytes(forward)))
    if device == "cuda":
        timings = {level: time_cuda(calls) for level, calls in steps.items()}
    else:
        timings = time_cpu_interleaved(steps, min_run_time=run_time, rounds=5)
    for row in rows:
        t = timings[row["level"]]
        row.update(t.as_dict() if hasattr(t, "as_dict") else dict(error=repr(t)))
    return rows


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# recompute levels: {env['device_name']}", "",
             f"- command: `{env['command']}`", f"- date: {env['date']}, git {env['git_commit']}",
             f"- torch {env['torch']}, python {env['python']}, layout {env['layout']}", "",
             "| model | batch | recompute | saved MiB | saved vs elementwise | step ms (p10-p90) | time vs elementwise |",
             "|---|---|---|---|---|---|---|"]
    base = {r["model"]: r for r in result["rows"] if r["level"] == "elementwise"}
    for r in result["rows"]:
        b = base[r["model"]]
        if "median_s" not in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['level']} | error: {r.get('error')} | | | |")
            continue
        lines.append(f"| {r['model']} | {r['batch']} | {r['level']} | {r['saved_bytes'] / 2**20:.1f} | "
                     f"{r['saved_bytes'] / b['saved_bytes']:.2f}x | {1e3 * r['median_s']:.1f} "
                     f"({1e3 * r['p10_s']:.1f}-{1e3 * r['p90_s']:.1f}) | "
                     f"{r['median_s'] / b['median_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.recompute_tradeoff", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch", type=int, default=None, help="default: GPU 256, CPU 8")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--run-time", type=float, default=4.0, help="CPU: seconds of timed steps per level")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (256 if args.device == "cuda" else 8)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    gpu = args.device == "cuda"
    env = run_environment(args.device, "benchmarks.recompute_tradeoff", argv, batch=batch,
                          layout="channels_last" if args.channels_last else "nchw")
    result = dict(environment=env, rows=[])
    for name in args.models:
        result["rows"] += measure(name, args.device, batch, memory_format, args.run_time)
        print(f"recompute_tradeoff: {name} done", flush=True)
    name = torch.cuda.get_device_name() if gpu else "cpu-" + _cpu_name()
    slug = "-".join(p for p in (_slug(name), env["date"][:10], "recompute-tradeoff",
                                "cl" if args.channels_last else "nchw", _slug(args.tag)) if p)
    os.makedirs(args.out, exist_ok=True)
    json_path, md_path = os.path.join(args.out, slug + ".json"), os.path.join(args.out, slug + ".md")
    write_whole(json_path, json.dumps(result, indent=1, default=str))
    write_whole(md_path, markdown(result))
    print(markdown(result))
    print(f"wrote {json_path}\nwrote {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
