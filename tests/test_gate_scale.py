import pytest
import torch

import fastblocks as fb
from tests.helpers import CPU_BACKENDS, compare_with_reference, randn



def call(x, logits, **kw):
    return fb.ops.gate_scale(x, logits, **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(backend, gate, dtype):
    inputs = dict(x=randn(3, 11, 5, 7, seed=1), logits=randn(3, 11, seed=2, scale=3.0), gate=gate)
    compare_with_reference(call, inputs, dtype, backend, param_dtype=torch.float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend):
    x, logits = randn(2, 5, 3, 3, seed=3).requires_grad_(), randn(2, 5, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fb.ops.gate_scale(a, b, backend=backend), (x, logits))


def test_accepts_n_c_1_1_logits():
    x, logits = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 1, 1)
    torch.testing.assert_close(fb.ops.gate_scale(x, logits, backend="eager"), x * torch.sigmoid(logits))
