import pytest
import torch

import fastblocks as fb
from tests.helpers import CPU_BACKENDS, compare_with_reference, randn



def make_inputs(n, c, r, h, w, seed, bias=True, conv_shape=True, **config):
    tail = (1, 1) if conv_shape else ()
    inputs = dict(
        x=randn(n, c, h, w, seed=seed),
        reduce_weight=randn(r, c, *tail, seed=seed + 1, scale=0.5),
        reduce_bias=randn(r, seed=seed + 2) if bias else None,
        expand_weight=randn(c, r, *tail, seed=seed + 3, scale=0.5),
        expand_bias=randn(c, seed=seed + 4) if bias else None,
    )
    inputs.update(config)
    return inputs


def call(x, reduce_weight, reduce_bias, expand_weight, expand_bias, **kw):
    return fb.ops.squeeze_excite(x, reduce_weight, reduce_bias, expand_weight, expand_bias, **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("act", ["relu", "silu", "hardswish"])
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("bias,conv_shape", [(True, True), (False, False)])
def test_matches_reference_fp32(backend, act, gate, bias, conv_shape):
    inputs = make_inputs(3, 10, 3, 7, 5, seed=3, bias=bias, conv_shape=conv_shape, act=act, gate=gate)
    compare_with_reference(call, inputs, torch.float32, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n,c,r,h,w", [(1, 1, 1, 1, 1), (1, 17, 4, 3, 11), (4, 32, 8, 14, 14)])
def test_shapes(backend, n, c, r, h, w):
    compare_with_reference(call, make_inputs(n, c, r, h, w, seed=n + c), torch.float32, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(backend, dtype):
    compare_with_reference(call, make_inputs(2, 12, 4, 6, 6, seed=5), dtype, backend, param_dtype=torch.float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("gate,act", [("sigmoid", "relu"), ("hard_sigmoid", "silu")])
def test_gradcheck_float64(backend, gate, act):
    inp = make_inputs(2, 6, 3, 4, 3, seed=9)
    tensors = [inp[k].requires_grad_() for k in ("x", "reduce_weight", "reduce_bias", "expand_weight", "expand_bias")]
    # hard_sigmoid has kinks at +-3: scale the logits into the smooth region for finite differences.
    f = lambda *t: fb.ops.squeeze_excite(*t, act=act, gate=gate, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(tensors))


def test_opcheck():
    x = torch.randn(2, 6, 3, 4, requires_grad=True)
    args = (x, torch.randn(3, 6, 1, 1, requires_grad=True), torch.randn(3), torch.randn(6, 3), None,
            "relu", "sigmoid", "eager")
    torch.library.opcheck(torch.ops.fastblocks.squeeze_excite.default, args)
