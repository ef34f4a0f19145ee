"""Bad input gets a clear ValueError / TypeError naming the argument - never a crash or a wrong answer."""

import pytest
import torch

import fastblocks as fb

C = 4


def dw_args(**over):
    args = dict(x=torch.randn(2, C, 8, 8), weight=torch.randn(C, 1, 3, 3), bn_weight=torch.ones(C),
                bn_bias=torch.zeros(C), running_mean=torch.zeros(C), running_var=torch.ones(C))
    kw = {}
    for k, v in over.items():
        (args if k in args else kw)[k] = v
    return args, kw


CASES = [
    (dict(x=torch.randn(C, 8, 8)), ValueError, "x must have 4 dimensions"),
    (dict(x=torch.randint(0, 3, (2, C, 8, 8))), TypeError, "x must be a floating"),
    (dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
    (dict(weight=torch.randn(C, 2, 3, 3)), ValueError, "weight must be a depthwise"),
    (dict(weight=torch.randn(C + 1, 1, 3, 3)), ValueError, "weight must be a depthwise"),
    (dict(weight=torch.randn(C, 1, 3, 5)), ValueError, "weight must be a depthwise"),
    (dict(weight=torch.randn(C, 1, 4, 4)), ValueError, "odd kernel"),
    (dict(weight=torch.randn(C, 1, 3, 3, dtype=torch.float64)), TypeError, "weight must have dtype"),
    (dict(bn_weight=torch.ones(C + 1)), ValueError, "bn_weight must have shape"),
    (dict(bn_bias=torch.zeros(C, dtype=torch.int64)), TypeError, "bn_bias must have dtype"),
    (dict(running_var=None), ValueError, "running_mean and running_var"),
    (dict(running_mean=torch.zeros(C - 1)), ValueError, "running_mean must have shape"),
    (dict(stride=3), ValueError, "stride must be one of"),
    (dict(stride=1.5), TypeError, "stride must be an int"),
    (dict(dilation=2), ValueError, "dilation must be 1"),
    (dict(padding="valid"), ValueError, "padding must be"),
    (dict(padding=-1), ValueError, "padding must be >= 0"),
    (dict(act="quick_gelu"), ValueError, "act must be one of"),
    (dict(act=None), TypeError, "act must be a str"),
    (dict(eps=0.0), ValueError, "eps must be in"),
    (dict(momentum=1.5), ValueError, "momentum must be in"),
    (dict(training="yes"), TypeError, "training must be a bool"),
    (dict(running_mean=None, running_var=None), ValueError, "training=False needs running_mean"),
    (dict(x=torch.randn(1, C, 1, 1), training=True), ValueError, "more than 1 value per channel"),
    (dict(x=torch.randn(2, C, 2, 2), padding=0, weight=torch.randn(C, 1, 5, 5)), ValueError, "too small"),
    (dict(conv_bias=torch.zeros(C + 2)), ValueError, "conv_bias must have shape"),
    (dict(backend="nope"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("over,exc,msg", CASES, ids=[c[2] + str(i) for i, c in enumerate(CASES)])
def test_dwconv_bn_act_rejects(over, exc, msg):
    args, kw = dw_args(**over)
    with pytest.raises(exc, match=msg):
        fb.ops.dwconv_bn_act(*args.values(), **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_device_mismatch():
    args, kw = dw_args(weight=torch.randn(C, 1, 3, 3, device="cuda"))
    with pytest.raises(ValueError, match="weight is on"):
        fb.ops.dwconv_bn_act(*args.values(), **kw)


def test_device_mismatch_meta():
    # A meta tensor stands in for "another device" on CPU-only machines.
    args, kw = dw_args(bn_weight=torch.ones(C, device="meta"))
    with pytest.raises(ValueError, match="bn_weight is on meta"):
        fb.ops.dwconv_bn_act(*args.values(), **kw)


def test_bn_act_rejects():
    x = torch.randn(2, C, 3, 3)
    with pytest.raises(ValueError, match="bn_weight must have shape"):
        fb.ops.bn_act(x, torch.ones(C + 1), None, None, None, training=True)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        fb.ops.bn_act(x[0], None, None, None, None, training=True)
    with pytest.raises(ValueError, match="training=False needs running_mean"):
        fb.ops.bn_act(x, None, None, None, None)


def test_squeeze_excite_rejects():
    x = torch.randn(2, C, 3, 3)
    r, e = torch.randn(2, C), torch.randn(C, 2)
    with pytest.raises(ValueError, match="reduce_weight must have shape"):
        fb.ops.squeeze_excite(x, torch.randn(2, C + 1), None, e, None)
    with pytest.raises(ValueError, match="expand_weight must have shape"):
        fb.ops.squeeze_excite(x, r, None, torch.randn(C, 3), None)
    with pytest.raises(ValueError, match="reduce_bias must have shape"):
        fb.ops.squeeze_excite(x, r, torch.zeros(3), e, None)
    with pytest.raises(ValueError, match="gate must be one of"):
        fb.ops.squeeze_excite(x, r, None, e, None, gate="tanh")
    with pytest.raises(TypeError, match="reduce_weight must be a torch.Tensor"):
        fb.ops.squeeze_excite(x, None, None, e, None)


def test_eca_and_gate_scale_reject():
    x = torch.randn(2, C, 3, 3)
    with pytest.raises(ValueError, match="conv_weight must have shape"):
        fb.ops.eca(x, torch.randn(1, 3))
    with pytest.raises(ValueError, match="odd kernel"):
        fb.ops.eca(x, torch.randn(1, 1, 4))
    with pytest.raises(TypeError, match="conv_weight must have dtype"):
        fb.ops.eca(x, torch.randn(1, 1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="logits must have shape"):
        fb.ops.gate_scale(x, torch.randn(2, C + 1))


def test_activation_rejects():
    with pytest.raises(TypeError, match="x must be a floating"):
        fb.ops.silu(torch.arange(4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fb.ops.hard_swish([1.0])
