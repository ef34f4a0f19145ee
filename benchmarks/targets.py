"""Performance targets, evaluated on one result's rows.

- CPU: dwconv_bn_act eval >= 2x eager PyTorch at every layer shape; EfficientNet-B0 / MobileNetV2
  inference >= 1.5x eager and >= 1.0x torch.compile (freezing); training: bytes saved for backward
  <= 0.5x eager, step time <= 1.15x eager.
- GPU op-benchmark targets: dwconv_bn_act train fwd+bwd >= 2.0x eager and >= 1.3x torch.compile;
  dwconv_bn_act eval >= 70%, SE scale and SiLU forward >= 80% of the measured copy bandwidth; each
  for per-call and CUDA-graph-replay timing.
- GPU model targets: EfficientNet-B0 training >= 1.4x eager and >= 1.1x torch.compile, peak memory
  <= 0.6x eager; inference >= 1.6x eager.

A target is evaluated only when the run has the rows it needs; the 'measured' text says what the
rows were (batch, layout), so a quick run at a smaller batch is not mistaken for the target setup.
"""

from __future__ import annotations

from typing import Optional

from .report import geomean, timing_of

FUSED = ("eager", "cpu", "triton", "cuda")


def _best_fused(rows: list, key: str) -> Optional[tuple[str, float]]:
    """(backend, geomean of ``key``) of the compiled fastblocks backend with the best geomean."""
    best = None
    for backend in ("cpu", "triton", "cuda"):
        g = geomean(r.get(key) for r in rows if r["variant"] == backend and r.get("status") == "ok")
        if g is not None and (best is None or g > best[1]):
            best = (backend, g)
    return best


def _ops(result, op, mode, timing="per_call"):
    return [r for r in result["op_rows"] if r["op"] == op and r["mode"] == mode and timing_of(r) == timing]


# GPU op targets are evaluated on both timings: per call (what an eager caller waits, the host's
# launch cost included) and CUDA-graph replay (device time: what the kernel targets are about).
_GPU_TIMINGS = (("cuda_graph", "CUDA-graph replay"), ("per_call", "per call"))


def _model(result, model, mode, variant):
    for r in result["model_rows"]:
        if r["model"] == model and r["mode"] == mode and r["variant"] == variant and r.get("status") == "ok":
            return r
    return None


def evaluate(result: dict) -> list[dict]:
    meta = result["meta"]
    out = []

    def add(target, measured, met):
        out.append(dict(target=target, measured=measured, met=bool(met)))

    setup = f"(batch {meta['op_batch']}, {meta['dtype']}, {meta['layout']})"
    if meta["device"] == "cpu":
        rows = _ops(result, "dwconv_bn_act", "eval")
        best = _best_fused(rows, "speedup_vs_reference")
        if best:
            worst = min(r["speedup_vs_reference"] for r in rows if r["variant"] == best[0] and r.get("status") == "ok")
            add("CPU dwconv_bn_act eval >= 2x eager at the layer shapes",
                f"{best[0]}: geomean {best[1]:.2f}x, worst layer {worst:.2f}x {setup}", worst >= 2.0)
        for model in ("efficientnet_b0", "mobilenetv2_100"):
            fused, eager, comp = (_model(result, model, "inference", v) for v in ("fastblocks", "eager", "compile"))
            if fused and eager:
                mb = f"(batch {fused['batch']}, {fused['layout']})"
                add(f"CPU {model} inference >= 1.5x eager", f"{fused['speedup_vs_eager']:.2f}x {mb}",
                    fused["speedup_vs_eager"] >= 1.5)
                if comp:
                    add(f"CPU {model} inference >= 1.0x torch.compile (freezing)",
                        f"{fused['speedup_vs_compile']:.2f}x {mb}", fused["speedup_vs_compile"] >= 1.0)
            fused, eager = _model(result, model, "train_step", "fastblocks"), _model(result, model, "train_step", "eager")
            if fused and eager and fused.get("saved_bytes_vs_eager"):
                mb = f"(batch {fused['batch']}, {fused['layout']})"
                add(f"CPU {model} training: saved bytes <= 0.5x eager",
                    f"{fused['saved_bytes_vs_eager']:.2f}x {mb}", fused["saved_bytes_vs_eager"] <= 0.5)
                slow = 1 / fused["speedup_vs_eager"]
                add(f"CPU {model} training: step time <= 1.15x eager", f"{slow:.2f}x {mb}", slow <= 1.15)
        return out

    for timing, how in _GPU_TIMINGS:
        rows = _ops(result, "dwconv_bn_act", "train_fwd_bwd", timing)
        best = _best_fused(rows, "speedup_vs_reference")
        if best:
            add(f"GPU dwconv_bn_act train fwd+bwd >= 2.0x eager [{how}]",
                f"{best[0]}: geomean {best[1]:.2f}x {setup}", best[1] >= 2.0)
        best = _best_fused(rows, "speedup_vs_compile")
        if best:
            add(f"GPU dwconv_bn_act train fwd+bwd >= 1.3x torch.compile [{how}]",
                f"{best[0]}: geomean {best[1]:.2f}x {setup}", best[1] >= 1.3)
        for op, mode, bound, name in (("dwconv_bn_act", "eval", 0.7, "dwconv_bn_act eval"),
                                      ("squeeze_excite", "eval", 0.8, "SE scale (eval)"),
                                      ("activation", "eval", 0.8, "SiLU forward")):
            best = _best_fused(_ops(result, op, mode, timing), "frac_copy_bw")
            if best:
                add(f"GPU {name} >= {bound:.0%} of copy bandwidth [{how}]",
                    f"{best[0]}: geomean {best[1]:.0%} {setup}", best[1] >= bound)
    model = "efficientnet_b0"
    fused = _model(result, model, "train_step", "fastblocks")
    if fused and fused.get("speedup_vs_eager"):
        mb = f"(batch {fused['batch']}, {fused['layout']})"
        add("GPU EfficientNet-B0 training >= 1.4x eager", f"{fused['speedup_vs_eager']:.2f}x {mb}",
            fused["speedup_vs_eager"] >= 1.4)
        if fused.get("speedup_vs_compile"):
            add("GPU EfficientNet-B0 training >= 1.1x torch.compile", f"{fused['speedup_vs_compile']:.2f}x {mb}",
                fused["speedup_vs_compile"] >= 1.1)
        if fused.get("peak_bytes_vs_eager"):
            add("GPU EfficientNet-B0 peak memory <= 0.6x eager", f"{fused['peak_bytes_vs_eager']:.2f}x {mb}",
                fused["peak_bytes_vs_eager"] <= 0.6)
    fused = _model(result, model, "inference", "fastblocks")
    if fused and fused.get("speedup_vs_eager"):
        add("GPU EfficientNet-B0 inference >= 1.6x eager",
            f"{fused['speedup_vs_eager']:.2f}x (batch {fused['batch']}, {fused['layout']})",
            fused["speedup_vs_eager"] >= 1.6)
    return out
