"""The CPU eval kernels on folded weights (``fastblocks_kernels::eval_epilogue_``, ``dw_eval``,
``direct_conv_eval``, ``pointwise_eval``, ``mbconv_eval``) against float64 PyTorch compositions, and the whole-block eval path of patched
timm MBConv models (channels_last float32 input): accuracy, cache invalidation, fallbacks."""

import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastblocks as fb
from fastblocks._act import ACTIVATIONS, GATES
from fastblocks.inference.blocks import BLOCK_ATTR
from fastblocks.inference.conv_fusion import eval_kernels_available, weight_panels
from tests.helpers import rel_err
from tests.test_inference_fold import assert_accurate, eval_out, input_grads, randomize_bn

pytestmark = pytest.mark.skipif(not eval_kernels_available(), reason="fastblocks._C eval kernels are not built")
K = torch.ops.fastblocks_kernels if eval_kernels_available() else None
ACTS = sorted(ACTIVATIONS)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_epilogue_matches_act_of_y_plus_bias_plus_residual(fmt, act, with_residual):
    g = _gen(0)
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    y = torch.randn(2, 37, 5, 7, generator=g).contiguous(memory_format=mf)  # 37: a vector tail in both layouts
    bias = torch.randn(37, generator=g)
    res = torch.randn(2, 37, 5, 7, generator=g).contiguous(memory_format=mf) if with_residual else None
    u = y.double() + bias.double().view(1, -1, 1, 1) + (res.double() if with_residual else 0)
    ref = ACTIVATIONS[act][0](u)
    out = K.eval_epilogue_(y, bias, res, act)
    assert out.data_ptr() == y.data_ptr()  # in place
    assert (out.double() - ref).abs().max().item() <= 2e-6 * max(1.0, ref.abs().max().item())


def test_epilogue_rejects_bad_inputs():
    y = torch.randn(1, 4, 3, 3)
    with pytest.raises(RuntimeError, match="y must be a float32"):
        K.eval_epilogue_(y.double(), torch.zeros(4), None, "relu")
    with pytest.raises(RuntimeError, match="bias must have 4 elements"):
        K.eval_epilogue_(y, torch.zeros(5), None, "relu")
    with pytest.raises(RuntimeError, match="residual must have y's shape"):
        K.eval_epilogue_(y, torch.zeros(4), torch.randn(1, 4, 3, 2), "relu")
    with pytest.raises(RuntimeError, match="contiguous or channels_last"):
        K.eval_epilogue_(torch.randn(1, 4, 6, 3)[:, :, ::2], torch.zeros(4), None, "relu")


# (C, H, W, k, stride, padding (top, bottom, left, right)): C covers the 4-vector chunks, single
# vectors and a partial last vector; W covers rows narrower than the interior tile and the kernel,
# and rows that take several sliding tiles.
DW_CASES = [
    (8, 6, 9, 3, 1, (1, 1, 1, 1)),
    (37, 7, 7, 5, 2, (2, 2, 2, 2)),
    (70, 5, 11, 3, 2, (0, 1, 0, 1)),  # TF "same" for an even input
    (136, 4, 4, 7, 1, (3, 3, 3, 3)),
    (16, 3, 2, 5, 1, (2, 2, 2, 2)),  # narrower than the kernel
    (24, 9, 9, 1, 1, (0, 0, 0, 0)),
    # rows wide enough for the sliding tiles of layers and chunk remainders of <= 2 vectors
    (16, 5, 40, 3, 1, (1, 1, 1, 1)),
    (32, 4, 45, 5, 2, (2, 2, 2, 2)),
    (72, 3, 33, 3, 1, (1, 1, 1, 1)),
    (24, 4, 35, 5, 1, (2, 2, 2, 2)),
    (40, 6, 41, 3, 2, (0, 1, 0, 1)),
]


