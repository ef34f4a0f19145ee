"""Per-layer-class timing of the eval-mode conv choices on real model shapes (CPU).

For every conv of the listed timm models (shapes taken from one forward at 224x224), times the
candidates the inference path can pick from, in interleaved rounds:

- dense / pointwise conv + folded BN + act: ATen ``F.conv2d`` on folded weights + the act
  (``aten``), oneDNN fused ``mkldnn._convolution_pointwise`` with the plain weight (``mkldnn``)
  and with weights prepacked by ``mkldnn._reorder_convolution_weight`` (``mkldnn_packed``);
  projection convs with a residual add: the same with the binary "add" post-op.
- depthwise conv + BN + act: the same three plus fastblocks' own kernel (``fastblocks``).

``python -m benchmarks.inference_layers [--batches 1 8] [--rounds 15]`` writes
``benchmarks/results/inference-layers-<cpu>-<date>.json`` and ``.md``: per (model, layer class,
batch, layout) the summed median time of each candidate over the model's layers of that class.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastblocks.inference.conv_fusion import mkldnn_unary

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"efficientnet_b0": "silu", "mobilenetv2_100": "relu6"}


def layer_shapes(model_name: str) -> list:
    """(name, input shape, conv) for every Conv2d run on a 224x224 image, SE convs excluded."""
    import timm

    model = timm.create_model(model_name).eval()
    found = []

    def hook(module, args, _out, name=None):
        found.append((name, tuple(args[0].shape), module))

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and "se" not in name.split("."):
            m.register_forward_hook(lambda mod, a, o, name=name: hook(mod, a, o, name))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    return found


def layer_class(name: str, conv: torch.nn.Conv2d) -> str:
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return "depthwise"
    if name.endswith("conv_pwl"):
        return "projection"
    return "pointwise" if conv.kernel_size == (1, 1) else "dense"


def candidates(kind: str, conv: torch.nn.Conv2d, x: torch.Tensor, act: str) -> dict:
    """name -> zero-argument callable for one layer; all compute the same output."""
    w = conv.weight.detach().clone()
    b = torch.randn(w.shape[0])
    pad, stride, dil, groups = list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, pad, stride, dil, groups, list(x.shape))
    act_fn = {"silu": F.silu, "relu6": F.relu6}[act]
    if kind == "projection":
        out = F.conv2d(x, w, b, stride, pad, dil, groups)
        other = torch.randn_like(out)

        def binary(weight):
            return lambda: torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, weight, b, pad, stride, dil, groups, "add", None, None, [], None)

        return {"aten": lambda: F.conv2d(x, w, b, stride, pad, dil, groups).add_(other),
                "mkldnn": binary(w), "mkldnn_packed": binary(packed)}
    attr, scalars, algo = mkldnn_unary(act)

    def unary(weight):
        return lambda: torch.ops.mkldnn._convolution_pointwise(x, weight, b, pad, stride, dil, groups,
                                                               attr, scalars, algo)

    found = {"aten": lambda: act_fn(F.conv2d(x, w, b, stride, pad, dil, groups), inplace=True),
             "mkldnn": unary(w), "mkldnn_packed": unary(packed)}
    if kind == "depthwise":
        c = w.shape[0]
        gamma, beta, mean, var = torch.rand(c) + 0.5, torch.randn(c), torch.randn(c), torch.rand(c) + 0.5
        kernels = torch.ops.fastblocks_kernels
        found["fastblocks"] = lambda: kernels.dwconv_bn_act_forward(
            x, w, gamma, beta, mean, var, None, stride[0], "explicit", pad[0], False, 1e-5, act)[0]
    return found


def time_rounds(fns: dict, rounds: int, inner: int) -> dict:
    """Median seconds per call of each callable, rounds interleaved across the callables."""
    samples = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            samples[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for model_name in args.models:
        layers = layer_shapes(model_name)
        for batch in args.batches:
            for layout in ("nchw", "channels_last"):
                totals: dict = {}
                for name, shape, conv in layers:
                    kind = layer_class(name, conv)
                    x = torch.randn((batch,) + shape[1:])
                    if layout == "channels_last":
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.no_grad():
                        fns = candidates(kind, conv, x, MODELS[model_name])
                        inner = max(1, int(2e-3 / max(time_rounds(fns, 1, 1)["aten"], 1e-6)))
                        medians = time_rounds(fns, args.rounds, inner)
                    for k, v in medians.items():
                        totals.setdefault(kind, {}).setdefault(k, 0.0)
                        totals[kind][k] += v
                for kind, by in sorted(totals.items()):
                    count = sum(1 for n, _, c in layers if layer_class(n, c) == kind)
                    best = min(by, key=by.get)
                    rows.append(dict(model=model_name, batch=batch, layout=layout, layer_class=kind,
                                     layers=count, ms={k: round(v * 1e3, 4) for k, v in by.items()}, best=best))
                    print(f"{model_name} b{batch} {layout:13s} {kind:10s} x{count:2d} " +
                          " ".join(f"{k}={v * 1e3:.3f}ms" for k, v in by.items()) + f"  best={best}", flush=True)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    date = datetime.date.today().isoformat()
    slug = "".join(ch if ch.isalnum() else "-" for ch in cpu.lower()).strip("-")
    slug = "-".join(p for p in slug.split("-") if p)[:40]
    meta = dict(cpu=cpu, torch=torch.__version__, threads=args.threads, rounds=args.rounds, date=date,
                command="python -m benchmarks.inference_layers " + " ".join(argv or []))
    stem = RESULTS / f"inference-layers-{slug}-{date}"
    stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    lines = [f"# Eval conv choices per layer class ({cpu}, torch {meta['torch']}, {args.threads} threads, "
             f"fp32, median of {args.rounds} interleaved rounds, {date})", "",
             "Summed median time (ms) of each candidate over the model's layers of that class.", "",
             "| model | batch | layout | class | layers | aten | mkldnn | mkldnn_packed | fastblocks | best |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["ms"]
        cells = [f"{ms[k]:.3f}" if k in ms else "-" for k in ("aten", "mkldnn", "mkldnn_packed", "fastblocks")]
        lines.append(f"| {r['model']} | {r['batch']} | {r['layout']} | {r['layer_class']} | {r['layers']} | "
                     + " | ".join(cells) + f" | {r['best']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json / .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
