"""The ``cpu`` backend (fused C++ kernels in fastblocks._C) against the float64 reference.

Skipped as a whole when the extension is not built (``python setup.py build_ext --inplace``).
"""

import functools
import itertools
import os
import random
import subprocess
import sys

import pytest
import torch

pytest.importorskip("fastblocks._C", reason="fastblocks._C extension not built (python setup.py build_ext --inplace)")

import fastblocks as fb  # noqa: E402
from fastblocks import _dispatch  # noqa: E402
from fastblocks._validate import conv_out_size, conv_pads  # noqa: E402
from fastblocks.backends import native  # noqa: E402
from tests.helpers import compare_with_reference, dwconv_call as dw_call, layout, rand_positive, randn  # noqa: E402
from tests.helpers import ACTS, dwconv_inputs  # noqa: E402

# channels_last is the cpu backend's fast path, so it is these tests' default layout.
dw_inputs = functools.partial(dwconv_inputs, fmt="channels_last")

if native.available("cpu") is not None:
    pytest.skip(f"cpu backend unavailable: {native.available('cpu')}", allow_module_level=True)

GATES = ["sigmoid", "hard_sigmoid"]
LAYOUTS = ["channels_last", "nchw"]
# dwconv_bn_act runs an NCHW input either plane by plane or through the channels-last kernels
# (chosen by output row width): "nchw/<path>" forces one with FASTBLOCKS_CPU_DW_NCHW.
DW_LAYOUTS = ["channels_last", "nchw/planes", "nchw/channels_last"]


@pytest.fixture
def dw_layout(monkeypatch):
    """Returns fmt -> the layout name for tests.helpers.layout, forcing the NCHW path it names."""
    def choose(fmt):
        fmt, _, path = fmt.partition("/")
        if path:
            monkeypatch.setenv("FASTBLOCKS_CPU_DW_NCHW", path)
        return fmt
    return choose


# ------------------------------------------------------------------------------- registration
def test_kernel_ops_registered_for_cpu_dispatch_key():
    # (the CUDA registrations of the same schemas are tested in test_cuda_backend.py)
    for name in native.KERNEL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastblocks_kernels::{name}", "CPU"), name
    assert "cpu" in fb.available_backends()


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_auto_follows_the_measured_order_and_falls_back_for_unsupported_kernel_size(memory_format):
    x = torch.randn(2, 4, 9, 9).contiguous(memory_format=memory_format)
    args = (x, torch.randn(4, 1, 3, 3), None, None, None, None, None, 1, "same", 0, 1, True, 1e-5, "silu")
    order = _dispatch.auto_order("dwconv_bn_act", x.device, args)
    assert set(order) >= {"cpu", "eager"}
    assert _dispatch.impl_for("dwconv_bn_act", "auto", x.device, args) is _dispatch._REGISTRY["dwconv_bn_act"][order[0]]
    w9 = torch.randn(4, 1, 9, 9)
    args9 = (x, w9) + args[2:]
    assert "k=9" in native._dwconv_supports("cpu", *args9)
    assert _dispatch.impl_for("dwconv_bn_act", "auto", x.device, args9) is _dispatch._REGISTRY["dwconv_bn_act"]["eager"]
    with pytest.raises(fb.BackendUnavailableError, match="k=9"):
        fb.ops.dwconv_bn_act(x, w9, None, None, None, None, training=True, backend="cpu")
    y = fb.ops.dwconv_bn_act(x, w9, None, None, None, None, training=True, backend="auto")
    assert y.shape == x.shape


def test_kernel_input_checks_have_clear_messages():
    x = torch.randn(2, 4, 9, 9)
    with pytest.raises(RuntimeError, match="kernel size must be 3, 5 or 7"):
        torch.ops.fastblocks_kernels.dwconv_bn_act_forward(x, torch.randn(4, 1, 9, 9), None, None, None, None, None,
                                                       1, "same", 0, True, 1e-5, "silu")
    with pytest.raises(RuntimeError, match="act must be one of"):
        torch.ops.fastblocks_kernels.act_forward(x, "quick_gelu")
    with pytest.raises(RuntimeError, match="needs running_mean"):
        torch.ops.fastblocks_kernels.bn_act_forward(x, None, None, None, None, False, 1e-5, "relu")


# ------------------------------------------------------------------------------- dwconv_bn_act
DW_GRID = list(itertools.product([3, 5, 7], [1, 2], ["same", "tf_same", 0, 2], [True, False], DW_LAYOUTS))


