"""Graph capture: AOTAutograd (torch.compile's tracer) sees the Triton kernels of the ``triton``
backend instead of one opaque fastblocks op; other backends stay opaque.

Runs ``tests/_graph_capture_worker.py`` in a subprocess without TRITON_INTERPRET on fake CUDA
tensors: no GPU needed, nothing launches. Checked per op, forward and backward graph (static sizes,
and symbolic batch / image sizes for three cases): every launch
is a ``triton_kernel_wrapper_functional`` node of the expected kernels, no fastblocks op is left,
and torch's analysis of the kernels (lowered to TTIR for sm_90) found exactly the output buffers
written (if it failed, every tensor argument would be copied before each launch), and after
Inductor's reinplacing pass no launch copies anything (each writes its fresh buffer). The numbers
under torch.compile are checked on a GPU (``test_triton_gpu.py::test_compiled_graph_capture``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from fastblocks.ops import _capture  # noqa: E402
from tests.helpers import gpu_compile_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_graph_capture_worker.py")
# Output / scratch buffers of the kernels: the only arguments a launch may have copied.
WRITTEN = {"out_ptr", "p0_ptr", "p1_ptr", "p2_ptr", "out_mean_ptr", "out_var_ptr", "dx_ptr", "part_ptr", "y_ptr"}
DW_TRAIN = ({"_fused_kernel", "_welford_finalize_kernel"}, {"_fused_kernel", "_dx_kernel"})
EXPECTED = {  # case -> (kernels in the forward graph, kernels in the backward graph)
    "dwconv_k3_s1_train_cl": DW_TRAIN,
    "dwconv_k5_s2_eval_cl": ({"_fused_kernel"}, {"_fused_kernel", "_dx_kernel"}),
    "dwconv_k3_s2_train_nchw": DW_TRAIN,
    "dwconv_auto_train_cl": DW_TRAIN,
    "bn_act_train_cl": ({"_fused_kernel", "_welford_finalize_kernel"}, {"_fused_kernel"}),
    "squeeze_excite_cl": ({"_pool_kernel", "_scale_fwd_kernel"}, {"_scale_bwd_kernel"}),
    "eca_cl": ({"_pool_kernel", "_scale_fwd_kernel"}, {"_scale_bwd_kernel"}),
    "gate_scale_cl": ({"_scale_fwd_kernel"}, {"_scale_bwd_kernel"}),
    "silu_cl": ({"_act_fwd_kernel"}, {"_act_bwd_kernel"}),
}
# traced with symbolic batch / image sizes (what torch.compile does once a size changes); at
# 8 x 28 x 28 the dwconv reductions span several programs, whose partial rows sum_rows reduces
EXPECTED.update({
    "dwconv_k3_s1_train_cl_dynamic": (DW_TRAIN[0], DW_TRAIN[1] | {"_sum_rows_kernel"}),
    "dwconv_k5_s2_eval_cl_dynamic": ({"_fused_kernel"}, {"_fused_kernel", "_dx_kernel", "_sum_rows_kernel"}),
    "squeeze_excite_cl_dynamic": EXPECTED["squeeze_excite_cl"],
})

pytestmark = pytest.mark.skipif(not _capture.supported(), reason="this torch has no wrap_triton")


def _trace(*cases: str, **env_extra: str) -> dict:
    env = gpu_compile_env(**env_extra)
    proc = subprocess.run([sys.executable, WORKER, *cases], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def graphs():
    return _trace()


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_triton_calls_become_kernel_launches(graphs, case):
    for phase, expected in zip(("forward", "backward"), EXPECTED[case]):
        nodes = graphs[case][phase]
        assert [n["op"] for n in nodes if "op" in n] == [], f"{case} {phase}: a fastblocks op was left whole"
        assert {n["kernel"] for n in nodes} == expected, f"{case} {phase}"
        for node in nodes:
            assert node["clones"] and set(node["clones"]) <= WRITTEN, f"{case} {phase}: {node}"
            assert node["clones_after_reinplace"] == [], f"{case} {phase}: {node}"


def test_kernel_sources_are_in_compile_cache_keys(graphs):
    """An edited kernel must not be served from torch.compile's cache: the fused ops list the
    kernels their traced graphs may launch, and torch can read their source."""
    sources = graphs["cache_key_sources"]
    launched = {n["kernel"] for case in EXPECTED for phase in ("forward", "backward")
                for n in graphs[case][phase]}
    assert launched <= set(sources)
    assert all(length > 100 for length in sources.values()), sources


def test_other_backends_stay_opaque(graphs):
    case = graphs["dwconv_eager_train_cl"]
    assert case["forward"] == [{"op": "fastblocks.dwconv_bn_act.default"}]
    assert case["backward"] == [{"op": "fastblocks.dwconv_bn_act_backward.default"}]


def test_capture_can_be_turned_off():
    case = _trace("silu_cl", FASTBLOCKS_GRAPH_CAPTURE="0")["silu_cl"]
    assert case["forward"] == [{"op": "fastblocks.activation.default"}]
    assert case["backward"] == [{"op": "fastblocks.activation_backward.default"}]


def test_inductor_gets_the_pruned_configs(graphs):
    """The configs each captured launch hands Inductor's autotuner went through the kernels'
    config pruning (torch runs early_config_prune while tracing), FASTBLOCKS_TRITON_CONFIGS too:
    else the GPU tests under torch.compile would compile every config."""
    assert any((n["configs"] or 0) > 1 for n in graphs["dwconv_k3_s1_train_cl"]["forward"])
    limited = _trace("dwconv_k3_s1_train_cl", "squeeze_excite_cl", FASTBLOCKS_TRITON_CONFIGS="1")
    for case in limited.values():
        if isinstance(case, dict) and "forward" in case:
            launches = case["forward"] + case["backward"]
            assert {n["configs"] for n in launches if n["configs"] is not None} == {1}, launches
