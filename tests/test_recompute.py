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
