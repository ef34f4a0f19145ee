"""torch.compile(fullgraph=True) over a block of fused ops: no graph breaks, same numbers."""

import pytest
import torch

import fastblocks as fb


def mbconv_like(x, p, rm, rv, training):
    y = fb.ops.bn_act(x, p["g0"], p["b0"], rm[0], rv[0], training=training, act="silu")
    y = fb.ops.dwconv_bn_act(y, p["dw"], p["g1"], p["b1"], rm[1], rv[1], stride=2, padding="tf_same",
                             training=training, act="silu")
    y = fb.ops.squeeze_excite(y, p["r"], p["rb"], p["e"], p["eb"], act="silu")
    y = fb.ops.eca(y, p["k"])
    return fb.ops.hard_swish(y)


@pytest.mark.parametrize("training", [True, False])
def test_fullgraph_compile_matches_eager(training):
    torch.manual_seed(0)
    c = 8
    p = {"g0": torch.rand(c) + 0.5, "b0": torch.randn(c), "dw": torch.randn(c, 1, 3, 3),
         "g1": torch.rand(c) + 0.5, "b1": torch.randn(c), "r": torch.randn(2, c, 1, 1), "rb": torch.randn(2),
         "e": torch.randn(c, 2, 1, 1), "eb": torch.randn(c), "k": torch.randn(1, 1, 3)}
    p = {k: v.requires_grad_() for k, v in p.items()}
    stats = lambda: ([torch.zeros(c), torch.zeros(c)], [torch.ones(c), torch.ones(c)])  # noqa: E731
    x = torch.randn(2, c, 9, 9, requires_grad=True)

    torch._dynamo.reset()
    rm_c, rv_c = stats()
    with fb.backend("eager"):
        compiled = torch.compile(mbconv_like, fullgraph=True, backend="aot_eager")
        out_c = compiled(x, p, rm_c, rv_c, training)
        grads_c = torch.autograd.grad(out_c.square().sum(), [x] + list(p.values()))
        rm_e, rv_e = stats()
        out_e = mbconv_like(x, p, rm_e, rv_e, training)
        grads_e = torch.autograd.grad(out_e.square().sum(), [x] + list(p.values()))
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(rm_c + rv_c, rm_e + rv_e):
        torch.testing.assert_close(a, b)


def test_inductor_compiles_dwconv_block():
    torch._dynamo.reset()
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    w, g, b = torch.randn(4, 1, 5, 5, requires_grad=True), torch.rand(4) + 0.5, torch.randn(4)
    rm, rv = torch.zeros(4), torch.ones(4)
    f = lambda x: fb.ops.silu(fb.ops.dwconv_bn_act(x, w, g, b, rm, rv, training=True, backend="eager"))  # noqa
    out = torch.compile(f, fullgraph=True)(x)
    out.sum().backward()
    ref = fb.ops.silu(fb.ops.dwconv_bn_act(x, w, g, b, None, None, training=True, backend="reference"),
                      backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert x.grad is not None and torch.isfinite(x.grad).all()