@pytest.mark.parametrize("k,stride,padding,training,fmt", DW_GRID)
def test_dwconv_matches_reference(k, stride, padding, training, fmt, dw_layout):
    act = ACTS[(k + stride + len(str(padding)) + training) % len(ACTS)]
    inputs = dw_inputs(2, 5, 9, 7, k, seed=k * 10 + stride, fmt=dw_layout(fmt), stride=stride, padding=padding,
                       training=training, act=act, momentum=0.3)
    compare_with_reference(dw_call, inputs, torch.float32, "cpu")


# C = 40 / 19: full 32-channel register blocks, single vectors and a scalar tail; W wide enough for
# the interior 4-pixel blocks; batch 1; odd sizes with stride 2.
@pytest.mark.parametrize("n,c,h,w,k,stride,padding", [
    (1, 3, 7, 9, 3, 2, "tf_same"), (1, 1, 5, 5, 5, 1, "same"), (4, 17, 11, 13, 7, 2, "tf_same"),
    (2, 40, 9, 23, 3, 1, "same"), (1, 19, 12, 17, 5, 2, 1), (2, 40, 6, 21, 7, 1, "tf_same"),
    # NCHW planes: rows of several whole vectors plus a tail (the 4-vector blocks of AVX-512 need
    # 64 outputs), stride-2 rows long enough for the vector deinterleave, odd and even left pads.
    (1, 3, 5, 77, 3, 1, "same"), (2, 2, 7, 133, 5, 2, 1), (1, 2, 6, 70, 7, 2, "tf_same"), (1, 2, 4, 66, 3, 2, 2),
])
@pytest.mark.parametrize("fmt", DW_LAYOUTS)
def test_dwconv_odd_shapes_and_channel_tails(n, c, h, w, k, stride, padding, fmt, dw_layout):
    for training in (True, False):
        inputs = dw_inputs(n, c, h, w, k, seed=n + c, fmt=dw_layout(fmt), stride=stride, padding=padding, training=training)
        compare_with_reference(dw_call, inputs, torch.float32, "cpu")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("affine,running,conv_bias", [(True, True, False), (False, True, True),
                                                      (True, False, True), (False, False, False)])
@pytest.mark.parametrize("fmt", DW_LAYOUTS)
def test_dwconv_acts_affine_running_stats(act, affine, running, conv_bias, fmt, dw_layout):
    fmt = dw_layout(fmt)
    for training in (True, False) if running else (True,):
        inputs = dw_inputs(3, 12, 8, 10, 3, seed=7, fmt=fmt, affine=affine, running=running, conv_bias=conv_bias,
                           training=training, act=act, eps=1e-3)
        compare_with_reference(dw_call, inputs, torch.float32, "cpu")


@pytest.mark.parametrize("needs", [("x",), ("weight",), ("bn_weight",), ("conv_bias",), ("x", "bn_bias")])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fmt", DW_LAYOUTS)
def test_dwconv_partial_grad_masks(needs, training, fmt, dw_layout):
    inputs = dw_inputs(2, 9, 8, 8, 5, seed=3, fmt=dw_layout(fmt), conv_bias=True, training=training, stride=2)
    compare_with_reference(dw_call, inputs, torch.float32, "cpu", grad_names=list(needs))


