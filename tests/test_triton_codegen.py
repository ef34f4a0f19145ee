"""The Triton kernels compile for sm_90 and generate the memory accesses the speed targets need.

Runs ``python -m benchmarks.triton_codegen --models smoke`` (every kernel family on small
bfloat16 channels_last cases, C = 32) in a subprocess without TRITON_INTERPRET: each launch is
compiled for sm_90 by Triton's real compiler (ptxas included) and nothing runs, so this works on a
machine without a GPU. Checks: every kernel compiles; the full-size tensors are read and written
with 16-byte accesses (a 2-byte access means a scalar bf16 load, i.e. 8x the memory instructions:
what clamped channel indices did to every conv pass); no kernel spills more than a few registers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.tooling

from tests.helpers import gpu_compile_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Kernels that stream full-size bf16 tensors (the reduction-finishing kernels read fp32 rows).
STREAMING = ("_fused_kernel", "_dx_kernel", "_pool_kernel", "_scale_fwd_kernel", "_scale_bwd_kernel",
             "_act_fwd_kernel", "_act_bwd_kernel")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("codegen")
    env = gpu_compile_env()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.triton_codegen", "--models", "smoke", "--channels-last",
         "--configs", "first", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    files = [f for f in os.listdir(out) if f.endswith(".json")]
    assert proc.returncode == 0 and len(files) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(out, files[0])) as f:
        return json.load(f)


def test_every_kernel_family_compiles(report):
    assert report["failures"] == []
    names = {row["kernel"] for row in report["kernels"]}
    assert set(STREAMING) | {"_sum_rows_kernel", "_welford_finalize_kernel"} <= names
    modes = {row["constexprs"].get("MODE") for row in report["kernels"] if row["kernel"] == "_fused_kernel"}
    assert modes == {0, 1, 2, 3}  # stats, normalise, backward sums, backward dz (+ dW)


def test_full_size_tensors_use_16_byte_accesses(report):
    for row in report["kernels"]:
        if row["kernel"] not in STREAMING:
            continue
        what = f"{row['kernel']} {row['constexprs']}"
        assert row["widest_ld"] == 16, what
        # bf16 elements moved one at a time: a kernel lost its vectorisation
        assert "2" not in {str(k) for k in row["global_ld_bytes"]}, f"{what}: {row['global_ld_bytes']}"
        if row["global_st_bytes"] and max(int(k) for k in row["global_st_bytes"]) > 4:
            assert row["widest_st"] == 16, what
    outputs = [r for r in report["kernels"] if r["kernel"] == "_fused_kernel" and r["constexprs"]["MODE"] == 1]
    assert outputs and all(r["widest_st"] == 16 for r in outputs)


def test_no_heavy_register_spills(report):
    """At most a few spilled registers (ptxas sometimes spills 4-8 bytes at low register counts);
    before the kernel-row loop every k5 pass spilled 100-576 bytes a thread."""
    rows = [r for r in report["kernels"] if "spill_store_bytes" in r]
    if not rows:
        pytest.skip("ptxas (shipped with Triton's NVIDIA backend) is not available")
    spilling = [(r["kernel"], r["constexprs"], r["spill_store_bytes"]) for r in rows if r["spill_store_bytes"] > 32]
    assert spilling == []


def test_warm_cache_is_reused(tmp_path):
    """``benchmarks.gpu.triton_warm`` fills TRITON_CACHE_DIR from parallel compile-only processes; a
    second run finds every binary there (what the GPU benchmark's autotuner relies on)."""
    env = gpu_compile_env(TRITON_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "benchmarks.gpu.triton_warm", "--models", "smoke", "--ops", "activation",
           "--channels-last", "--batch", "2", "--jobs", "2"]

    def warm():
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return {str(p.relative_to(tmp_path)) for p in (tmp_path / "cache").rglob("*") if p.is_file()}

    first = warm()
    assert any(name.endswith(".cubin") for name in first)
    assert warm() == first


def test_warm_stops_at_its_deadline(tmp_path):
    """A warm-up that would run past its --deadline is stopped there (the GPU suite's phase it runs
    in has a hard end); it says so and fails, so make only notes it."""
    env = gpu_compile_env(TRITON_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "benchmarks.gpu.triton_warm", "--models", "smoke", "--channels-last",
           "--batch", "2", "--jobs", "2", "--deadline", "+2"]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert time.time() - start < 30
    assert proc.returncode != 0 and "2 stopped at the deadline" in proc.stdout, proc.stdout + proc.stderr[-2000:]
