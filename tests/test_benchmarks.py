"""The benchmark harness (not timings: those live in benchmarks/results/): shapes come from the
models, byte counts, the correctness gate before timing, ratios, targets, the auto table and the
dispatch that reads it."""

from __future__ import annotations

import functools
import itertools
import json
import time

import pytest
import torch

import fastblocks as fb
from fastblocks import _dispatch
from benchmarks import auto_table, report, targets, timing
from benchmarks.cases import collect_cases
from benchmarks.compiled import ExpectCompiled, compile_fresh
from benchmarks.deadline import Deadline
from benchmarks.op_bench import VariantFactory, _check, bench_case, minimal_bytes
from benchmarks.run import main, parse_args


@pytest.fixture(scope="module")
def effnet_cases():
    return collect_cases(("efficientnet_b0",))


def test_cases_are_the_models_layers(effnet_cases):
    dw = [c for c in effnet_cases if c.op == "dwconv_bn_act"]
    # timm efficientnet_b0 has 16 depthwise layers; identical (config, shape) pairs are merged.
    assert sum(1 + len(c.also_in) for c in dw) == 16
    assert {c.shape for c in dw} >= {(32, 112, 112), (1152, 7, 7)}
    assert any("k5 s2" in c.config for c in dw)
    se = [c for c in effnet_cases if c.op == "squeeze_excite"]
    assert sum(1 + len(c.also_in) for c in se) == 16
    assert any(c.op == "activation" and c.config == "silu" for c in effnet_cases)
    assert len({(c.op, c.config, c.shape) for c in effnet_cases}) == len(effnet_cases)


def test_minimal_bytes():
    x, y = 100, 25  # stride-2 dwconv: y is a quarter of x
    assert minimal_bytes("dwconv_bn_act", "eval", x, y) == x + y
    assert minimal_bytes("dwconv_bn_act", "train_fwd", x, y) == 2 * x + y
    assert minimal_bytes("dwconv_bn_act", "train_fwd_bwd", x, y) == (2 * x + y) + (2 * x + 2 * y + x)
    assert minimal_bytes("squeeze_excite", "eval", x, x) == 3 * x
    assert minimal_bytes("activation", "train_fwd_bwd", x, x) == 2 * x + 3 * x


def test_correctness_gate_rejects_wrong_results():
    ref = [torch.ones(10, dtype=torch.float64)]
    assert _check([torch.ones(10)], ref, torch.float32) is None
    assert "rel. error" in _check([torch.ones(10) * 1.001], ref, torch.float32)
    assert "rel. error" in _check([torch.full((10,), float("nan"))], ref, torch.float32)
    grads = [torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)]
    assert "gradient 0" in _check([torch.ones(3), torch.ones(3) * 1.01], grads, torch.float32)
    # ill-conditioned gradients: judged against the eager reference's own error in that dtype
    assert _check([torch.ones(3), torch.ones(3) * 1.01], grads, torch.float32, [0.0, 0.008]) is None
    assert "gradient 0" in _check([torch.ones(3), torch.ones(3) * 1.01], grads, torch.float32, [0.0, 0.004])


def test_bench_case_rows(effnet_cases):
    case = next(c for c in effnet_cases if c.op == "dwconv_bn_act" and c.shape[0] == 1152 and "k3" in c.config)
    rows = []
    factory = VariantFactory(["eager"] + (["cpu"] if "cpu" in fb.available_backends() else []), with_compile=False)
    bench_case(case, factory, device="cpu", dtype=torch.float32, batch=2, memory_format=torch.channels_last,
               modes=("eval", "train_fwd"), quick=True, copy_bps=None, on_row=rows.append)
    assert {(r["mode"], r["variant"]) for r in rows} == {(m, v) for m in ("eval", "train_fwd") for v in factory.names()}
    assert all(r["status"] == "ok" and r["median_s"] > 0 and r["p10_s"] <= r["p90_s"] for r in rows)
    saved = {r["variant"]: r["saved_bytes"] for r in rows if r["mode"] == "train_fwd"}
    assert saved["eager"] < saved["reference"]


