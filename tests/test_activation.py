import pytest
import torch

import fastblocks as fb
from tests.helpers import CPU_BACKENDS, ACTS, compare_with_reference, randn



@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(backend, act, dtype):
    inputs = dict(x=randn(3, 5, 7, 2, seed=len(act), scale=4.0), act=act)
    compare_with_reference(lambda x, act: fb.ops.activation(x, act), inputs, dtype, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fn", [fb.ops.silu, fb.ops.hard_swish])
def test_gradcheck_float64(backend, fn):
    x = randn(4, 9, seed=1, scale=2.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, backend=backend), (x,))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_no_inf_nan_for_large_inputs(backend, dtype):
    x = torch.tensor([-1000.0, -100.0, -81.0, 81.0, 100.0, 1000.0], dtype=dtype, requires_grad=True)
    for fn in (fb.ops.silu, fb.ops.hard_swish):
        y = fn(x, backend=backend)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(y).all() and torch.isfinite(g).all()
    logits = torch.tensor([[-100.0, 100.0, -81.0]], dtype=dtype)
    out = fb.ops.gate_scale(torch.ones(1, 3, 1, 1, dtype=dtype), logits, backend=backend)
    assert torch.isfinite(out).all()


def test_saves_only_input():
    x = torch.randn(64, 64, requires_grad=True)
    eager = fb.utils.saved_tensor_bytes(lambda: fb.ops.silu(x * 1.0, backend="eager"))
    ref = fb.utils.saved_tensor_bytes(lambda: fb.ops.silu(x * 1.0, backend="reference"))
    assert eager == 64 * 64 * 4
    assert ref >= eager


def test_preserves_channels_last():
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    assert fb.ops.silu(x, backend="eager").is_contiguous(memory_format=torch.channels_last)


def test_opcheck():
    for act in ACTS:
        torch.library.opcheck(torch.ops.fastblocks.activation.default,
                              (torch.randn(3, 4, requires_grad=True), act, "eager"))
