"""The ``cuda`` backend (CUDA kernels in fastblocks._C, csrc/*.cu).

Two parts:

- Build and registration checks that run in CPU-only CI: the extension carries CUDA kernels for
  every kernel op when it was built with nvcc, the cuda backend declares itself unavailable without
  a GPU, and asking for it by name raises ``BackendUnavailableError`` with the reason.
- ``gpu``-marked numerical tests (skipped without CUDA): every op against the float64 reference
  (``tests.helpers.compare_with_reference``: output, every gradient, running stats) on realistic
  EfficientNet-B0 shapes and on the odd-size cases of ``test_triton_interpreter.CASES``; fp32 /
  fp16 / bf16 / fp64, NCHW and channels_last, every padding mode, act and stride; bitwise
  determinism; cuda vs triton. ``FASTBLOCKS_POISON=1`` fills every kernel output (and the
  backward's transient dz buffer) with NaN first, so an unwritten element fails.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import fastblocks as fb
from fastblocks import _dispatch
from fastblocks.backends import native
from tests.test_triton_interpreter import CASES, run_case
from tests.helpers import ACTS, assert_close_to_reference, assert_deterministic_b0_layer, randn

HAS_CUDA_KERNELS = native.has_kernels("cuda")


def _nvcc_found() -> bool:
    """Whether setup.py would build the CUDA kernels here (nvcc and a CUDA-enabled torch)."""
    from torch.utils import cpp_extension
    home = cpp_extension.CUDA_HOME
    nvcc = bool(home and os.path.exists(os.path.join(home, "bin", "nvcc"))) or shutil.which("nvcc") is not None
    return nvcc and torch.version.cuda is not None


def _needs_cuda_kernels():
    if native.available("cpu") is not None and not HAS_CUDA_KERNELS:
        pytest.skip(f"fastblocks._C not built: {native.available('cpu')}")
    if not HAS_CUDA_KERNELS:
        why = "nvcc was found now, so rebuild" if _nvcc_found() else "no nvcc on this machine"
        pytest.skip(f"fastblocks._C was built without CUDA kernels ({why})")


# ------------------------------------------------------------------------------- CPU-only CI part
def test_extension_registers_cuda_and_cpu_kernels_for_every_op():
    _needs_cuda_kernels()
    for name in native.KERNEL_OPS:
        qualified = f"fastblocks_kernels::{name}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CUDA"), f"{name}: no CUDA kernel"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CPU"), f"{name}: no CPU kernel"


def test_cuda_kernels_were_built_when_nvcc_is_present():
    if not _nvcc_found() or os.environ.get("FASTBLOCKS_BUILD_CUDA", "").strip() in ("0", "false", "off", "no"):
        pytest.skip("no nvcc / CPU-only torch here (or FASTBLOCKS_BUILD_CUDA=0): the CPU-only build is expected")
    if native.available("cpu") is not None:
        pytest.skip(f"fastblocks._C not built: {native.available('cpu')}")
    assert HAS_CUDA_KERNELS, "nvcc is present but fastblocks._C has no CUDA kernels (rebuild the extension)"


def test_kernel_namespace_is_shared_and_old_name_is_gone():
    if native.available("cpu") is not None and not HAS_CUDA_KERNELS:
        pytest.skip("fastblocks._C not built")
    assert hasattr(torch.ops.fastblocks_kernels, "dwconv_bn_act_forward")
    with pytest.raises(RuntimeError, match="does not exist"):
        torch._C._dispatch_has_kernel_for_dispatch_key("fastblocks_cpu::act_forward", "CPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_cuda_backend_unavailable_without_gpu():
    assert "cuda" not in fb.available_backends()
    reason = native.available("cuda")
    assert reason is not None and ("CUDA device" in reason or "without CUDA kernels" in reason or "not built" in reason)
    x = torch.randn(2, 4, 9, 9)
    w = torch.randn(4, 1, 3, 3)
    with pytest.raises(fb.BackendUnavailableError, match="cuda"):
        fb.ops.dwconv_bn_act(x, w, None, None, None, None, training=True, backend="cuda")
    with pytest.raises(fb.BackendUnavailableError, match="cuda"):
        fb.ops.silu(x, backend="cuda")
    # auto on CPU tensors never picks cuda
    y = fb.ops.silu(x, backend="auto")
    assert torch.allclose(y, torch.nn.functional.silu(x))


def test_cuda_supports_declines_other_devices_and_configs():
    if not HAS_CUDA_KERNELS:
        pytest.skip("no CUDA kernels registered: the cuda backend registers no implementations")
    supports = native.supports_for("cuda")
    x = torch.empty(2, 4, 9, 9, device="meta")
    assert "CUDA tensors" in supports["activation"](x, "silu")
    args = (x, torch.empty(4, 1, 3, 3, device="meta"), None, None, None, None, None, 1, "same", 0, 1, True, 1e-5,
            "silu")
    assert "CUDA tensors" in supports["dwconv_bn_act"](*args)
    assert _dispatch._REGISTRY["dwconv_bn_act"]["cuda"].supports is not \
        _dispatch._REGISTRY["dwconv_bn_act"]["cpu"].supports


def test_cuda_kernels_reachable_only_with_cuda_tensors():
    """The dispatcher routes CPU tensors to the CPU kernels even when CUDA kernels exist."""
    if native.available("cpu") is not None:
        pytest.skip("no CPU kernels")
    x = torch.randn(2, 3, 4, 5)
    y = torch.ops.fastblocks_kernels.act_forward(x, "relu")
    assert y.device.type == "cpu" and torch.equal(y, x.clamp_min(0))


# ------------------------------------------------------------------------------- GPU part
gpu = pytest.mark.gpu

# EfficientNet-B0 depthwise layers: (C, H = W of the input, k, stride).
B0_DW = [(32, 112, 3, 1), (96, 112, 3, 2), (144, 56, 3, 1), (144, 56, 5, 2), (240, 28, 5, 1),
         (240, 28, 3, 2), (480, 14, 3, 1), (480, 14, 5, 1), (672, 14, 5, 2), (1152, 7, 5, 1),
         (1152, 7, 3, 1)]
BATCH = 8
# Interpreter cases that are Triton-specific (autotune; the triton error text for k = 9).
TRITON_ONLY = {"no-autotune-under-interpreter", "dw-unsupported-k9"}


@pytest.fixture
def cuda_backend(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = native.available("cuda")
    if reason is not None:
        pytest.skip(f"cuda backend unavailable: {reason}")
    monkeypatch.setenv("FASTBLOCKS_POISON", "1")
    return "cuda"


@gpu
@pytest.mark.parametrize("case_id", [c for c in CASES if c not in TRITON_ONLY])
def test_small_odd_cases(cuda_backend, case_id):
    """Every op / dtype / layout / padding / act / stride case of the interpreter suite, on CUDA."""
    run_case(CASES[case_id], device="cuda", backend="cuda")


@gpu
@pytest.mark.parametrize("c,h,k,stride", B0_DW)
@pytest.mark.parametrize("training", [True, False])
def test_b0_dwconv_bf16_channels_last(cuda_backend, c, h, k, stride, training):
    spec = dict(op="dwconv_bn_act", shape=(BATCH, c, h, h), k=k, stride=stride,
                padding="tf_same" if stride == 2 else "same", training=training, act="silu", cl=True,
                dtype="bfloat16", conv_bias=False)
    run_case(spec, device="cuda", backend="cuda")


@gpu
@pytest.mark.parametrize("c,h,k,stride", [B0_DW[1], B0_DW[4], B0_DW[8], B0_DW[9]])
@pytest.mark.parametrize("cl", [True, False])
@pytest.mark.parametrize("padding", ["same", "tf_same", 1])
def test_b0_dwconv_fp32_odd_sizes(cuda_backend, c, h, k, stride, cl, padding):
    # H odd and W even around the B0 size: stride 2 with odd input, asymmetric tf_same pads.
    spec = dict(op="dwconv_bn_act", shape=(4, c, h + 1, h - 2), k=k, stride=stride, padding=padding,
                training=True, act="hardswish", cl=cl, dtype="float32", conv_bias=True)
    run_case(spec, device="cuda", backend="cuda")


@gpu
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype,cl", [("float16", False), ("float16", True), ("float32", True)])
def test_dwconv_acts_k7_stride2(cuda_backend, act, dtype, cl):
    spec = dict(op="dwconv_bn_act", shape=(BATCH, 40, 29, 31), k=7, stride=2, padding=2, training=True,
                act=act, cl=cl, dtype=dtype)
    run_case(spec, device="cuda", backend="cuda")


@gpu
# C = 19: scalar path for every dtype; 20: 16-byte vectors for fp32 (4) / fp64 (2), scalar for bf16;
# 40: 16-byte vectors for every dtype (8 bf16 lanes).
@pytest.mark.parametrize("c", [19, 20, 40])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_dwconv_channel_vector_widths(cuda_backend, c, dtype):
    for training in (True, False):
        spec = dict(op="dwconv_bn_act", shape=(3, c, 15, 17), k=5, stride=2, padding="tf_same", training=training,
                    act="silu", cl=True, dtype=dtype, conv_bias=True)
        run_case(spec, device="cuda", backend="cuda")


@gpu
@pytest.mark.parametrize("c,h", [(32, 112), (192, 28), (1280, 7), (19, 33)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype,cl", [("bfloat16", True), ("float32", False), ("float32", True), ("float16", False)])
def test_bn_act(cuda_backend, c, h, training, dtype, cl):
    spec = dict(op="bn_act", shape=(BATCH, c, h, h), training=training, act="silu", cl=cl, dtype=dtype)
    run_case(spec, device="cuda", backend="cuda")


@gpu
@pytest.mark.parametrize("c,r,h", [(96, 4, 112), (240, 10, 28), (672, 28, 14), (1152, 48, 7), (19, 5, 9)])
@pytest.mark.parametrize("dtype,cl", [("bfloat16", True), ("float32", False), ("float16", True)])
def test_squeeze_excite(cuda_backend, c, r, h, dtype, cl):
    spec = dict(op="squeeze_excite", shape=(BATCH, c, h, h), r=r, act="silu", gate="sigmoid", cl=cl, dtype=dtype)
    run_case(spec, device="cuda", backend="cuda")


@gpu
@pytest.mark.parametrize("c,h", [(64, 56), (512, 7), (21, 13)])
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
def test_eca_and_gate_scale(cuda_backend, c, h, gate):
    run_case(dict(op="eca", shape=(BATCH, c, h, h), k=5, gate=gate, cl=True, dtype="bfloat16"), device="cuda",
             backend="cuda")
    run_case(dict(op="gate_scale", shape=(BATCH, c, h, h), gate=gate, cl=False, dtype="float32"), device="cuda",
             backend="cuda")


@gpu
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float16"])
def test_activation_large(cuda_backend, act, dtype):
    run_case(dict(op="activation", shape=(BATCH, 96, 112, 112), act=act, dtype=dtype, cl=True), device="cuda",
             backend="cuda")


@gpu
def test_activation_odd_numel_and_offset_view(cuda_backend):
    # numel not a multiple of the vector width, and a view whose data pointer is not 16-byte aligned.
    base = randn(4 * 1000 + 3, seed=3).float().cuda()
    for x in (base, base[1:]):
        x = x.detach().requires_grad_()
        y = fb.ops.silu(x, backend="cuda")
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
        x64 = x.detach().double().requires_grad_()
        y64 = torch.nn.functional.silu(x64)
        (g64,) = torch.autograd.grad(y64, x64, torch.ones_like(y64))
        assert_close_to_reference("silu", y, y64, torch.float32)
        assert_close_to_reference("silu grad", g, g64, torch.float32, "grad")


@gpu
def test_determinism_b0_layer(cuda_backend):
    """Bitwise identical results on a realistic layer (no atomics, fixed reduction order)."""
    assert_deterministic_b0_layer("cuda", BATCH)


@gpu
def test_kernel_input_checks(cuda_backend):
    x = torch.randn(2, 4, 9, 9, device="cuda")
    k = torch.ops.fastblocks_kernels
    with pytest.raises(RuntimeError, match="weight must be on"):
        k.dwconv_bn_act_forward(x, torch.randn(4, 1, 3, 3), None, None, None, None, None, 1, "same", 0, True, 1e-5,
                                "silu")
    with pytest.raises(RuntimeError, match="kernel size must be 3, 5 or 7"):
        k.dwconv_bn_act_forward(x, torch.randn(4, 1, 9, 9, device="cuda"), None, None, None, None, None, 1, "same",
                                0, True, 1e-5, "silu")
    with pytest.raises(RuntimeError, match="weight must have x's dtype"):
        k.dwconv_bn_act_forward(x, torch.randn(4, 1, 3, 3, device="cuda", dtype=torch.float64), None, None, None,
                                None, None, 1, "same", 0, True, 1e-5, "silu")
    with pytest.raises(RuntimeError, match="act must be one of"):
        k.act_forward(x, "quick_gelu")
    with pytest.raises(RuntimeError, match="needs running_mean"):
        k.bn_act_forward(x, None, None, None, None, False, 1e-5, "relu")
    with pytest.raises(RuntimeError, match="scale must have shape"):
        k.channel_scale(x, torch.randn(3, 4, device="cuda"), None)
    with pytest.raises(fb.BackendUnavailableError, match="k=9"):
        fb.ops.dwconv_bn_act(x, torch.randn(4, 1, 9, 9, device="cuda"), None, None, None, None, training=True,
                             backend="cuda")


@gpu
@pytest.mark.parametrize("op", ["dwconv_bn_act", "bn_act", "squeeze_excite", "activation"])
@pytest.mark.parametrize("cl", [True, False])
def test_cuda_agrees_with_triton(cuda_backend, op, cl):
    """Both GPU backends against each other (float32): outputs and input gradients."""
    if "triton" not in fb.available_backends():
        pytest.skip("the triton backend is not available here")
    c, h = 40, 29
    x0 = randn(4, c, h, h + 2, seed=1).float().cuda()
    x0 = x0.contiguous(memory_format=torch.channels_last) if cl else x0
    params = dict(weight=randn(c, 1, 5, 5, seed=2, scale=0.5).float().cuda(),
                  gamma=(torch.rand(c, device="cuda") + 0.5), beta=torch.randn(c, device="cuda"),
                  rw=randn(8, c, seed=3, scale=0.5).float().cuda(), ew=randn(c, 8, seed=4, scale=0.5).float().cuda())

    def run(backend):
        x = x0.detach().clone().requires_grad_()
        rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
        if op == "dwconv_bn_act":
            y = fb.ops.dwconv_bn_act(x, params["weight"], params["gamma"], params["beta"], rm, rv, stride=2,
                                     padding="tf_same", training=True, act="silu", backend=backend)
        elif op == "bn_act":
            y = fb.ops.bn_act(x, params["gamma"], params["beta"], rm, rv, training=True, act="hardswish",
                              backend=backend)
        elif op == "squeeze_excite":
            y = fb.ops.squeeze_excite(x, params["rw"], None, params["ew"], None, backend=backend)
        else:
            y = fb.ops.silu(x, backend=backend)
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y) * 0.5 + y.detach())
        return y.detach(), dx, rm, rv

    for name, a, b in zip(["y", "dx", "running_mean", "running_var"], run("cuda"), run("triton")):
        err = float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))
        assert err <= 2e-5, f"{op} {name}: cuda vs triton relative difference {err:.2e}"