def _row(label, mode, variant, median, op="dwconv_bn_act", layout="nchw", shape=None):
    row = dict(op=op, label=label, mode=mode, variant=variant, median_s=median, status="ok", layout=layout)
    if shape is not None:
        row["shape"] = shape
    return row


def test_auto_table_orders_each_plane_size_class_apart(tmp_path):
    # cpu wins on the large layer, eager on the small one; pooled, eager wins (2x vs sqrt(4 * 0.25)).
    big, small = [8, 56, 56], [8, 7, 7]
    rows = [_row("L", "eval", "reference", 2.0, shape=big), _row("L", "eval", "eager", 1.0, shape=big),
            _row("L", "eval", "cpu", 0.5, shape=big),
            _row("S", "eval", "reference", 2.0, shape=small), _row("S", "eval", "eager", 1.0, shape=small),
            _row("S", "eval", "cpu", 8.0, shape=small)]
    meta = dict(device="cpu", date="2026-12-01T00:00:00")
    result = dict(meta=meta, op_rows=rows, model_rows=[], memory_rows=[])
    report.add_ratios(result)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    table, _ = auto_table.table_from([str(path)])
    key = ("cpu", "dwconv_bn_act", "nchw", "eval")
    assert table[key] == ("eager", "cpu")
    assert table[key + ("large",)] == ("cpu", "eager")
    assert table[key + ("small",)] == ("eager", "cpu")


def test_ratios_targets_and_auto_table(tmp_path):
    rows = [_row("a", "eval", "reference", 2.0), _row("a", "eval", "eager", 1.0), _row("a", "eval", "cpu", 4.0),
            _row("b", "eval", "reference", 2.0), _row("b", "eval", "eager", 1.0), _row("b", "eval", "cpu", 0.5),
            _row("a", "train_fwd_bwd", "reference", 1.0), _row("a", "train_fwd_bwd", "cpu", 0.5),
            _row("a", "train_fwd_bwd", "eager", 2.0),
            _row("s", "eval", "reference", 1.0, op="squeeze_excite"),
            _row("s", "eval", "eager", 0.5, op="squeeze_excite"),
            _row("s", "train_fwd_bwd", "reference", 1.0, op="squeeze_excite"),
            _row("s", "train_fwd_bwd", "cpu", 0.9, op="squeeze_excite")]
    meta = dict(device="cpu", op_batch=8, dtype="float32", layout="nchw", date="2026-11-23T00:00:00",
                device_name="test cpu", command="x", git_commit="x", torch="x", triton=None, cuda=None,
                threads=2, python="3")
    result = dict(meta=meta, op_rows=rows, model_rows=[], memory_rows=[])
    report.add_ratios(result)
    assert rows[1]["speedup_vs_reference"] == pytest.approx(2.0)
    assert rows[2]["speedup_vs_reference"] == pytest.approx(0.5)
    result["targets"] = targets.evaluate(result)
    dw = next(t for t in result["targets"] if "dwconv_bn_act eval" in t["target"])
    assert not dw["met"] and "cpu: geomean 1.41x, worst layer 0.50x" in dw["measured"]
    assert "geomean" in report.markdown(result)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    codegen = tmp_path / "codegen.json"  # other reports share the results directory
    codegen.write_text(json.dumps(dict(meta=dict(arch=90), kernels=[])))
    table, _ = auto_table.table_from([str(codegen), str(path)])
    # eval: eager geomean 2.0x beats cpu sqrt(0.5 * 4) = 1.41x; train: cpu 2x beats eager 0.5x
    assert table[("cpu", "dwconv_bn_act", "nchw", "eval")] == ("eager", "cpu")
    assert table[("cpu", "dwconv_bn_act", "nchw", "train")] == ("cpu", "eager")
    assert table[("cpu", "squeeze_excite", "nchw", "any")] == ("eager", "cpu")
    rendered = auto_table.render(*auto_table.table_from([str(path)]))
    namespace: dict = {}
    exec(rendered, namespace)
    assert namespace["AUTO_TABLE"] == table


