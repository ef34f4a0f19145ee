"""Where to apply the SE gate at eval, batch 1: scale the depthwise output (in place) and run the
projection conv on its prepacked weights, or fold the gate into the projection weights per input
channel (then the weights change every call: plain weights, or prepacked again per call).

``python -m benchmarks.inference_se_gate`` times the three on efficientnet_b0's projection shapes
(channels_last, 2 threads; per variant the median over 5 interleaved rounds of the p10 of 60 calls,
which a shared machine disturbs least; each call includes copying the input) and writes
``benchmarks/results/inference-se-gate-<date>.json`` / ``.md``.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# (channels in, channels out, spatial) of efficientnet_b0's SE-gated projection convs
SHAPES = [(96, 24, 56), (144, 40, 28), (240, 80, 14), (480, 112, 14), (672, 112, 14), (1152, 192, 7)]


def p10_us(fn, calls: int = 200) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 10] * 1e6


def main() -> int:
    torch.set_num_threads(2)
    mk = torch.ops.mkldnn
    conv_args = ([0, 0], [1, 1], [1, 1], 1)
    rows = []
    for cin, cout, hw in SHAPES:
        x = torch.randn(1, cin, hw, hw).contiguous(memory_format=torch.channels_last)
        gate, w, b = torch.rand(cin), torch.randn(cout, cin, 1, 1), torch.randn(cout)
        packed = mk._reorder_convolution_weight(w, *conv_args, list(x.shape))
        g4 = gate.view(1, cin, 1, 1)

        def scale_then_packed():
            return mk._convolution_pointwise(x.clone().mul_(g4), packed, b, *conv_args, "none", [], "")

        def gate_in_plain_weights():
            return mk._convolution_pointwise(x.clone(), w * g4, b, *conv_args, "none", [], "")

        def gate_in_repacked_weights():
            w2 = mk._reorder_convolution_weight(w * g4, *conv_args, list(x.shape))
            return mk._convolution_pointwise(x.clone(), w2, b, *conv_args, "none", [], "")

        row = dict(cin=cin, cout=cout, hw=hw)
        # rounds interleaved; each call includes the copy standing for the fresh depthwise output
        fns = (scale_then_packed, gate_in_plain_weights, gate_in_repacked_weights)
        samples = {fn.__name__: [] for fn in fns}
        for _ in range(5):
            for fn in fns:
                samples[fn.__name__].append(p10_us(fn, 60))
        row.update({k: round(sorted(v)[len(v) // 2], 1) for k, v in samples.items()})
        rows.append(row)
        print(row, flush=True)
    date = datetime.date.today().isoformat()
    stem = RESULTS / f"inference-se-gate-{date}"
    meta = dict(torch=torch.__version__, threads=2, batch=1, layout="channels_last", stat="median of 5 interleaved rounds of the p10 of 60 calls, us, input copy included",
                command="python -m benchmarks.inference_se_gate", date=date)
    stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    lines = [f"# SE gate at eval, batch 1 (torch {torch.__version__}, 2 threads, channels_last, us: median of 5 interleaved rounds of the p10 of 60 calls, input copy included, {date})", "",
             "| shape | scale x, prepacked conv | gate in weights (plain) | gate in weights (repacked) |",
             "|---|---|---|---|"]
    lines += [f"| {r['cin']}->{r['cout']} @ {r['hw']} | {r['scale_then_packed']} | {r['gate_in_plain_weights']} | "
              f"{r['gate_in_repacked_weights']} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