def _random_dw_configs(count, seed):
    """Geometry the hand-picked grids miss: H or W of 1, pads wider than the kernel, W up to 140."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        k, stride = rng.choice([3, 5, 7]), rng.choice([1, 2])
        h, w = rng.randint(1, 30), rng.choice([rng.randint(1, 30), rng.randint(30, 140)])
        padding = rng.choice(["same", "tf_same", 0, 1, 3, 5])
        n, c, training = rng.choice([1, 2, 3]), rng.choice([1, 3, 17]), rng.random() < 0.5
        pads = conv_pads("explicit" if isinstance(padding, int) else padding,
                         padding if isinstance(padding, int) else 0, k, stride, 1, h, w)
        ho, wo = conv_out_size(h, pads[0], pads[1], k, stride, 1), conv_out_size(w, pads[2], pads[3], k, stride, 1)
        if ho >= 1 and wo >= 1 and (not training or n * ho * wo > 1):
            configs.append((n, c, h, w, k, stride, padding, training, rng.choice(ACTS), rng.random() < 0.3))
    return configs


@pytest.mark.parametrize("fmt", DW_LAYOUTS)
def test_dwconv_random_geometry(fmt, dw_layout):
    fmt = dw_layout(fmt)
    for i, (n, c, h, w, k, stride, padding, training, act, conv_bias) in enumerate(_random_dw_configs(24, seed=5)):
        inputs = dw_inputs(n, c, h, w, k, seed=i, fmt=fmt, stride=stride, padding=padding, training=training,
                           act=act, conv_bias=conv_bias)
        compare_with_reference(dw_call, inputs, torch.float32, "cpu")


# ------------------------------------------------------------------------------- bn_act
def bn_inputs(n, c, h, w, seed, fmt, affine=True, **config):
    inputs = dict(x=layout(randn(n, c, h, w, seed=seed, scale=2.0, offset=0.5), fmt),
                  bn_weight=rand_positive(c, seed=seed + 1) if affine else None,
                  bn_bias=randn(c, seed=seed + 2) if affine else None,
                  running_mean=randn(c, seed=seed + 3, scale=0.1), running_var=rand_positive(c, seed=seed + 4))
    inputs.update(config)
    return inputs


def bn_call(**kw):
    pos = [kw.pop(k) for k in ("x", "bn_weight", "bn_bias", "running_mean", "running_var")]
    return fb.ops.bn_act(*pos, **kw)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fmt", LAYOUTS)
def test_bn_act_matches_reference(act, training, fmt):
    for n, c, h, w, affine in [(2, 5, 9, 7, True), (1, 19, 6, 5, False), (3, 40, 4, 3, True)]:
        inputs = bn_inputs(n, c, h, w, seed=c, fmt=fmt, affine=affine, training=training, act=act, momentum=0.2)
        compare_with_reference(bn_call, inputs, torch.float32, "cpu")


def test_bn_act_large_plane_statistics():
    # Planes longer than the kernels' float accumulation chunks (NCHW) and rows spanning blocks.
    for fmt in LAYOUTS:
        inputs = bn_inputs(2, 3, 50, 47, seed=5, fmt=fmt, training=True, act="silu")
        compare_with_reference(bn_call, inputs, torch.float32, "cpu")


# ------------------------------------------------------------------------------- SE / ECA / gate_scale
def se_call(**kw):
    x = kw.pop("x")
    return fb.ops.squeeze_excite(x, kw.pop("reduce_weight"), kw.pop("reduce_bias"), kw.pop("expand_weight"),
                                 kw.pop("expand_bias"), **kw)


@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("bias,conv_shape", [(True, False), (False, True)])
def test_squeeze_excite_matches_reference(act, gate, fmt, bias, conv_shape):
    n, c, r, h, w = 2, 19, 5, 9, 7
    rw, ew = randn(r, c, seed=2, scale=0.5), randn(c, r, seed=3, scale=0.5)
    if conv_shape:
        rw, ew = rw[:, :, None, None], ew[:, :, None, None]
    inputs = dict(x=layout(randn(n, c, h, w, seed=1), fmt), reduce_weight=rw,
                  reduce_bias=randn(r, seed=4) if bias else None, expand_weight=ew,
                  expand_bias=randn(c, seed=5) if bias else None, act=act, gate=gate)
    compare_with_reference(se_call, inputs, torch.float32, "cpu")


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("fmt", LAYOUTS)
def test_eca_matches_reference(k, gate, fmt):
    inputs = dict(x=layout(randn(3, 40, 7, 9, seed=k), fmt), conv_weight=randn(1, 1, k, seed=k + 1), gate=gate)
    compare_with_reference(lambda x, conv_weight, gate: fb.ops.eca(x, conv_weight, gate=gate), inputs,
                           torch.float32, "cpu")


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 5, 9, 7), (1, 40, 3, 70)])
def test_gate_scale_matches_reference(gate, fmt, shape):
    n, c = shape[:2]
    inputs = dict(x=layout(randn(*shape, seed=1), fmt), logits=randn(n, c, seed=2, scale=2.0), gate=gate)
    compare_with_reference(lambda x, logits, gate: fb.ops.gate_scale(x, logits, gate=gate), inputs,
                           torch.float32, "cpu")
    # dx not requested: only the logits gradient
    compare_with_reference(lambda x, logits, gate: fb.ops.gate_scale(x, logits, gate=gate), inputs,
                           torch.float32, "cpu", grad_names=["logits"])


# ------------------------------------------------------------------------------- activation
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape,fmt", [((2, 5, 9, 7), "channels_last"), ((2, 5, 9, 7), "nchw"), ((3, 1001), None),
                                       ((37,), None)])
def test_activation_matches_reference(act, shape, fmt):
    x = randn(*shape, seed=3, scale=4.0)
    if fmt is not None:
        x = layout(x, fmt)
    compare_with_reference(lambda x, act: fb.ops.activation(x, act), dict(x=x, act=act), torch.float32, "cpu")


def test_activation_on_non_dense_input():
    x = torch.randn(6, 10)[:, ::2]
    y = fb.ops.silu(x, backend="cpu")
    torch.testing.assert_close(y, torch.nn.functional.silu(x), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------- layouts, dtypes
@pytest.mark.parametrize("fmt", LAYOUTS)
def test_memory_format_preserved(fmt):
    x = layout(torch.randn(2, 8, 9, 9), fmt).requires_grad_()
    w, g, b = torch.randn(8, 1, 3, 3), torch.rand(8) + 0.5, torch.randn(8)
    cl = fmt == "channels_last"
    outs = [fb.ops.dwconv_bn_act(x, w, g, b, None, None, stride=2, training=True, backend="cpu"),
            fb.ops.bn_act(x, g, b, None, None, training=True, backend="cpu"),
            fb.ops.gate_scale(x, torch.randn(2, 8), backend="cpu"),
            fb.ops.eca(x, torch.randn(1, 1, 3), backend="cpu"),
            fb.ops.silu(x, backend="cpu")]
    for y in outs:
        assert y.is_contiguous(memory_format=torch.channels_last) == cl and y.is_contiguous() != cl
        x.grad = None
        y.sum().backward()
        assert x.grad.is_contiguous(memory_format=torch.channels_last) == cl


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", DW_LAYOUTS)
def test_low_precision(dtype, fmt, dw_layout):
    fmt = dw_layout(fmt)
    for training in (True, False):
        inputs = dw_inputs(2, 19, 10, 13, 5, seed=3, fmt=fmt, stride=2, training=training)
        compare_with_reference(dw_call, inputs, dtype, "cpu", param_dtype=torch.float32,
                               grad_names=["x", "weight", "bn_weight", "bn_bias"], x_dtype_names=("x", "weight"))
        compare_with_reference(bn_call, bn_inputs(2, 19, 6, 5, seed=4, fmt=fmt, training=training), dtype, "cpu",
                               param_dtype=torch.float32)
    inputs = dict(x=layout(randn(2, 19, 6, 5, seed=1), fmt), logits=randn(2, 19, seed=2), gate="sigmoid")
    compare_with_reference(lambda x, logits, gate: fb.ops.gate_scale(x, logits, gate=gate), inputs, dtype, "cpu",
                           param_dtype=torch.float32)
    compare_with_reference(lambda x: fb.ops.silu(x), dict(x=randn(3, 70, seed=5)), dtype, "cpu")


@pytest.mark.parametrize("fmt", DW_LAYOUTS)
def test_training_statistics_are_deterministic_across_thread_counts(fmt, dw_layout):
    x = layout(torch.randn(4, 40, 33, 29), dw_layout(fmt))
    w, g, b = torch.randn(40, 1, 5, 5), torch.rand(40) + 0.5, torch.randn(40)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(torch.ops.fastblocks_kernels.dwconv_bn_act_forward(x, w, g, b, None, None, None, 1, "same", 0,
                                                                       True, 1e-5, "silu"))
    finally:
        torch.set_num_threads(before)
    for y, mean, var in outs[1:]:
        assert torch.equal(y, outs[0][0]) and torch.equal(mean, outs[0][1]) and torch.equal(var, outs[0][2])


# ------------------------------------------------------------------------------- float64 gradcheck
@pytest.mark.parametrize("padding,stride,training,affine,k", [
    ("same", 1, True, True, 3), ("same", 2, False, True, 5), ("tf_same", 2, True, False, 3),
    ("tf_same", 1, False, False, 7), (1, 2, True, True, 3), (0, 1, False, True, 3),
])
@pytest.mark.parametrize("fmt", DW_LAYOUTS)
def test_gradcheck_dwconv(padding, stride, training, affine, k, fmt, dw_layout):
    c = 3
    x = layout(randn(2, c, 6, 7, seed=1), dw_layout(fmt)).requires_grad_()
    w, cb = randn(c, 1, k, k, seed=2).requires_grad_(), randn(c, seed=5).requires_grad_()
    gamma = rand_positive(c, seed=3).requires_grad_() if affine else None
    beta = randn(c, seed=4).requires_grad_() if affine else None
    rm, rv = randn(c, seed=6, scale=0.1), rand_positive(c, seed=7)

    def f(x, w, cb, *affine_params):
        g, b = affine_params if affine_params else (None, None)
        return fb.ops.dwconv_bn_act(x, w, g, b, rm.clone(), rv.clone(), conv_bias=cb, stride=stride,
                                    padding=padding, training=training, act="silu", backend="cpu")

    assert torch.autograd.gradcheck(f, (x, w, cb) + ((gamma, beta) if affine else ()))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fmt", LAYOUTS)
def test_gradcheck_bn_act(training, fmt):
    x = layout(randn(2, 3, 4, 5, seed=1), fmt).requires_grad_()
    g, b = rand_positive(3, seed=2).requires_grad_(), randn(3, seed=3).requires_grad_()
    rm, rv = randn(3, seed=4, scale=0.1), rand_positive(3, seed=5)
    f = lambda x, g, b: fb.ops.bn_act(x, g, b, rm.clone(), rv.clone(), training=training, act="hardswish",  # noqa
                                      backend="cpu")
    assert torch.autograd.gradcheck(f, (x, g, b))


@pytest.mark.parametrize("fmt", LAYOUTS)
def test_gradcheck_gating_ops(fmt):
    x = layout(randn(2, 6, 3, 4, seed=1), fmt).requires_grad_()
    rw, rb = randn(2, 6, seed=2).requires_grad_(), randn(2, seed=3).requires_grad_()
    ew, eb = randn(6, 2, seed=4).requires_grad_(), randn(6, seed=5).requires_grad_()
    se = lambda *a: fb.ops.squeeze_excite(*a, act="silu", backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(se, (x, rw, rb, ew, eb))
    cw = randn(1, 1, 3, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: fb.ops.eca(x, w, backend="cpu"), (x, cw))
    logits = randn(2, 6, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, lg: fb.ops.gate_scale(x, lg, gate="sigmoid", backend="cpu"),
                                    (x, logits))


@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_activation(act):
    x = randn(3, 7, seed=8, scale=3.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fb.ops.activation(x, act, backend="cpu"), (x,))


def test_opcheck_with_cpu_backend():
    x = torch.randn(2, 4, 7, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    w, g, b = torch.randn(4, 1, 3, 3).requires_grad_(), torch.rand(4) + 0.5, torch.randn(4)
    torch.library.opcheck(torch.ops.fastblocks.dwconv_bn_act.default,
                          (x, w, g, b, None, None, None, 2, "tf_same", 0, 1, True, 1e-5, "silu", "cpu"))
    torch.library.opcheck(torch.ops.fastblocks.bn_act.default, (x, g, b, None, None, True, 1e-5, "relu", "cpu"))
    torch.library.opcheck(torch.ops.fastblocks.gate_scale.default, (x, torch.randn(2, 4), "sigmoid", "cpu"))


def test_bfloat16_rounding_matches_torch_bit_exactly():
    # Kernels compute in float32 and round to bfloat16 (vectorised round-to-nearest-even); NaN stays
    # NaN (c10's canonical 0x7FC0 pattern), inf stays inf.
    x = (torch.randn(2, 3, 5, 67) * 100).bfloat16()
    x.view(-1)[::13] = float("nan")
    x.view(-1)[1::17] = float("inf")
    g = torch.rand(2, 3) + 0.5
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        y = torch.ops.fastblocks_kernels.channel_scale(t, g, None)
        expected = (t.float() * g[:, :, None, None]).bfloat16()
        nan = expected.isnan()
        assert torch.equal(y.isnan(), nan)
        assert torch.equal(y[~nan].view(torch.int16), expected[~nan].view(torch.int16))


# ------------------------------------------------------------------------------- every ISA copy
@pytest.mark.parametrize("cap", ["default", "avx2"])
def test_lower_isa_copies_match_reference(cap):
    # The kernels are compiled once per ISA (csrc/fb_cpu_isa_copy.h) and the best copy runs;
    # FASTBLOCKS_CPU_ISA (read once per process) caps it, so the lower copies run in a subprocess.
    if cap == "default" and not native.has_baseline_copy():
        pytest.skip("built without the baseline copy (FASTBLOCKS_CPU_BASELINE=1 builds it)")
    env = dict(os.environ, FASTBLOCKS_CPU_ISA=cap)
    select = ("dwconv_odd_shapes or dwconv_matches_reference or dwconv_random_geometry or low_precision or "
              "gradcheck_dwconv or bn_act_matches")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", __file__,
                           "-k", select], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