def test_graph_rows_are_their_own_comparison(tmp_path):
    """GPU rows come per call and as CUDA-graph replays: ratios, tables, targets and the auto
    table never mix the two."""
    def r(variant, median, timing, frac=None):
        row = _row("a", "eval", variant, median, layout="channels_last")
        row.update(timing=timing, **({"frac_copy_bw": frac} if frac else {}))
        return row

    rows = [r("reference", 1.0, "per_call"), r("triton", 2.0, "per_call", 0.1),  # host-bound: slower
            r("reference", 0.5, "cuda_graph"), r("triton", 0.1, "cuda_graph", 0.75)]
    meta = dict(device="cuda", op_batch=128, dtype="bfloat16", layout="channels_last",
                date="2026-12-01T00:00:00", device_name="test gpu", command="x", git_commit="x", torch="x",
                triton="x", cuda="x", threads=16, python="3")
    result = dict(meta=meta, op_rows=rows, model_rows=[], memory_rows=[])
    report.add_ratios(result)
    assert rows[1]["speedup_vs_reference"] == pytest.approx(0.5)
    assert rows[3]["speedup_vs_reference"] == pytest.approx(5.0)
    found = {t["target"]: t for t in targets.evaluate(result)}
    assert found["GPU dwconv_bn_act eval >= 70% of copy bandwidth [CUDA-graph replay]"]["met"]
    assert not found["GPU dwconv_bn_act eval >= 70% of copy bandwidth [per call]"]["met"]
    md = report.markdown(result)
    assert md.count("#### dwconv_bn_act, eval") == 2 and "CUDA-graph replay" in md
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(result))
    table, sources = auto_table.table_from([str(path)])
    assert sources[("cuda", "dwconv_bn_act", "channels_last", "eval")][1] == {"triton": 0.5}  # per call only


def test_graph_row(monkeypatch):
    from benchmarks import op_bench
    from benchmarks.timing import Timing

    per_call = dict(op="activation", variant="triton", timing="per_call", status="ok", min_bytes=1000,
                    median_s=1e-3, p10_s=1e-3, p90_s=1e-3, samples=9, bytes_per_s=1e6, frac_copy_bw=0.5)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(op_bench, "time_cuda_graph", lambda calls, quick: Timing(1e-6, 1e-6, 2e-6, 10))
    row = op_bench._graph_row(per_call, [], True, copy_bps=4e9)
    assert row["timing"] == "cuda_graph" and row["median_s"] == 1e-6 and row["frac_copy_bw"] == pytest.approx(0.25)
    assert per_call["timing"] == "per_call" and per_call["median_s"] == 1e-3  # untouched

    def refuse(calls, quick):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(op_bench, "time_cuda_graph", refuse)
    row = op_bench._graph_row(per_call, [], True, copy_bps=4e9)
    assert row["status"] == "error" and "CUDA graph capture: RuntimeError" in row["error"]
    assert "median_s" not in row and "frac_copy_bw" not in row  # no per-call numbers under the graph label


@pytest.mark.gpu
def test_cuda_graph_timer_measures_device_time():
    from benchmarks.timing import time_cuda, time_cuda_graph

    x = torch.randn(1 << 14, device="cuda")

    def chain():  # 20 tiny kernels: the host takes longer to launch them than the GPU to run them
        y = x
        for _ in range(20):
            y = y * 1.5 + 1.0
        return y

    small = [chain] * 4
    graph = time_cuda_graph(small, quick=True)
    assert 0 < graph.median < time_cuda(small, rep_ms=20).median  # launch cost removed
    synced = [lambda: x.sum().item()]
    with pytest.raises(Exception):
        time_cuda_graph(synced, quick=True)  # a host sync cannot be captured
    assert torch.ones(1, device="cuda").item() == 1.0  # and the device is usable afterwards


