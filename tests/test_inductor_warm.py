"""benchmarks.gpu.inductor_warm makes exactly the compiles the op benchmark's ``compile`` column makes:
run after it with the same TORCHINDUCTOR_CACHE_DIR, the benchmark gets every graph from the cache."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from benchmarks.gpu.inductor_warm import forget_autotuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.tooling


def test_benchmark_compiles_come_from_the_warmed_cache(tmp_path):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    env.pop("TRITON_INTERPRET", None)
    case = ["--ops", "activation", "--limit", "1", "--batch", "2", "--modes", "eval", "train_fwd_bwd",
            "--channels-last"]
    warm = subprocess.run([sys.executable, "-m", "benchmarks.gpu.inductor_warm", "--device", "cpu", "--dtype", "float32",
                           "--jobs", "1", *case], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert warm.returncode == 0, warm.stdout[-2000:] + warm.stderr[-2000:]
    bench = subprocess.run([sys.executable, "-m", "benchmarks.run", "--device", "cpu", "--quick", "--models", "none",
                            "--op-backends", "eager", "--no-plots", "--out", str(tmp_path / "out"), *case],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    (path,) = glob.glob(str(tmp_path / "out" / "*.json"))
    with open(path) as f:
        result = json.load(f)
    caches = result["meta"]["compile_caches"]
    # eval forward, training forward and backward graphs
    assert caches.get("inductor.fxgraph_cache_hit", 0) >= 3, caches
    assert caches.get("inductor.fxgraph_cache_miss", 0) == 0, caches
    assert {r["variant"] for r in result["op_rows"] if r["status"] == "ok"} == {"reference", "compile", "eager"}
    assert not (tmp_path / "out" / "plots").exists()  # --no-plots: JSON + markdown only


def test_forget_autotuning(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.best_config", "a/b/y.best_config", "a/b/kernel.py"):
        (tmp_path / name).write_text("{}")
    assert forget_autotuning(str(tmp_path)) == 2
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["kernel.py"]
