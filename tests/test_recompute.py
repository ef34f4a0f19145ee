"""Recompute-on-load in patched models: fewer saved bytes, exact gradients, in-place safety."""

import torch
from torch import nn

import fastblocks as fb
from fastblocks._recompute import recompute_scope
from fastblocks.utils import saved_tensor_bytes


def test_bn_act_output_saved_by_next_conv_becomes_a_recipe():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64, requires_grad=True)
    g, b = torch.rand(8, dtype=torch.float64) + 0.5, torch.randn(8, dtype=torch.float64)
    conv = nn.Conv2d(8, 8, 1, bias=False).double()

    def block(scope):
        with (recompute_scope() if scope else torch.enable_grad()):
            return conv(fb.ops.bn_act(x * 1, g, b, None, None, training=True, backend="eager"))

    plain, scoped = saved_tensor_bytes(lambda: block(False)), saved_tensor_bytes(lambda: block(True))
    assert scoped < plain - x.numel() * 8 // 2  # the activation (one x-sized tensor) is no longer kept
    grads = [torch.autograd.grad(block(s).square().sum(), [x, conv.weight]) for s in (False, True)]
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_in_place_change_after_offer_keeps_the_real_tensor():
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 4, dtype=torch.float64)
    shortcut = torch.randn(2, 4, 5, 5, dtype=torch.float64)

    def block():
        y = fb.ops.gate_scale(x * 1, logits, backend="eager")
        y += shortcut           # in place, like a ResNet residual add
        return torch.relu_(y)   # saves its (modified) output

    expected = torch.autograd.grad(block().sum(), x)[0]
    with recompute_scope():
        out = block()
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0], expected)


def test_dwconv_bn_act_output_saved_by_next_conv_becomes_a_recipe():
    """The depthwise block's output is recomputed in backward (its one-pass eval form, with the batch
    statistics it was normalised with) from x, which the fused op saves anyway: the next conv keeps
    no copy of it; gradients and running statistics are unchanged."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    g, b = torch.rand(8, dtype=torch.float64) + 0.5, torch.randn(8, dtype=torch.float64)
    conv = nn.Conv2d(8, 8, 1, bias=False).double()
    stats = {s: (torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)) for s in (False, True)}

    def block(scope, level="depthwise"):
        rm, rv = stats[scope]
        with (recompute_scope(level) if scope else torch.enable_grad()):
            return conv(fb.ops.dwconv_bn_act(x * 1, w, g, b, rm, rv, stride=2, training=True, backend="eager"))

    plain, scoped = saved_tensor_bytes(lambda: block(False)), saved_tensor_bytes(lambda: block(True))
    out_bytes = x.numel() // 4 * 8  # the stride-2 output
    assert scoped <= plain - out_bytes
    assert saved_tensor_bytes(lambda: block(True, "elementwise")) == plain  # the default level keeps it
    stats[True] = tuple(t.clone() for t in stats[False])
    grads = [torch.autograd.grad(block(s).square().sum(), [x, w, conv.weight]) for s in (False, True)]
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    for a, c in zip(stats[False], stats[True]):
        torch.testing.assert_close(a, c, rtol=0, atol=0)  # the recompute does not update them again


def test_one_recipe_per_tensor_computed_once():
    """A depthwise output saved directly (by the SE) and as a source of another recipe (the SE
    output, saved by the next conv) is recomputed once in backward."""
    import importlib

    dwmod = importlib.import_module("fastblocks.ops.dwconv_bn_act")
    calls = []
    real = dwmod._recompute

    def counting(*args):
        calls.append(1)
        return real(*args)

    torch.manual_seed(0)
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    wr, we = torch.randn(4, 8, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    conv = nn.Conv2d(8, 8, 1, bias=False).double()

    def block():
        y = fb.ops.dwconv_bn_act(x * 1, w, None, None, None, None, training=True, backend="eager")
        return conv(fb.ops.squeeze_excite(y, wr, None, we, None, backend="eager"))

    expected = torch.autograd.grad(block().square().sum(), [x, w])
    dwmod._recompute = counting
    try:
        with recompute_scope("depthwise"):
            out = block()
        got = torch.autograd.grad(out.square().sum(), [x, w])
    finally:
        dwmod._recompute = real
    assert len(calls) == 1
    for a, c in zip(expected, got):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_recompute_level_is_checked():
    import pytest

    with pytest.raises(ValueError, match="recompute must be one of"):
        with recompute_scope("everything"):
            pass
    with pytest.raises(TypeError, match="recompute must be a str"):
        fb.patch(nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()), recompute=True)