def test_auto_order_reads_the_table(monkeypatch):
    from fastblocks import _auto_table

    monkeypatch.setattr(_auto_table, "AUTO_TABLE", {("cpu", "dwconv_bn_act", "nchw", "eval"): ("eager", "cpu"),
                                                    ("cpu", "dwconv_bn_act", "nchw", "eval", "large"): ("cpu", "eager"),
                                                    ("cpu", "activation", "channels_last", "any"): ("eager",)})
    x = torch.randn(2, 3, 4, 4)
    args = (x,) + (None,) * 10 + (False,)
    assert _dispatch.auto_order("dwconv_bn_act", x.device, args) == ("eager", "cpu")  # small: the pooled entry
    big = torch.randn(1, 3, 32, 32)
    assert _dispatch.auto_order("dwconv_bn_act", big.device, (big,) + args[1:]) == ("cpu", "eager")
    train = args[:11] + (True,)
    assert _dispatch.auto_order("dwconv_bn_act", x.device, train) == _dispatch.AUTO_PREFERENCE["cpu"]
    cl = x.contiguous(memory_format=torch.channels_last)
    assert _dispatch.auto_order("activation", x.device, (cl, "silu"))[0] == "eager"
    assert _dispatch.auto_order("activation", x.device, (x, "silu")) == _dispatch.AUTO_PREFERENCE["cpu"]
    # the resolved implementation follows the order
    impl = _dispatch.impl_for("activation", "auto", x.device, (cl, "silu"))
    assert impl is _dispatch._REGISTRY["activation"]["eager"]


def test_run_writes_results(tmp_path, capsys):
    rc = main(["--device", "cpu", "--quick", "--ops", "activation", "--modes", "eval", "--models", "none",
               "--no-compile", "--batch", "1", "--limit", "2", "--memory-batches", "--out", str(tmp_path), "--tag", "test"])
    assert rc == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    json_file = next(tmp_path.glob("*.json"))
    result = json.loads(json_file.read_text())
    assert result["meta"]["command"].startswith("python -m benchmarks.run --device cpu")
    assert result["meta"]["torch"] == torch.__version__
    assert {r["variant"] for r in result["op_rows"]} >= {"reference", "eager"}
    assert all(r["status"] == "ok" for r in result["op_rows"])
    assert any(f.endswith(".md") for f in files)
    assert "## Op level" in capsys.readouterr().out


def test_run_under_a_deadline_records_what_it_skipped(tmp_path):
    rc = main(["--device", "cpu", "--quick", "--ops", "activation", "--modes", "eval", "--models", "none",
               "--no-compile", "--batch", "1", "--limit", "2", "--memory-batches", "--out", str(tmp_path),
               "--deadline", "+0.001"])
    assert rc == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["op_rows"] == [] and len(result["meta"]["skipped"]) == 2
    assert result["meta"]["complete"] is False
    assert "incomplete" in next(tmp_path.glob("*.md")).read_text()


def test_deadline_judges_by_the_longest_piece_of_a_kind():
    deadline = Deadline(time.time() + 60)
    assert deadline.allows("op", "a")
    with deadline.measure("op"):
        pass
    deadline.longest["op"] = 120.0  # as if one case had taken two minutes
    assert not deadline.allows("op", "b")
    assert deadline.allows("model", "c") and not deadline.allows("model", "d", default_s=120.0)
    assert deadline.skipped == ["b", "d"]
    assert Deadline(None).allows("op", "e", default_s=1e9)


def test_compile_variants_really_compile():
    """Dynamo runs a code object eagerly once it has `recompile_limit` compiled entries; every op
    case's reference module shares one forward, so a compile column needs a fresh cache per case."""
    def forward(x):
        return x * 2 + 1

    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch._dynamo.config.patch(**{limit: 2}):
        for n in range(1, 5):
            with ExpectCompiled(f"size {n}"):
                compile_fresh(forward, backend="eager", dynamic=False)(torch.ones(n))
        torch._dynamo.reset()
        stale = torch.compile(forward, backend="eager", dynamic=False)
        stale(torch.ones(1)), stale(torch.ones(2))
        with pytest.raises(RuntimeError, match="compiled no graph for size 3"):
            with ExpectCompiled("size 3"):
                stale(torch.ones(3))
    torch._dynamo.reset()


