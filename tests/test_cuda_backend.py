"""The ``cuda`` backend (CUDA kernels in fastblocks._C, csrc/*.cu).

Three parts:

- Build and registration checks that run in CPU-only CI: the extension carries CUDA kernels for
  every kernel op when it was built with nvcc, the cuda backend declares itself unavailable without
  a GPU, and asking for it by name raises ``BackendUnavailableError`` with the reason.
- ``gpu``-marked numerical tests (skipped without CUDA): every op against the float64 reference
  (``tests.helpers.compare_with_reference``: output, every gradient, running stats) on realistic
  EfficientNet-B0 shapes and on the odd-size cases of ``test_triton_interpreter.CASES``; fp32 /
  fp16 / bf16 / fp64, NCHW and channels_last, every padding mode, act and stride; bitwise
  determinism; cuda vs triton. ``FASTBLOCKS_POISON=1`` fills every kernel output (and the
  backward's transient dz buffer) with NaN first, so an unwritten element fails.
- The same kernels on the CPU emulator (backend ``cuda_emulated``, CPU tensors; skipped unless
  fastblocks._C_cuda_emulated is built): the odd-size cases, the vector and scalar channel paths,
  every act with k = 7 / stride 2, bitwise determinism across runs and across shuffled thread
  orders (shared-memory races), input checks, and the emulator's own fault detection. The per-op
  modules (tests/test_<op>.py) run on it too (tests.helpers.CPU_BACKENDS).
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
from tests.helpers import ACTS, assert_close_to_reference, assert_deterministic_b0_layer, rand_positive, randn

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


def test_cuda_kernels_were_built_when_asked_or_a_gpu_is_present():
    # setup.py builds them with FASTBLOCKS_BUILD_CUDA=1 (CI sets it), or unset where nvcc and a GPU are.
    asked = os.environ.get("FASTBLOCKS_BUILD_CUDA", "auto").strip().lower()
    if asked in ("0", "false", "off", "no"):
        pytest.skip("FASTBLOCKS_BUILD_CUDA=0: the CPU-only build is expected")
    if asked not in ("1", "true", "yes", "on") and not (_nvcc_found() and torch.cuda.is_available()):
        pytest.skip("without FASTBLOCKS_BUILD_CUDA=1 the CUDA kernels are built only where nvcc and a GPU are present")
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
    _check_silu_on_views("cuda", (base, base[1:]))


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


# ------------------------------------------------------------------------------- CPU emulator part
# The same kernels and host launchers, compiled by the host compiler and run on the CPU emulator
# (csrc/emulation/, docs/cuda_emulation.md): CPU tensors, backend "cuda_emulated". Shapes are
# small: the emulator runs every CUDA thread as a fiber.
EMULATED = "cuda_emulated"


@pytest.fixture
def emulated(monkeypatch):
    reason = native.available(EMULATED)
    if reason is not None:
        pytest.skip(f"cuda_emulated backend unavailable: {reason}")
    monkeypatch.setenv("FASTBLOCKS_POISON", "1")
    return EMULATED


def _emulated_ops():
    return native.kernel_ops(EMULATED)


def test_emulated_backend_listed_and_never_auto(emulated):
    assert EMULATED in fb.available_backends()
    for op in ("dwconv_bn_act", "activation", "squeeze_excite"):
        for training in (True, False):
            args = (torch.empty(2, 4, 9, 9), None, None, None, None, None, None, None, None, None, None, training)
            assert EMULATED not in _dispatch.auto_order(op, torch.device("cpu"), args)
    for name in native.KERNEL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastblocks_cuda_emulated::{name}", "CPU"), name


# compiled-block checks torch.compile of the ops' Python wrappers, the same for every CPU backend
# (tests/test_compile.py); the kernels inside stay opaque.
@pytest.mark.parametrize("case_id", [c for c in CASES if c not in TRITON_ONLY | {"compiled-block"}])
def test_emulated_small_odd_cases(emulated, case_id):
    """Every op / dtype / layout / padding / act / stride case of the interpreter suite."""
    run_case(CASES[case_id], device="cpu", backend=emulated)


# C = 19: scalar path for every dtype; 20: 16-byte vectors for fp32 (4) / fp64 (2), scalar for
# fp16 / bf16; 40: 16-byte vectors for every dtype (8 fp16 / bf16 lanes).
@pytest.mark.parametrize("c", [19, 20, 40])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_emulated_dwconv_channel_vector_widths(emulated, c, dtype):
    for training in (True, False):
        spec = dict(op="dwconv_bn_act", shape=(2, c, 9, 11), k=5, stride=2, padding="tf_same", training=training,
                    act="silu", cl=True, dtype=dtype, conv_bias=True)
        run_case(spec, device="cpu", backend=emulated)


@pytest.mark.parametrize("c", [19, 40])
@pytest.mark.parametrize("dtype,cl", [("bfloat16", True), ("float16", True), ("float64", True), ("float32", False)])
def test_emulated_bn_act_and_gating_vector_widths(emulated, c, dtype, cl):
    for training in (True, False):
        run_case(dict(op="bn_act", shape=(2, c, 7, 6), training=training, act="hardswish", cl=cl, dtype=dtype),
                 device="cpu", backend=emulated)
    run_case(dict(op="squeeze_excite", shape=(2, c, 5, 6), r=4, act="silu", gate="sigmoid", cl=cl, dtype=dtype),
             device="cpu", backend=emulated)
    run_case(dict(op="eca", shape=(2, c, 5, 3), k=3, gate="sigmoid", cl=cl, dtype=dtype), device="cpu",
             backend=emulated)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype,cl", [("float16", False), ("float32", True)])
def test_emulated_dwconv_acts_k7_stride2(emulated, act, dtype, cl):
    spec = dict(op="dwconv_bn_act", shape=(2, 16, 13, 15), k=7, stride=2, padding=2, training=True, act=act,
                cl=cl, dtype=dtype)
    run_case(spec, device="cpu", backend=emulated)


def test_emulated_activation_odd_numel_and_offset_view(emulated):
    # numel not a multiple of the vector width, and a view whose data pointer is not 16-byte aligned.
    base = randn(4 * 100 + 3, seed=3).float()
    _check_silu_on_views(emulated, (base, base[1:], base[3:].view(4, 10, 10)))


def _check_silu_on_views(backend, views):
    """SiLU forward and gradient of each float32 view against float64 PyTorch."""
    for x in views:
        x = x.detach().requires_grad_()
        y = fb.ops.silu(x, backend=backend)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
        x64 = x.detach().double().requires_grad_()
        y64 = torch.nn.functional.silu(x64)
        (g64,) = torch.autograd.grad(y64, x64, torch.ones_like(y64))
        assert_close_to_reference("silu", y, y64, torch.float32)
        assert_close_to_reference("silu grad", g, g64, torch.float32, "grad")


def _training_step(backend, dtype, cl):
    """Outputs, every gradient and the running stats of a dwconv -> SE -> hard-swish step."""
    c = 24  # 16-byte vectors for every dtype on channels-last
    x = randn(2, c, 11, 10, seed=21).to(dtype)
    x = (x.contiguous(memory_format=torch.channels_last) if cl else x).requires_grad_()
    w = randn(c, 1, 5, 5, seed=22, scale=0.5).to(dtype).requires_grad_()
    g = rand_positive(c, seed=23).float().requires_grad_()
    b = randn(c, seed=24).float().requires_grad_()
    rw, ew = randn(6, c, seed=25, scale=0.5).float(), randn(c, 6, seed=26, scale=0.5).float()
    rw, ew = rw.to(dtype).requires_grad_(), ew.to(dtype).requires_grad_()
    rm, rv = torch.zeros(c), torch.ones(c)
    y = fb.ops.dwconv_bn_act(x, w, g, b, rm, rv, stride=2, padding="tf_same", training=True, backend=backend)
    y = fb.ops.bn_act(y, g, b, None, None, training=True, act="relu6", backend=backend)
    y = fb.ops.squeeze_excite(y, rw, None, ew, None, backend=backend)
    y = fb.ops.hard_swish(y, backend=backend)
    grads = torch.autograd.grad(y, (x, w, g, b, rw, ew), randn(*y.shape, seed=27).to(dtype))
    return (y, *grads, rm, rv)


@pytest.mark.parametrize("dtype,cl", [(torch.bfloat16, True), (torch.float32, False)])
def test_emulated_bitwise_deterministic_across_runs_and_thread_orders(emulated, monkeypatch, dtype, cl):
    """Two runs, and runs with the threads of every barrier phase (and the blocks) in shuffled
    orders, give bitwise identical results: no atomics, a fixed reduction order, and no
    shared-memory race (a race makes the result depend on the thread order)."""
    monkeypatch.delenv("FASTBLOCKS_EMU_SHUFFLE", raising=False)
    first = _training_step(emulated, dtype, cl)
    runs = {"second run": _training_step(emulated, dtype, cl)}
    for seed in ("1", "2"):
        monkeypatch.setenv("FASTBLOCKS_EMU_SHUFFLE", seed)
        runs[f"shuffle seed {seed}"] = _training_step(emulated, dtype, cl)
    names = ["y", "dx", "dweight", "dgamma", "dbeta", "dreduce", "dexpand", "running_mean", "running_var"]
    for label, run in runs.items():
        for name, a, b in zip(names, first, run):
            assert torch.equal(a, b), f"{label}: {name} differs"


def test_emulated_kernel_input_checks(emulated):
    x = torch.randn(2, 4, 9, 9)
    k = _emulated_ops()
    with pytest.raises(RuntimeError, match="kernel size must be 3, 5 or 7"):
        k.dwconv_bn_act_forward(x, torch.randn(4, 1, 9, 9), None, None, None, None, None, 1, "same", 0, True, 1e-5,
                                "silu")
    with pytest.raises(RuntimeError, match="act must be one of"):
        k.act_forward(x, "quick_gelu")
    with pytest.raises(RuntimeError, match="needs running_mean"):
        k.bn_act_forward(x, None, None, None, None, False, 1e-5, "relu")
    with pytest.raises(RuntimeError, match="scale must have shape"):
        k.channel_scale(x, torch.randn(3, 4), None)
    with pytest.raises(fb.BackendUnavailableError, match="k=9"):
        fb.ops.dwconv_bn_act(x, torch.randn(4, 1, 9, 9), None, None, None, None, training=True, backend=emulated)
    with pytest.raises(RuntimeError, match="weight must have x's dtype"):
        k.dwconv_bn_act_forward(x, torch.randn(4, 1, 3, 3, dtype=torch.float64), None, None, None, None, None, 1,
                                "same", 0, True, 1e-5, "silu")
    assert "runs on CPU tensors" in native.supports_for(emulated)["activation"](torch.empty(3, device="meta"))


# The emulator itself: a test kernel (csrc/emulation/selftest.cpp) with one deliberate fault each.
@pytest.mark.parametrize("fault,message", [
    ("overrun", "dynamic shared memory overrun .* past the end of the launch's 256 bytes"),
    ("misaligned", "misaligned vector access in block \\(\\d, 0, 0\\), thread \\(0, 0, 0\\)"),
    ("divergent_barrier", "wait at different __syncthreads\\(\\) calls"),
    ("early_return", "returned while others wait at __syncthreads\\(\\) .*32 of 64 threads waiting"),
])
def test_emulator_reports_kernel_faults(emulated, fault, message):
    with pytest.raises(RuntimeError, match=message):
        _emulated_ops().emulator_selftest(fault)
    # the emulator recovers: the next launch runs normally
    assert _emulated_ops().emulator_selftest("none").tolist() == [sum(range(64)), sum(range(64, 128))]


def test_emulator_barrier_and_shared_memory_fill(emulated, monkeypatch):
    """The correct kernel's barrier tree sums exactly under any thread order; the racy one reads
    its neighbour's unwritten slot as NaN (the fill of fresh shared memory) in thread order, and
    reads values that depend on the order when it is shuffled."""
    monkeypatch.delenv("FASTBLOCKS_EMU_SHUFFLE", raising=False)
    k = _emulated_ops()
    sums = [sum(range(64)), sum(range(64, 128))]
    race = k.emulator_selftest("race").view(2, 64)
    # thread t reads slot t + 1 before thread t + 1 writes it; the last thread reads slot 0
    assert race[:, :63].isnan().all() and race[:, 63].tolist() == [0.0, 64.0]
    for seed in ("1", "7"):
        monkeypatch.setenv("FASTBLOCKS_EMU_SHUFFLE", seed)
        assert k.emulator_selftest("none").tolist() == sums
        race = k.emulator_selftest("race")
        assert race.isnan().any() and not race.isnan().all()
    monkeypatch.setenv("FASTBLOCKS_EMU_SHUFFLE", "x")
    with pytest.raises(RuntimeError, match="FASTBLOCKS_EMU_SHUFFLE must be a non-negative integer"):
        k.emulator_selftest("none")


def test_emulator_race_check_reports_two_writers(emulated, monkeypatch):
    """Every thread adding into one shared slot between two barriers: sequential fibers get the
    sum right (a GPU loses updates); FASTBLOCKS_EMU_RACECHECK=1 reports the two writers."""
    k = _emulated_ops()
    monkeypatch.delenv("FASTBLOCKS_EMU_SHUFFLE", raising=False)
    monkeypatch.delenv("FASTBLOCKS_EMU_RACECHECK", raising=False)
    assert k.emulator_selftest("write_race").tolist() == [sum(range(64)), sum(range(64, 128))]
    monkeypatch.setenv("FASTBLOCKS_EMU_RACECHECK", "1")
    with pytest.raises(RuntimeError, match="shared memory race: threads 1 and 2 .* both write byte"):
        k.emulator_selftest("write_race")
    assert k.emulator_selftest("none").tolist() == [sum(range(64)), sum(range(64, 128))]
