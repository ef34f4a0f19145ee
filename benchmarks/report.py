"""Results on record: JSON (every row + environment), a markdown table, PNG plots."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Optional

from .peers import PEERS

FASTBLOCKS_VARIANTS = ("eager", "cpu", "triton", "cuda")
TIMING_HEADINGS = {"per_call": "", "cuda_graph": " — CUDA-graph replay (device time, no launch overhead)"}


def _ms(s: Optional[float]) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}"


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if not a or not b else a / b


def _x(r: Optional[float]) -> str:
    return "-" if r is None else f"{r:.2f}x"


def timing_of(row: dict) -> str:
    """How an op row was timed: "per_call" or "cuda_graph" (results written before the
    CUDA-graph rows existed have per-call rows only, with no field)."""
    return row.get("timing", "per_call")


def geomean(values) -> Optional[float]:
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def add_ratios(result: dict) -> None:
    """Speedups of every op row against the reference and torch.compile rows of the same case,
    and of every model row against eager and compile (same model, mode, batch, layout)."""
    index = {}
    for r in result["op_rows"]:
        if r.get("status") == "ok":
            index[(r["label"], r["mode"], timing_of(r), r["variant"])] = r["median_s"]
    for r in result["op_rows"]:
        if r.get("status") != "ok":
            continue
        key = (r["label"], r["mode"], timing_of(r))
        r["speedup_vs_reference"] = _ratio(index.get(key + ("reference",)), r["median_s"])
        r["speedup_vs_compile"] = _ratio(index.get(key + ("compile",)), r["median_s"])
    index = {}
    for r in result["model_rows"]:
        if r.get("status") == "ok":
            index[_model_key(r) + (r["variant"],)] = r
    for r in result["model_rows"]:
        if r.get("status") != "ok":
            continue
        for base in ("eager", "compile"):
            other = index.get(_model_key(r) + (base,))
            if other is None:
                continue
            r[f"speedup_vs_{base}"] = _ratio(other["median_s"], r["median_s"])
            if r.get("saved_bytes") and other.get("saved_bytes"):
                r[f"saved_bytes_vs_{base}"] = r["saved_bytes"] / other["saved_bytes"]
            if r.get("peak_bytes") and other.get("peak_bytes"):
                r[f"peak_bytes_vs_{base}"] = r["peak_bytes"] / other["peak_bytes"]


def _model_key(row: dict) -> tuple:
    """What a model row is compared within: model, mode, batch, layout (results written before
    several layouts shared one file have one layout each)."""
    return row["model"], row["mode"], row["batch"], row.get("layout")


def _op_tables(result: dict) -> list[str]:
    rows = result["op_rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fused = [v for v in variants if v in FASTBLOCKS_VARIANTS]
    gpu = result["meta"]["device"] == "cuda"
    lines = []
    groups: dict = defaultdict(dict)
    for r in rows:
        groups[(r["op"], r["mode"], timing_of(r))].setdefault(r["label"], {})[r["variant"]] = r
    for (op, mode, timing), cases in groups.items():
        lines.append(f"\n#### {op}, {mode}{TIMING_HEADINGS.get(timing, '')}\n")
        head = ["layer (C@HxW, config)"] + [f"{v} ms" for v in variants]
        head += [f"{v} vs ref" for v in fused] + [f"{v} vs compile" for v in fused]
        if gpu:
            head += [f"{v} % copy BW" for v in fused]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for label, by_variant in cases.items():
            cells = [label[len(op) + 1:] if label.startswith(op + " ") else label]
            for v in variants:
                r = by_variant.get(v, {})
                cells.append(_ms(r.get("median_s")) if r.get("status") == "ok" else r.get("status", "-"))
            cells += [_x(by_variant.get(v, {}).get("speedup_vs_reference")) for v in fused]
            cells += [_x(by_variant.get(v, {}).get("speedup_vs_compile")) for v in fused]
            if gpu:
                cells += [("-" if by_variant.get(v, {}).get("frac_copy_bw") is None
                           else f"{100 * by_variant[v]['frac_copy_bw']:.0f}%") for v in fused]
            lines.append("| " + " | ".join(cells) + " |")
        summary = ["geomean"] + [""] * len(variants)
        for key in ("speedup_vs_reference", "speedup_vs_compile"):
            summary += [_x(geomean(c.get(v, {}).get(key) for c in cases.values())) for v in fused]
        if gpu:
            summary += [""] * len(fused)
        lines.append("| " + " | ".join(summary) + " |")
    return lines


def _model_table(result: dict) -> list[str]:
    lines = ["| model | batch | mode | variant | img/s | p10-p90 ms | vs eager | vs compile | saved MiB | "
             "saved vs eager | peak MiB | peak vs eager |", "|" + "---|" * 12]
    for r in result["model_rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['variant']} | {r['status']}: "
                         f"{r.get('error', '')} |" + " |" * 7)
            continue
        mib = lambda b: "-" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
        lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['variant']} | {r['img_per_s']:.1f} | "
                     f"{_ms(r['p10_s'])}-{_ms(r['p90_s'])} | {_x(r.get('speedup_vs_eager'))} | "
                     f"{_x(r.get('speedup_vs_compile'))} | {mib(r.get('saved_bytes'))} | "
                     f"{_x(r.get('saved_bytes_vs_eager'))} | {mib(r.get('peak_bytes'))} | "
                     f"{_x(r.get('peak_bytes_vs_eager'))} |")
    return lines


def _inference_table(result: dict) -> list[str]:
    """Inference time of every variant side by side, one line per (model, batch, layout), with the
    peer runtimes' columns and fastblocks' speed relative to each peer (> 1: fastblocks faster)."""
    rows = [r for r in result["model_rows"] if r["mode"] == "inference"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    peers = [v for v in variants if v in PEERS]
    groups: dict = defaultdict(dict)
    for r in rows:
        groups[(r["model"], r["batch"], r.get("layout"))][r["variant"]] = r
    head = ["model", "batch", "input layout"] + [f"{v} ms (vs eager)" for v in variants]
    head += [f"fastblocks vs {p}" for p in peers] + [f"{p} max abs diff vs eager (rel. err)" for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, batch, layout), by in groups.items():
        cells = [model, str(batch), layout or "-"]
        for v in variants:
            r = by.get(v, {})
            ok = r.get("status") == "ok"
            cells.append(f"{_ms(r['median_s'])} ({_x(r.get('speedup_vs_eager'))})" if ok else r.get("status", "-"))
        fused = by.get("fastblocks", {})
        for p in peers:
            both = fused.get("status") == "ok" and by.get(p, {}).get("status") == "ok"
            cells.append(_x(_ratio(by[p]["median_s"], fused["median_s"])) if both else "-")
        for p in peers:
            r = by.get(p, {})
            diff = r.get("max_abs_diff_vs_eager")
            cells.append("-" if diff is None else f"{diff:.1e} ({r['rel_err']:.1e})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# fastblocks benchmark: {meta['device_name']}", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}, git {meta['git_commit']}",
             f"- torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, "
             f"threads {meta['threads']}, python {meta['python']}"]
    if meta.get("load_average_start"):
        end = meta.get("load_average_end") or meta.get("load_average_last")
        lines.append(f"- load average (1, 5, 15 min) at the start {meta['load_average_start']}"
                     + (f", at the end {end}" if end else ""))
    threading_env = {k: v for k, v in (meta.get("threading_env") or {}).items() if v is not None}
    if threading_env:
        lines.append("- threading environment: " + ", ".join(f"{k}={v}" for k, v in threading_env.items()))
    if meta.get("skipped"):
        lines.append(f"- **incomplete**: the run's --deadline skipped {len(meta['skipped'])}: "
                     + ", ".join(meta["skipped"]))
    elif meta.get("complete") is False:
        lines.append("- **incomplete**: written before the run ended (it was stopped or is still running)")
    if meta.get("copy_bandwidth"):
        lines.append(f"- measured device copy bandwidth: {meta['copy_bandwidth']['bytes_per_s'] / 1e9:.0f} GB/s")
    lines.append(f"- op level: batch {meta['op_batch']}, {meta['dtype']}, {meta['layout']}; "
                 "times are medians (p10/p90 in the JSON); 'vs ref' = reference time / this time")
    if any(timing_of(r) == "cuda_graph" for r in result["op_rows"]):
        lines.append("- op tables come twice: per call (CUDA events around each eager call: what a caller "
                     "waits, host launch cost included) and CUDA-graph replay (the same calls captured once: "
                     "device time, the fair measure of the kernels and of '% copy BW')")
    if result["op_rows"]:
        lines += ["", "## Op level"] + _op_tables(result)
    if result["model_rows"]:
        lines += ["", "## Model level", ""] + _model_table(result)
    if any(r["variant"] in PEERS for r in result["model_rows"]):
        versions = ", ".join(sorted({r["runtime"] for r in result["model_rows"] if r.get("runtime")}))
        lines += ["", "## Inference against ONNX Runtime and OpenVINO", "",
                  f"Median ms per call and speed relative to eager in the same interleaved rounds ({versions}). "
                  "The peers run the unpatched model's ONNX export on a contiguous NCHW array: the input layout "
                  "does not apply to them (each layout's rows time them again in that layout's rounds). "
                  "Max abs diff: of the peer's logits from eager's; rel. err: against the float64 model.", ""]
        lines += _inference_table(result)
    if result.get("memory_rows"):
        lines += ["", "## Bytes saved for backward vs batch", "", "| model | batch | eager MiB | fastblocks MiB | ratio |",
                  "|---|---|---|---|---|"]
        by = defaultdict(dict)
        for r in result["memory_rows"]:
            by[(r["model"], r["batch"])][r["variant"]] = r["saved_bytes"]
        for (model, batch), v in by.items():
            e, f = v.get("eager"), v.get("fastblocks")
            lines.append(f"| {model} | {batch} | {e / 2**20:.1f} | {f / 2**20:.1f} | {f / e:.2f}x |")
    if result.get("targets"):
        lines += ["", "## Against the targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in result["targets"]:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
    if result.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in result["plots"])]
    return "\n".join(lines) + "\n"


def plots(result: dict, out_dir: str, slug: str) -> list[str]:
    """Speedup per layer shape (one PNG per mode) and saved bytes vs batch; returns the paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    rows = [r for r in result["op_rows"] if r.get("status") == "ok" and r["variant"] in FASTBLOCKS_VARIANTS]
    for mode, timing in dict.fromkeys((r["mode"], timing_of(r)) for r in rows):
        mode_rows = sorted((r for r in rows if r["mode"] == mode and timing_of(r) == timing),
                           key=lambda r: r["op"])  # grouped by op
        labels = list(dict.fromkeys(r["label"] for r in mode_rows))
        backends = list(dict.fromkeys(r["variant"] for r in mode_rows))
        fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(labels) * max(1, len(backends))), 5))
        width = 0.8 / max(1, len(backends))
        for i, b in enumerate(backends):
            by = {r["label"]: r.get("speedup_vs_reference") or 0 for r in mode_rows if r["variant"] == b}
            ax.bar([j + i * width for j in range(len(labels))], [by.get(lab, 0) for lab in labels], width, label=b)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_ylabel("speedup vs eager reference")
        graph = timing != "per_call"
        ax.set_title(f"{result['meta']['device_name']}: {mode}{' (CUDA-graph replay)' if graph else ''}, "
                     f"batch {result['meta']['op_batch']}, {result['meta']['dtype']}, {result['meta']['layout']}")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, f"{slug}-speedup-{mode}{'-graph' if graph else ''}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    if result.get("memory_rows"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for model in dict.fromkeys(r["model"] for r in result["memory_rows"]):
            for variant, style in (("eager", "--"), ("fastblocks", "-")):
                pts = [(r["batch"], r["saved_bytes"] / 2**20) for r in result["memory_rows"]
                       if r["model"] == model and r["variant"] == variant]
                ax.plot(*zip(*pts), style, marker="o", label=f"{model} {variant}")
        ax.set_xlabel("batch")
        ax.set_ylabel("MiB saved for backward")
        ax.set_title(f"{result['meta']['device_name']}: training memory vs batch")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{slug}-memory.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write(result: dict, out_dir: str, slug: str, with_plots: bool = True) -> tuple[str, str]:
    """<slug>.json, <slug>.md and (``with_plots``) plots/<slug>-*.png under ``out_dir``; returns
    the JSON and md paths."""
    os.makedirs(out_dir, exist_ok=True)
    if with_plots:
        result["plots"] = [os.path.relpath(p, out_dir) for p in plots(result, os.path.join(out_dir, "plots"), slug)]
    json_path, md_path = os.path.join(out_dir, f"{slug}.json"), os.path.join(out_dir, f"{slug}.md")
    write_whole(json_path, json.dumps(result, indent=1, default=str))
    write_whole(md_path, markdown(result))
    return json_path, md_path


def write_whole(path: str, text: str) -> None:
    """Write to a temporary file, then rename: a run stopped mid-write (a job's time limit, the GPU
    suite's SIGINT) leaves the previous complete file, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    """``python -m benchmarks.report RESULT.json``: rewrite the markdown and plots of a result from
    its JSON (after a change to the report code; the measured rows are not touched)."""
    import sys

    for path in (sys.argv[1:] if argv is None else argv):
        with open(path) as f:
            result = json.load(f)
        out_dir, name = os.path.split(os.path.abspath(path))
        print("wrote", *write(result, out_dir, name[:-len(".json")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