@pytest.mark.parametrize("argv, message", [(["--batch", "0"], "--batch must be a positive integer"),
                                           (["--ops", "conv"], "invalid choice"),
                                           (["--deadline", "soon"], "expected +SECONDS or a Unix time"),
                                           (["--deadline", "+0"], "is not in the future")])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu"] + argv)
    assert message in capsys.readouterr().err


def test_progress_without_tqdm(monkeypatch, capsys):
    """A bare GPU machine's python3 may lack tqdm: the benchmark still runs."""
    import sys

    from benchmarks.run import _progress_bar

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    bar = _progress_bar()
    assert list(bar(["a", "b"], desc="op cases", unit="case")) == ["a", "b"]
    bar.write("note")
    assert capsys.readouterr().out.splitlines() == ["op cases: 1/2 case", "op cases: 2/2 case", "note"]


def test_host_overhead_table(capsys):
    from benchmarks import host_overhead

    assert host_overhead.main(["--calls", "2", "--backends", "eager", "cuda", "--model", "none"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert lines[0].split(" | ")[1:4] == ["plain PyTorch", "eager direct", "eager custom op"]
    body = lines[1:]  # (the |---| rule does not start with "| ")
    assert len(body) == 5
    for line in body:
        cells = [c.strip() for c in line.strip("| ").split(" | ")]
        assert all(float(c) > 0 for c in cells[1:4])
        if "cuda" not in fb.available_backends():
            assert cells[4:] == ["n/a", "n/a"]


def test_host_overhead_model_rows(capsys):
    pytest.importorskip("timm")
    from benchmarks import host_overhead

    host_overhead._model_rows("efficientnet_b0", "cpu", calls=1)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| eval forward", "| train step"]
    assert all(float(c) > 0 for r in rows[1:] for c in r.strip("| ").split(" | ")[1:])


def _sleeper(order: list, name: str, seconds: float):
    """A timed call that records its turn in ``order``."""
    def call():
        order.append(name)
        time.sleep(seconds)
    return call


def _broken():
    raise RuntimeError("boom")


def test_cpu_interleaved_timer_takes_turns_and_reports_failures():
    order = []
    sleeper = functools.partial(_sleeper, order)
    broken = _broken
    rounds = 4
    res = timing.time_cpu_interleaved({"fast": [sleeper("fast", 0.001)], "slow": [sleeper("slow", 0.003)],
                                       "bad": [broken]}, min_run_time=0.2, rounds=rounds)
    assert list(res) == ["fast", "slow", "bad"]
    assert isinstance(res["bad"], RuntimeError)
    assert 2.0 < res["slow"].median / res["fast"].median < 4.5
    # Each round runs every variant in turn: the runs switch variant at least twice a round.
    switches = sum(a != b for a, b in zip(order, order[1:]))
    assert switches >= 2 * rounds - 1


def test_model_accuracy_gate():
    from benchmarks.model_bench import GRAD_ERR_FLOOR, ModelBench

    gate = ModelBench._accuracy_problem
    assert gate("eval output", 3e-6, 1e-6, "fastblocks") is None
    assert "> 3.00e-06" in gate("eval output", 5e-6, 1e-6, "fastblocks")
    # gradients: rounding-level float32 errors (measured up to ~3e-3 for an exact stem) pass ...
    assert gate("training gradients", 3.1e-3, 1.5e-3, "fastblocks") is None
    assert gate("training gradients", GRAD_ERR_FLOOR, 1e-5, "fastblocks") is None
    # ... a wrong kernel does not
    assert "training gradients rel. error 2.00e-01" in gate("training gradients", 0.2, 1.5e-3, "fastblocks")
    assert gate("training gradients", 0.2, 0.15, "fastblocks") is None  # eager itself that far off
    assert "eager itself is off" in gate("training gradients", 0.5, None, "eager")
    assert gate("training gradients", float("nan"), 1e-3, "fastblocks") is not None


def test_repeats_interleaved_take_turns_and_report_failures():
    order = []
    step = functools.partial(_sleeper, order)
    res = timing.time_repeats_interleaved([step("a", 0.002), _broken, step("b", 0.006)], repeats=4, warmup=1)
    assert isinstance(res[1], RuntimeError)
    assert res[0].samples == res[2].samples == 4
    assert 2.0 < res[2].median / res[0].median < 4.5
    assert order == ["a", "b"] + ["a", "b"] * 4  # warm-ups, then one call of each per round


def test_repeats_interleaved_settle_each_turn_before_timing():
    order = []
    step = functools.partial(_sleeper, order)
    res = timing.time_repeats_interleaved([step("a", 0.002), step("b", 0.002)], repeats=2, warmup=0, pause=0.001,
                                          settle=0.02)
    assert res[0].samples == res[1].samples == 2
    # per turn: untimed calls for at least 20 ms (several of ~2 ms), then one timed call
    turns = [list(g) for _, g in itertools.groupby(order)]
    assert [t[0] for t in turns] == ["a", "b", "a", "b"] and all(3 <= len(t) <= 12 for t in turns)


def _tiny_model(name: str) -> torch.nn.Module:
    """A stand-in for a model of the zoo: conv, depthwise conv + BN + SiLU, pooled classifier."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.BatchNorm2d(8), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000))


@pytest.fixture
def tiny_models(monkeypatch):
    """The model benchmark builds :func:`_tiny_model` at 12x12 whatever the model name."""
    from benchmarks import model_bench

    monkeypatch.setattr(model_bench, "build_model", _tiny_model)
    monkeypatch.setattr(model_bench, "RESOLUTION", 12)
    return model_bench


def test_model_bench_on_cpu_checks_every_variant_then_times_them_in_one_interleaved_run(monkeypatch, tiny_models):
    model_bench = tiny_models
    calls = []
    real = model_bench.time_repeats_interleaved
    monkeypatch.setattr(model_bench, "time_repeats_interleaved", lambda fns, repeats, **kw: calls.append(len(fns)) or
                        real(fns, repeats, **kw))
    rows = []
    model_bench.ModelBench("tiny", "cpu", 2, torch.contiguous_format, quick=True).run(("eager", "fastblocks"),
                                                                                     rows.append)
    assert calls == [4]  # 2 variants x (inference, training step), all in one run
    assert [(r["variant"], r["mode"], r["status"]) for r in rows] == [
        ("eager", "inference", "ok"), ("eager", "train_step", "ok"),
        ("fastblocks", "inference", "ok"), ("fastblocks", "train_step", "ok")]
    saved = {r["variant"]: r["saved_bytes"] for r in rows if r["mode"] == "train_step"}
    assert 0 < saved["fastblocks"] < saved["eager"]
    assert all(5 <= r["samples"] <= 5 * 5 and r["img_per_s"] > 0 for r in rows)  # turns of up to 5 calls

    # compiled variants: every graph is built (and checked) before the timing starts, and the timing
    # runs those graphs: exactly one compile per (variant, mode), none discarded and rebuilt
    from benchmarks.compiled import graphs_compiled

    monkeypatch.setattr(model_bench, "COMPILE_OPTIONS", dict(backend="eager"))
    before, rows = graphs_compiled(), []
    model_bench.ModelBench("tiny", "cpu", 2, torch.contiguous_format, quick=True).run(
        ("eager", "compile", "fastblocks", "fastblocks+compile"), rows.append)
    assert calls[-1] == 8 and all(r["status"] == "ok" for r in rows)
    assert graphs_compiled() - before == 4


def test_recompute_tradeoff_writes_both_levels(tmp_path, capsys):
    pytest.importorskip("timm")
    from benchmarks import recompute_tradeoff

    rc = recompute_tradeoff.main(["--device", "cpu", "--models", "mobilenetv2_050", "--batch", "1", "--run-time",
                                  "0.05", "--out", str(tmp_path), "--tag", "test"])
    assert rc == 0
    result = json.loads(next(tmp_path.glob("*recompute-tradeoff*.json")).read_text())
    rows = {r["level"]: r for r in result["rows"]}
    assert set(rows) == {"elementwise", "depthwise"} and all("median_s" in r for r in rows.values())
    assert rows["depthwise"]["saved_bytes"] < rows["elementwise"]["saved_bytes"]
    assert result["environment"]["command"].startswith("python -m benchmarks.recompute_tradeoff")
    assert "| mobilenetv2_050 | 1 | depthwise |" in capsys.readouterr().out


def test_peer_runtimes_are_timed_in_the_inference_rounds(tiny_models, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    rc = main(["--device", "cpu", "--peers", "--models", "tiny", "--model-batch", "2", "--variants", "eager",
               "fastblocks", "--model-repeats", "3", "--no-plots", "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("*-peers.json")
    result = json.loads(path.read_text())
    assert result["meta"]["model_batch"] == [2] and set(result["meta"]["peers"]) == {"onnxruntime", "openvino"}
    rows = result["model_rows"]
    variants = ("eager", "fastblocks", "onnxruntime", "openvino")
    assert sorted((r["layout"], r["variant"]) for r in rows) == sorted(
        (lay, v) for lay in ("nchw", "channels_last") for v in variants)
    assert all(r["mode"] == "inference" and r["status"] == "ok" and 3 <= r["samples"] <= 3 * 5 for r in rows)
    for r in (r for r in rows if r["variant"] in ("onnxruntime", "openvino")):
        assert r["runtime"].startswith(r["variant"] + " ") and r["input_layout"] == "nchw"
        assert r["max_abs_diff_vs_eager"] < 1e-4 and r["rel_err"] < 1e-5
        assert 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"] and r["speedup_vs_eager"] > 0
    md = (tmp_path / path.name.replace(".json", ".md")).read_text()
    assert "## Inference against ONNX Runtime and OpenVINO" in md
    head = next(line for line in md.splitlines() if line.startswith("| model | batch | input layout |"))
    assert "onnxruntime ms (vs eager)" in head and "fastblocks vs openvino" in head
    assert "openvino max abs diff vs eager (rel. err)" in head
    table = md[md.index(head):].splitlines()[2:4]
    assert len(table) == 2 and all(line.startswith("| tiny | ") and "error" not in line for line in table)


def test_a_missing_peer_runtime_is_a_skipped_row_with_its_reason(tiny_models, monkeypatch, capsys):
    from benchmarks import peers

    monkeypatch.setattr(peers, "unavailable", lambda name: f"{name} is not installed")
    rows = []
    tiny_models.ModelBench("tiny", "cpu", 1, torch.contiguous_format, quick=True, modes=("inference",),
                           repeats=2).run(("eager", "openvino"), rows.append)
    rows.sort(key=lambda r: r["variant"])
    assert [(r["variant"], r["mode"], r["status"]) for r in rows] == [
        ("eager", "inference", "ok"), ("openvino", "inference", "skipped")]
    assert rows[1]["error"] == "openvino is not installed"
    assert "openvino skipped: openvino is not installed" in capsys.readouterr().out
    with pytest.raises(ValueError, match="threads"):
        peers.build("onnxruntime", _tiny_model("tiny"), torch.randn(1, 3, 8, 8), threads=0)
    with pytest.raises(ValueError, match="name"):
        peers.build("tensorrt", _tiny_model("tiny"), torch.randn(1, 3, 8, 8), threads=1)


def test_peers_preset_and_its_overrides(monkeypatch, capsys):
    args = parse_args(["--device", "cpu", "--peers", "--models", "mobilenetv2_100"])
    assert args.models == ["mobilenetv2_100"] and args.model_batch == [1, 8] and args.ops == ["none"]
    assert args.model_layouts == ["nchw", "channels_last"] and args.model_modes == ["inference"]
    assert args.variants == ["eager", "compile", "fastblocks", "onnxruntime", "openvino"] and args.tag == "peers"
    assert parse_args(["--device", "cpu", "--peers", "--variants", "eager"]).variants == [
        "eager", "onnxruntime", "openvino"]
    plain = parse_args(["--device", "cpu", "--channels-last"])
    assert plain.model_layouts == ["channels_last"] and plain.variants == ["eager", "compile", "fastblocks",
                                                                            "fastblocks+compile"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda", "--peers"])
    assert "CPU only" in capsys.readouterr().err
