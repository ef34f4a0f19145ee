"""The ``triton`` backend on a CUDA GPU, realistic shapes (skipped without CUDA).

Same checks as ``test_triton_interpreter.py`` (its ``run_case`` builds the float64 inputs and calls
``tests.helpers.compare_with_reference``), compiled for the GPU instead of interpreted: the depthwise
layers of EfficientNet-B0 (batch 8, bf16 / fp32, channels_last and NCHW, train and eval), SE / ECA
at B0 sizes, activations on large tensors, plus bitwise determinism, with FASTBLOCKS_POISON=1.
"""

from __future__ import annotations

import os

import pytest

from tests.test_triton_interpreter import ACTS, run_case
from tests.helpers import assert_deterministic_b0_layer

pytestmark = pytest.mark.gpu

# EfficientNet-B0 depthwise layers: (C, H = W of the input, k, stride).
B0_DW = [(32, 112, 3, 1), (96, 112, 3, 2), (144, 56, 3, 1), (144, 56, 5, 2), (240, 28, 5, 1),
         (240, 28, 3, 2), (480, 14, 3, 1), (480, 14, 5, 1), (672, 14, 5, 2), (1152, 7, 5, 1),
         (1152, 7, 3, 1)]
BATCH = 8


@pytest.fixture(autouse=True)
def _poison_and_triton(monkeypatch):
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set in this process: GPU tests need compiled kernels")
    import fastblocks as fb
    if "triton" not in fb.available_backends():
        pytest.skip("the triton backend is not available here")
    monkeypatch.setenv("FASTBLOCKS_POISON", "1")


def _specs() -> dict:
    """Every case the GPU tests hand to ``run_case``, by test id (also compiled ahead of the tests
    by ``python -m benchmarks.gpu.triton_warm --gpu-tests``)."""
    specs = {}
    for c, h, k, stride in B0_DW:
        for training in (True, False):
            specs[f"dw-b0-bf16-cl-c{c}-h{h}-k{k}-s{stride}-{'train' if training else 'eval'}"] = dict(
                op="dwconv_bn_act", shape=(BATCH, c, h, h), k=k, stride=stride,
                padding="tf_same" if stride == 2 else "same", training=training, act="silu", cl=True,
                dtype="bfloat16", conv_bias=False)
    for c, h, k, stride in (B0_DW[1], B0_DW[4], B0_DW[9]):
        for cl in (True, False):
            specs[f"dw-fp32-{'cl' if cl else 'nchw'}-c{c}-k{k}-s{stride}"] = dict(
                op="dwconv_bn_act", shape=(4, c, h + 1, h - 1), k=k, stride=stride, padding="same",
                training=True, act="hardswish", cl=cl, dtype="float32", conv_bias=True)
    for act in ACTS:
        specs[f"dw-fp16-nchw-k7-{act}"] = dict(op="dwconv_bn_act", shape=(BATCH, 40, 29, 31), k=7, stride=2,
                                               padding=2, training=True, act=act, cl=False, dtype="float16")
    for dtype, cl in (("bfloat16", True), ("float32", False)):
        for c, h in ((32, 112), (192, 28), (1280, 7)):
            for training in (True, False):
                specs[f"bn-{dtype}-c{c}-h{h}-{'train' if training else 'eval'}"] = dict(
                    op="bn_act", shape=(BATCH, c, h, h), training=training, act="silu", cl=cl, dtype=dtype)
        for c, r, h in ((96, 4, 112), (240, 10, 28), (672, 28, 14), (1152, 48, 7)):
            specs[f"se-{dtype}-c{c}-h{h}"] = dict(op="squeeze_excite", shape=(BATCH, c, h, h), r=r, act="silu",
                                                  gate="sigmoid", cl=cl, dtype=dtype)
    for c, h in ((64, 56), (512, 7)):
        for gate in ("sigmoid", "hard_sigmoid"):
            specs[f"eca-c{c}-{gate}"] = dict(op="eca", shape=(BATCH, c, h, h), k=5, gate=gate, cl=True,
                                             dtype="bfloat16")
            specs[f"gate-scale-c{c}-{gate}"] = dict(op="gate_scale", shape=(BATCH, c, h, h), gate=gate, cl=False,
                                                    dtype="float32")
    for act in ("silu", "hardswish", "relu6", "leaky_relu", "gelu", "gelu_tanh"):
        for dtype in ("bfloat16", "float32"):
            specs[f"act-{act}-{dtype}"] = dict(op="activation", shape=(BATCH, 96, 112, 112), act=act, dtype=dtype,
                                               cl=True)
    return specs