@pytest.mark.parametrize("case", DW_CASES, ids=lambda c: f"C{c[0]}_{c[1]}x{c[2]}_k{c[3]}s{c[4]}")
@pytest.mark.parametrize("act", ["silu", "relu6", "hardswish", "identity"])
def test_dw_eval_matches_depthwise_conv_bias_act_and_pools(case, act):
    c, h, w, k, s, pad = case
    g = _gen(1)
    x = torch.randn(2, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, k, k, generator=g) / k
    bias = torch.randn(c, generator=g)
    taps = weight.reshape(c, k * k).t().contiguous()
    y, pooled = K.dw_eval(x, taps, bias, k, s, list(pad), act, True)
    xp = F.pad(x.double(), (pad[2], pad[3], pad[0], pad[1]))
    ref = ACTIVATIONS[act][0](F.conv2d(xp, weight.double(), bias.double(), s, 0, 1, c))
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) <= 1e-6
    assert rel_err(pooled, ref.mean((2, 3))) <= 1e-6
    y2, empty = K.dw_eval(x, taps, bias, k, s, list(pad), act, False)
    assert torch.equal(y, y2) and empty.numel() == 0


def test_dw_eval_is_independent_of_the_thread_count():
    g = _gen(2)
    x = torch.randn(1, 200, 20, 20, generator=g).contiguous(memory_format=torch.channels_last)
    taps, bias = torch.randn(9, 200, generator=g), torch.randn(200, generator=g)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(K.dw_eval(x, taps, bias, 3, 1, [1, 1, 1, 1], "silu", True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_dw_eval_rejects_bad_inputs():
    x = torch.randn(1, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    taps, bias = torch.randn(9, 8), torch.randn(8)
    with pytest.raises(RuntimeError, match="x must be a 4-D channels_last"):
        K.dw_eval(x.contiguous(), taps, bias, 3, 1, [1, 1, 1, 1], "relu", False)
    with pytest.raises(RuntimeError, match="taps must be a float32 CPU tensor of shape"):
        K.dw_eval(x, torch.randn(8, 9), bias, 3, 1, [1, 1, 1, 1], "relu", False)
    with pytest.raises(RuntimeError, match="kernel_size must be in"):
        K.dw_eval(x, torch.randn(81, 8), bias, 9, 1, [4, 4, 4, 4], "relu", False)
    with pytest.raises(RuntimeError, match="padding must be"):
        K.dw_eval(x, taps, bias, 3, 1, [1, 1, 1], "relu", False)
    with pytest.raises(RuntimeError, match="unknown|act"):
        K.dw_eval(x, taps, bias, 3, 1, [1, 1, 1, 1], "softplus", False)


def _mbconv_reference(x, expand, dw, se, project, residual, gate_act="identity"):
    """The block in float64 PyTorch ops from the kernel's arguments (a residual adds x to the first
    C_in output channels)."""
    x64 = x.double()
    h = x64
    if expand is not None:
        wt, b, act = expand
        h = ACTIVATIONS[act][0](torch.einsum("nchw,cd->ndhw", x64, wt.double()) + b.double().view(1, -1, 1, 1))
    taps, b, k, s, pad, act = dw
    c = taps.shape[1]
    weight = taps.double().t().reshape(c, 1, k, k)
    z = ACTIVATIONS[act][0](F.conv2d(F.pad(h, (pad[2], pad[3], pad[0], pad[1])), weight, b.double(), s, 0, 1, c))
    if se is not None:
        w1, b1, w2, b2, act, gate = se
        hidden = ACTIVATIONS[act][0](z.mean((2, 3)) @ w1.double().t() + b1.double())
        z = z * GATES[gate][0](hidden @ w2.double().t() + b2.double()).view(z.shape[0], c, 1, 1)
        z = ACTIVATIONS[gate_act][0](z)
    wt, b = project
    out = torch.einsum("nchw,cd->ndhw", z, wt.double()) + b.double().view(1, -1, 1, 1)
    if residual:
        out[:, :x.shape[1]] += x64
    return out


# (C_in, C_out, H, W, k, stride, padding (top, bottom, left, right)): C_out covers 4 / 3 / 2 / 1
# whole vectors and a partial one; W covers rows narrower than a tile and the kernel.
DIRECT_CASES = [
    (3, 32, 9, 13, 3, 2, (1, 1, 1, 1)),
    (3, 16, 8, 8, 3, 2, (0, 1, 0, 1)),  # TF "same" for an even input
    (1, 70, 6, 5, 5, 1, (2, 2, 2, 2)),
    (4, 136, 7, 7, 7, 2, (3, 3, 3, 3)),
    (2, 8, 3, 2, 3, 1, (1, 1, 1, 1)),
    (3, 48, 5, 6, 1, 1, (0, 0, 0, 0)),
]


@pytest.mark.parametrize("case", DIRECT_CASES, ids=lambda c: f"{c[0]}to{c[1]}_{c[2]}x{c[3]}_k{c[4]}s{c[5]}")
@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["silu", "hardswish", "relu6", "identity"])
def test_direct_conv_eval_matches_conv_bias_act(case, fmt, act):
    cin, cout, h, w, k, s, pad = case
    g = _gen(4)
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = torch.randn(2, cin, h, w, generator=g).contiguous(memory_format=mf)
    weight = torch.randn(cout, cin, k, k, generator=g) / k
    bias = torch.randn(cout, generator=g)
    taps = weight.permute(2, 3, 1, 0).reshape(k * k * cin, cout).contiguous()
    y = K.direct_conv_eval(x, taps, bias, k, s, list(pad), act)
    xp = F.pad(x.double(), (pad[2], pad[3], pad[0], pad[1]))
    ref = ACTIVATIONS[act][0](F.conv2d(xp, weight.double(), bias.double(), s))
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) <= 1e-6


def test_direct_conv_eval_reads_any_strides():
    g = _gen(5)
    x = torch.randn(1, 3, 10, 20, generator=g)[:, :, :, ::2]  # no dense layout at all
    weight, bias = torch.randn(16, 3, 3, 3, generator=g), torch.randn(16, generator=g)
    taps = weight.permute(2, 3, 1, 0).reshape(27, 16).contiguous()
    ref = F.conv2d(x.double(), weight.double(), bias.double(), 1, 1)
    assert rel_err(K.direct_conv_eval(x, taps, bias, 3, 1, [1, 1, 1, 1], "identity"), ref) <= 1e-6


def test_direct_conv_eval_rejects_bad_inputs():
    x = torch.randn(1, 3, 8, 8)
    taps, bias = torch.randn(27, 8), torch.randn(8)
    with pytest.raises(RuntimeError, match="x must be a 4-D float32"):
        K.direct_conv_eval(x.double(), taps, bias, 3, 1, [1, 1, 1, 1], "relu")
    with pytest.raises(RuntimeError, match=r"taps must be a float32 CPU tensor of shape \(27, C_out\)"):
        K.direct_conv_eval(x, torch.randn(26, 8), bias, 3, 1, [1, 1, 1, 1], "relu")
    with pytest.raises(RuntimeError, match="bias must have 8 elements"):
        K.direct_conv_eval(x, taps, torch.randn(9), 3, 1, [1, 1, 1, 1], "relu")
    with pytest.raises(RuntimeError, match="padding must be in"):
        K.direct_conv_eval(x, taps, bias, 3, 1, [3, 1, 1, 1], "relu")
    with pytest.raises(RuntimeError, match="kernel_size must be in"):
        K.direct_conv_eval(x, torch.randn(243, 8), bias, 9, 1, [1, 1, 1, 1], "relu")
    with pytest.raises(RuntimeError, match="act must be one of"):
        K.direct_conv_eval(x, taps, bias, 3, 1, [1, 1, 1, 1], "tanh")
    with pytest.raises(RuntimeError, match="x must have 1 to 4 channels"):
        K.direct_conv_eval(torch.randn(1, 5, 8, 8), torch.randn(45, 8), bias, 3, 1, [1, 1, 1, 1], "relu")


# (C_in, C_out, H, W): every register-tile width (1-4 vectors, with and without a partial last
# vector, several 64-channel chunks), pixel counts with 12-, 4- and 1-pixel tiles, one pixel (the
# images then run as the pixels of one, unless scaled per image)
POINTWISE_CASES = [
    (16, 64, 7, 9),
    (24, 40, 5, 5),
    (5, 8, 3, 4),
    (40, 24, 11, 6),
    (120, 72, 4, 4),
    (33, 136, 2, 3),
    (7, 200, 1, 1),
    (64, 16, 13, 1),
]


def _pointwise_inputs(case, seed: int):
    """x (3 images, channels_last), weights (C_in, C_out), bias, residual, per-image scale."""
    cin, cout, h, w = case
    g = _gen(seed)
    cl = torch.channels_last
    x = torch.randn(3, cin, h, w, generator=g).contiguous(memory_format=cl)
    wt = torch.randn(cin, cout, generator=g) / cin ** 0.5
    bias = torch.randn(cout, generator=g)
    res = torch.randn(3, cout, h, w, generator=g).contiguous(memory_format=cl)
    return x, wt, bias, res, torch.rand(3, cin, generator=g)


@pytest.mark.parametrize("case", POINTWISE_CASES, ids=lambda c: f"{c[0]}to{c[1]}_{c[2]}x{c[3]}")
@pytest.mark.parametrize("act", ["silu", "hardswish", "relu", "identity"])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("with_scale", [False, True])
def test_pointwise_eval_matches_conv1x1_bias_residual_act(case, act, with_residual, with_scale):
    cin, cout = case[:2]
    cl = torch.channels_last
    x, wt, bias, res, scale = _pointwise_inputs(case, 6)
    res, scale = (res if with_residual else None), (scale if with_scale else None)
    y = K.pointwise_eval(x, wt, bias, res, act, scale)
    xs = x.double() * (scale.double().view(3, cin, 1, 1) if with_scale else 1)
    u = F.conv2d(xs, wt.double().t().reshape(cout, cin, 1, 1), bias.double())
    ref = ACTIVATIONS[act][0](u + (res.double() if with_residual else 0))
    assert y.shape == ref.shape and y.is_contiguous(memory_format=cl)
    assert rel_err(y, ref) <= 1e-6


@pytest.mark.parametrize("case", POINTWISE_CASES, ids=lambda c: f"{c[0]}to{c[1]}_{c[2]}x{c[3]}")
def test_pointwise_eval_packed_panels_match_the_row_major_weights(case):
    cin, cout = case[:2]
    x, wt, bias, res, scale = _pointwise_inputs(case, 7)
    panels = weight_panels(wt.t().contiguous())
    assert panels.shape == (-(-cout // 64), cin, 64)
    for r, sc in ((None, None), (res, scale), (res, None)):
        assert torch.equal(K.pointwise_eval(x, panels, bias, r, "silu", sc), K.pointwise_eval(x, wt, bias, r, "silu", sc))


def test_pointwise_eval_is_independent_of_the_thread_count():
    g = _gen(7)
    x = torch.randn(2, 96, 14, 14, generator=g).contiguous(memory_format=torch.channels_last)
    wt, bias = torch.randn(96, 136, generator=g), torch.randn(136, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = K.pointwise_eval(x, wt, bias, None, "silu", None)
        torch.set_num_threads(2)
        two = K.pointwise_eval(x, wt, bias, None, "silu", None)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_pointwise_eval_rejects_bad_inputs():
    cl = torch.channels_last
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=cl)
    wt, bias = torch.randn(8, 16), torch.randn(16)
    with pytest.raises(RuntimeError, match="x must be a 4-D channels_last float32"):
        K.pointwise_eval(torch.randn(2, 8, 4, 4), wt, bias, None, "relu", None)
    with pytest.raises(RuntimeError, match=r"wt must be a contiguous float32 CPU tensor of shape \(8, C_out\)"):
        K.pointwise_eval(x, torch.randn(9, 16), bias, None, "relu", None)
    with pytest.raises(RuntimeError, match="bias must have 16 elements"):
        K.pointwise_eval(x, wt, torch.randn(15), None, "relu", None)
    with pytest.raises(RuntimeError, match=r"or packed \(ceil\(C_out / 64\), 8, 64\) with C_out = the bias' 65"):
        K.pointwise_eval(x, torch.randn(1, 8, 64), torch.randn(65), None, "relu", None)
    with pytest.raises(RuntimeError, match="residual must be a channels_last float32"):
        K.pointwise_eval(x, wt, bias, torch.randn(2, 16, 4, 4), "relu", None)
    with pytest.raises(RuntimeError, match="scale must be a float32 CPU tensor of"):
        K.pointwise_eval(x, wt, bias, None, "relu", torch.rand(2, 7))
    with pytest.raises(RuntimeError, match="act must be one of"):
        K.pointwise_eval(x, wt, bias, None, "tanh", None)


def test_stem_conv_of_a_patched_model_takes_the_direct_kernel():
    from fastblocks.inference.modules import FOLD_ATTR

    model, ref = _timm_cl("mobilenetv3_large_100")
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert_accurate(model, ref, x)
    runner = model.conv_stem.__dict__[FOLD_ATTR].runner()
    assert runner.direct and runner._direct_ready(x)
    with torch.no_grad():
        for inp in (x, x.contiguous()):  # NCHW input too, as oneDNN: a channels_last output
            out = model.bn1(model.conv_stem(inp))
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert rel_err(out, ref.bn1(ref.conv_stem(inp))) <= 1e-5

@pytest.mark.parametrize("expand", [True, False])
@pytest.mark.parametrize("se_gate", [None, "sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("spatial", [3, 12], ids=["gate_on_z", "gate_on_weights"])
@pytest.mark.parametrize("rexnet", [False, True], ids=["mbconv", "rexnet"])
def test_mbconv_eval_matches_the_composition(expand, se_gate, spatial, rexnet):
    # rexnet: the gate multiplies the depthwise output before its activation (relu6 after the gate,
    # or fused into the depthwise conv without SE), and x adds to the first C_in of 24 outputs
    g = _gen(3)
    n, cin, c, cout, r = 2, 16, 48 if expand else 16, 24 if rexnet else 16, 6
    x = torch.randn(n, cin, spatial, spatial, generator=g).contiguous(memory_format=torch.channels_last)
    exp = (torch.randn(cin, c, generator=g) / 4, torch.randn(c, generator=g), "silu") if expand else None
    dw_act = "identity" if rexnet and se_gate else "relu6"
    gate_act = "relu6" if rexnet and se_gate else "identity"
    dw = (torch.randn(9, c, generator=g) / 3, torch.randn(c, generator=g), 3, 1, [1, 1, 1, 1], dw_act)
    se = None if se_gate is None else (torch.randn(r, c, generator=g) / 6, torch.randn(r, generator=g),
                                       torch.randn(c, r, generator=g) / 2, torch.randn(c, generator=g), "relu", se_gate)
    proj = (torch.randn(c, cout, generator=g) / 6, torch.randn(cout, generator=g))
    args = (x,) + (exp if expand else (None, None, "identity")) + dw + (
        se if se else (None, None, None, None, "identity", "sigmoid")) + (gate_act,) + proj + (True,)
    out = K.mbconv_eval(*args)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, _mbconv_reference(x, exp, dw, se, proj, True, gate_act)) <= 2e-6


# (N, C_in, E, H, W, k, stride, padding (top, bottom, left, right)) for the fused expansion +
# depthwise pass (and, without SE, the projection in the same pass): one image with one channel
# chunk (bands of rows over the threads), full 64-channel chunks and a partial one, rows narrower
# than a register tile (several rows per step), rows wide enough for one, stride 2, TF "same"
# padding, k up to 7, a map smaller than the kernel.
EXPAND_DW_CASES = [
    (1, 8, 64, 20, 50, 3, 1, (1, 1, 1, 1)),
    (1, 16, 64, 23, 49, 3, 2, (1, 1, 1, 1)),
    (2, 12, 136, 9, 7, 5, 1, (2, 2, 2, 2)),
    (1, 24, 72, 14, 14, 5, 2, (1, 2, 1, 2)),
    (3, 6, 40, 11, 5, 7, 2, (3, 3, 3, 3)),
    (1, 5, 128, 2, 3, 3, 1, (1, 1, 1, 1)),
    (2, 4, 20, 1, 1, 3, 1, (1, 1, 1, 1)),
    # maps large enough for the SE-free block's single pass over bands of rows
    (1, 8, 72, 40, 31, 3, 1, (1, 1, 1, 1)),
    (3, 16, 96, 34, 30, 3, 2, (0, 1, 0, 1)),
    (1, 12, 200, 16, 24, 5, 1, (2, 2, 2, 2)),
]


@pytest.mark.parametrize("case", EXPAND_DW_CASES, ids=lambda c: "n{}_cin{}_e{}_{}x{}_k{}s{}".format(*c[:7]))
def test_mbconv_eval_expansion_and_depthwise_in_one_pass(case):
    n, cin, e, h, w, k, s, pad = case
    g = _gen(11)
    x = torch.randn(n, cin, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    exp_w = torch.randn(cin, e, generator=g) / cin ** 0.5
    exp = (exp_w, torch.randn(e, generator=g), "hardswish")
    dw = (torch.randn(k * k, e, generator=g) / k, torch.randn(e, generator=g), k, s, list(pad), "relu")
    se = (torch.randn(4, e, generator=g) / e ** 0.5, torch.randn(4, generator=g), torch.randn(e, 4, generator=g),
          torch.randn(e, generator=g), "relu", "sigmoid")
    proj = (torch.randn(e, cin, generator=g) / e ** 0.5, torch.randn(cin, generator=g))
    residual = s == 1 and (h + pad[0] + pad[1] - k + 1, w + pad[2] + pad[3] - k + 1) == (h, w)
    packed = (weight_panels(exp_w.t().contiguous()),) + exp[1:]
    before = torch.get_num_threads()
    try:
        for with_se in (False, True):
            outs = []
            for threads, e_args in ((1, exp), (2, exp), (3, packed)):
                torch.set_num_threads(threads)
                args = (x,) + e_args + tuple(dw) + (se if with_se else (None, None, None, None, "identity", "sigmoid"))
                outs.append(K.mbconv_eval(*args, "identity", *proj, residual))
            ref = _mbconv_reference(x, exp, dw, se if with_se else None, proj, residual)
            assert rel_err(outs[0], ref) <= 2e-6
            # the same sums in the same order whatever the thread count and weight layout
            assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("expand", [True, False])
@pytest.mark.parametrize("rexnet", [False, True], ids=["mbconv", "rexnet"])
@pytest.mark.parametrize("n", [1, 2])
def test_mbconv_eval_se_free_block_in_one_pass(expand, rexnet, n):
    # maps past 256 KB: expansion, depthwise and projection (+ residual) in bands of rows; x adds
    # to the first C_in of 40 outputs for rexnet
    g = _gen(12)
    cin, c, cout = 16, 72 if expand else 16, 40 if rexnet else 16
    spatial = 31 if expand else 66
    x = torch.randn(n, cin, spatial, spatial, generator=g).contiguous(memory_format=torch.channels_last)
    exp = (torch.randn(cin, c, generator=g) / 4, torch.randn(c, generator=g), "silu") if expand else None
    dw = (torch.randn(9, c, generator=g) / 3, torch.randn(c, generator=g), 3, 1, [1, 1, 1, 1], "relu6")
    proj = (weight_panels(torch.randn(cout, c, generator=g) / 6), torch.randn(cout, generator=g))
    args = (x,) + (exp if expand else (None, None, "identity")) + dw + (
        None, None, None, None, "identity", "sigmoid", "identity") + proj + (True,)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(K.mbconv_eval(*args))
    finally:
        torch.set_num_threads(before)
    ref = _mbconv_reference(x, exp, dw, None, (proj[0].transpose(1, 2).reshape(-1, c)[:cout].t(), proj[1]), True)
    assert rel_err(outs[0], ref) <= 2e-6
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_mbconv_eval_outputs_never_share_its_scratch_memory():
    # The expanded and depthwise activations live in per-thread scratch reused by the next call:
    # a result must stay intact after later calls of other sizes.
    g = _gen(6)

    def block(cin, c, spatial):
        x = torch.randn(2, cin, spatial, spatial, generator=g).contiguous(memory_format=torch.channels_last)
        exp = (torch.randn(cin, c, generator=g) / 4, torch.randn(c, generator=g), "silu")
        dw = (torch.randn(9, c, generator=g) / 3, torch.randn(c, generator=g), 3, 1, [1, 1, 1, 1], "relu6")
        se = (None, None, None, None, "identity", "sigmoid", "identity")
        proj = (torch.randn(c, cin, generator=g) / 6, torch.randn(cin, generator=g))
        return (x,) + exp + dw + se + proj + (True,)

    small, large = block(8, 24, 5), block(16, 72, 11)
    first = K.mbconv_eval(*small)
    kept = first.clone()
    second = K.mbconv_eval(*large)
    assert torch.equal(first, kept)
    assert torch.equal(K.mbconv_eval(*small), kept) and torch.equal(K.mbconv_eval(*large), second)

def test_mbconv_eval_rejects_bad_inputs():
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    dw = (torch.randn(9, 8), torch.randn(8), 3, 1, [1, 1, 1, 1], "relu")
    none_se = (None, None, None, None, "identity", "sigmoid", "identity")
    with pytest.raises(RuntimeError, match="x must be a 4-D channels_last float32"):
        K.mbconv_eval(x.contiguous(), None, None, "identity", *dw, *none_se, torch.randn(8, 8), torch.randn(8), False)
    with pytest.raises(RuntimeError, match="proj_wt"):
        K.mbconv_eval(x, None, None, "identity", *dw, *none_se, torch.randn(7, 8), torch.randn(8), False)
    with pytest.raises(RuntimeError, match="residual needs"):
        K.mbconv_eval(x, None, None, "identity", *dw, *none_se, torch.randn(8, 4), torch.randn(4), True)
    with pytest.raises(RuntimeError, match="gate_act needs the SE"):
        K.mbconv_eval(x, None, None, "identity", *dw, *none_se[:-1], "relu6", torch.randn(8, 8), torch.randn(8), False)
    se = (torch.randn(2, 8), None, torch.randn(8, 2), None, "relu", "tanh", "identity")
    with pytest.raises(RuntimeError, match="se_gate must be"):
        K.mbconv_eval(x, None, None, "identity", *dw, *se, torch.randn(8, 8), torch.randn(8), False)


def _whole_block_calls(model) -> int:
    """How many block forwards of the model hold whole-block arguments (ran the C++ block op)."""
    return sum(m.__dict__[BLOCK_ATTR]._args is not None for m in model.modules() if BLOCK_ATTR in m.__dict__)


def _timm_cl(name: str):
    torch.manual_seed(0)
    if name.startswith("torchvision:"):
        models = pytest.importorskip("torchvision.models")
        model = getattr(models, name.split(":")[1])(num_classes=10)
    else:
        model = pytest.importorskip("timm").create_model(name, num_classes=10)
    model = randomize_bn(model).eval().to(memory_format=torch.channels_last)
    ref = copy.deepcopy(model)
    fb.patch(model)
    return model, ref


# model -> blocks that take the whole-block path
TIMM_BLOCKS = {"efficientnet_b0": 16, "mobilenetv2_100": 17, "mobilenetv3_large_100": 15,
               "torchvision:efficientnet_b0": 16, "rexnet_100": 16}


@pytest.mark.parametrize("name", list(TIMM_BLOCKS))
def test_whole_block_path_of_timm_models_is_accurate(name):
    model, ref = _timm_cl(name)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    assert_accurate(model, ref, x)
    assert _whole_block_calls(model) == TIMM_BLOCKS[name]


def test_whole_block_arguments_follow_parameter_updates_and_are_never_copied():
    model, ref = _timm_cl("efficientnet_b0")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    eval_out(model, x)
    with torch.no_grad():  # an optimizer-like in-place step on SE, depthwise, BN and projection tensors
        for m in (model, ref):
            block = m.blocks[2][1]
            block.se.conv_reduce.weight.mul_(1.5)
            block.conv_dw.weight.add_(0.1)
            block.bn3.running_var.mul_(2.0)
            block.conv_pwl.weight.mul_(-1.0)
    assert_accurate(model, ref, x)
    for m in (model, ref):  # load_state_dict copies in place
        m.blocks[3][0].bn1.eps = 1e-2
    model.load_state_dict({k: v * 0.9 if v.is_floating_point() else v for k, v in ref.state_dict().items()})
    ref.load_state_dict(model.state_dict())
    assert_accurate(model, ref, x)
    clone = pickle.loads(pickle.dumps(model))
    assert _whole_block_calls(clone) == 0 and _whole_block_calls(copy.deepcopy(model)) == 0
    assert rel_err(eval_out(clone, x), eval_out(model, x)) == 0.0


def test_whole_block_runner_returns_none_wherever_the_python_path_must_decide():
    # the C++ runner of a block's cached arguments: the op's output while its sources are unchanged;
    # None for input it does not take, a gradient needed, or any source changed, after which the
    # block's next call rebuilds the arguments and the runner
    model, ref = _timm_cl("mobilenetv2_100")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    assert_accurate(model, ref, x)
    block = model.blocks[2][1]
    plan = block.__dict__[BLOCK_ATTR]
    xi = torch.randn(1, 32, 8, 8).contiguous(memory_format=torch.channels_last)

    def fresh_runner():
        with torch.no_grad():
            block(xi)
        assert plan._runner is not None
        return plan._runner

    runner = fresh_runner()
    with torch.no_grad():
        assert torch.equal(runner(xi), K.mbconv_eval(xi, *plan._args))
        assert runner(xi.contiguous()) is None and runner(xi.double()) is None and runner(xi[0]) is None
    assert runner(xi) is None  # grad mode on and the parameters require grad
    changes = [
        lambda: block.conv_pwl.weight.mul_(2.0),  # an optimizer-like in-place step
        lambda: block.bn2.running_mean.add_(0.5),
        lambda: setattr(block.bn1, "eps", 1e-2),
        # a new Parameter on the same storage (same version counter and data pointer)
        lambda: setattr(block.conv_dw, "weight", torch.nn.Parameter(block.conv_dw.weight.detach())),
        lambda: block.conv_pw.weight.set_(block.conv_pw.weight.detach().clone()),  # a new storage
    ]
    for i, change in enumerate(changes):
        runner = fresh_runner()
        with torch.no_grad():
            change()
            if i == 2:
                ref.blocks[2][1].bn1.eps = 1e-2
            else:
                ref.load_state_dict(model.state_dict())
            assert runner(xi) is None
        assert_accurate(model, ref, x)
        new = fresh_runner()
        assert new is not runner
        with torch.no_grad():
            assert new(xi) is not None


def test_whole_block_path_steps_aside_for_hooks_gradients_and_nchw():
    model, ref = _timm_cl("mobilenetv3_large_100")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    block = model.blocks[3][0]
    seen = []
    handle = block.conv_dw.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert_accurate(model, ref, x)
    assert seen and block.__dict__[BLOCK_ATTR]._args is None  # the hooked block ran its modules
    handle.remove()
    # an input gradient: the folded per-module path, differentiable in x
    assert rel_err(*input_grads((model, ref), x)) <= 1e-5
    assert_accurate(model, ref, x.contiguous())  # NCHW input: the per-module eval path


def test_rexnet_whole_block_follows_its_se_batchnorm_and_steps_aside_for_hooks():
    model, ref = _timm_cl("rexnet_100")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    assert_accurate(model, ref, x)
    with torch.no_grad():  # the BatchNorm inside the SE is folded into its reduce conv: a step must reach it
        for m in (model, ref):
            m.features[5].se.bn.running_var.mul_(3.0)
            m.features[5].se.bn.bias.add_(0.5)
            m.features[2].conv_exp.bn.weight.mul_(-1.0)  # a block without SE
    assert_accurate(model, ref, x)
    block = model.features[5]
    seen = []
    handle = block.act_dw.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    block.__dict__[BLOCK_ATTR]._args = None
    assert_accurate(model, ref, x)
    assert seen and block.__dict__[BLOCK_ATTR]._args is None  # its own forward ran, act_dw included
    handle.remove()


@pytest.mark.parametrize("cap", ["default", "avx2"])
def test_eval_kernels_of_the_lower_isa_copies(cap):
    # Each ISA copy has its own vector width (a chunk of 4 vectors is 64 channels with AVX-512, 32
    # with AVX2, 16 in the baseline copy) while packed weights come in 64-channel panels: the eval
    # kernel tests rerun in a subprocess capped at the lower copy (FASTBLOCKS_CPU_ISA is read once).
    from fastblocks.backends import native

    if cap == "default" and not native.has_baseline_copy():
        pytest.skip("built without the baseline copy (FASTBLOCKS_CPU_BASELINE=1 builds it)")
    env = dict(os.environ, FASTBLOCKS_CPU_ISA=cap)
    select = "pointwise or mbconv or dw_eval or direct_conv or whole_block or epilogue"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", __file__,
                           os.path.join(os.path.dirname(__file__), "test_inference_pool.py"), "-k", select],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