SPECS = _specs()


@pytest.mark.parametrize("name", list(SPECS))
def test_case(name):
    """B0 depthwise layers (bf16 channels_last train / eval; fp32 both layouts, odd sizes, conv
    bias; fp16 NCHW k7 every act), bn_act, SE, ECA, gate_scale and activations at B0 sizes."""
    run_case(SPECS[name], device="cuda")


@pytest.mark.parametrize("case", ["determinism", "layouts", "large_values", "unsupported", "opcheck", "compiled"])
def test_structure(case):
    run_case(dict(op=case), device="cuda")


def test_determinism_b0_layer():
    """Bitwise identical results on a realistic layer (no atomics, fixed reduction order)."""
    assert_deterministic_b0_layer("triton", BATCH)


@pytest.mark.parametrize("dw_regs", [False, True])
@pytest.mark.parametrize("c,h,k,stride,cl", [(144, 56, 3, 1, True), (240, 28, 5, 1, True), (96, 29, 5, 2, False)])
def test_dw_reduction_schemes(dw_regs, c, h, k, stride, cl, monkeypatch):
    """Both ways of reducing dW (across threads every tile / per-tap register accumulators) are
    right, whichever the autotuner would pick: the fused kernel is restricted to one of them."""
    import fastblocks.kernels.dwconv_bn_act as dw

    for tuner in (dw._fused_cl, dw._fused_nchw):
        monkeypatch.setattr(tuner, "configs", [cfg for cfg in tuner.configs if cfg.kwargs["DW_REGS"] == dw_regs])
        monkeypatch.setattr(tuner, "cache", {})
    spec = dict(op="dwconv_bn_act", shape=(BATCH, c, h, h), k=k, stride=stride, padding="same", training=True,
                act="silu", cl=cl, dtype="bfloat16", conv_bias=False)
    run_case(spec, device="cuda")


@pytest.mark.parametrize("capture", ["1", "0"])
def test_compiled_graph_capture(capture, monkeypatch):
    """torch.compile (Inductor, fullgraph) of a dwconv -> SE -> SiLU block on the triton backend,
    training forward + backward: same numbers as the uncompiled ops. With graph capture on, the
    generated code launches the fastblocks Triton kernels itself (no opaque fastblocks op); with
    FASTBLOCKS_GRAPH_CAPTURE=0 it calls the opaque ops."""
    import torch
    from torch._inductor.utils import run_and_get_code

    import fastblocks as fb

    monkeypatch.setenv("FASTBLOCKS_GRAPH_CAPTURE", capture)
    torch.manual_seed(0)
    c, dev, bf16 = 96, "cuda", torch.bfloat16
    x = torch.randn(BATCH, c, 28, 28, device=dev, dtype=bf16).contiguous(memory_format=torch.channels_last)
    params = [torch.randn(c, 1, 3, 3, device=dev, dtype=bf16) * 0.3, torch.rand(c, device=dev) + 0.5,
              torch.randn(c, device=dev), torch.randn(24, c, 1, 1, device=dev, dtype=bf16) * 0.1,
              torch.randn(24, device=dev, dtype=bf16), torch.randn(c, 24, 1, 1, device=dev, dtype=bf16) * 0.1,
              torch.randn(c, device=dev, dtype=bf16)]
    x.requires_grad_()
    for p in params:
        p.requires_grad_()

    def block(x, rm, rv):
        w, g, b, r, rb, e, eb = params
        y = fb.ops.dwconv_bn_act(x, w, g, b, rm, rv, training=True, act="silu", backend="triton")
        y = fb.ops.squeeze_excite(y, r, rb, e, eb, backend="triton")
        return fb.ops.silu(y, backend="triton")

    def step(fn):
        rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
        out = fn(x, rm, rv)
        grads = torch.autograd.grad(out.float().square().mean(), [x] + params)
        return [out, *grads, rm, rv]

    torch._dynamo.reset()
    compiled, code = run_and_get_code(step, torch.compile(block, fullgraph=True))
    expected = step(block)
    source = "\n".join(code)
    if capture == "1":
        assert "_fused_kernel" in source and "_scale_fwd_kernel" in source and "_act_bwd_kernel" in source
        assert "fastblocks.dwconv_bn_act" not in source
    else:
        assert "fastblocks.dwconv_bn_act" in source
    for got, want in zip(compiled, expected):
        err = (got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-12)
        assert err < 2e-2, f"relative error {err:.3g} for a tensor of shape {tuple(want.shape)}"
