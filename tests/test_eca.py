import pytest
import torch

import fastblocks as fb
from tests.helpers import CPU_BACKENDS, compare_with_reference, randn



def call(x, conv_weight, **kw):
    return fb.ops.eca(x, conv_weight, **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("n,c,h,w", [(1, 5, 3, 7), (3, 16, 6, 5)])
def test_matches_reference_fp32(backend, k, gate, n, c, h, w):
    inputs = dict(x=randn(n, c, h, w, seed=k), conv_weight=randn(1, 1, k, seed=k + 1), gate=gate)
    compare_with_reference(call, inputs, torch.float32, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(backend, dtype):
    inputs = dict(x=randn(2, 24, 5, 5, seed=1), conv_weight=randn(1, 1, 3, seed=2))
    compare_with_reference(call, inputs, dtype, backend, param_dtype=torch.float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_gradcheck_float64(backend, k):
    x = randn(2, 7, 3, 4, seed=3).requires_grad_()
    w = randn(1, 1, k, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: fb.ops.eca(x, w, backend=backend), (x, w))


def test_opcheck():
    args = (torch.randn(2, 9, 3, 3, requires_grad=True), torch.randn(1, 1, 3, requires_grad=True), "sigmoid", "eager")
    torch.library.opcheck(torch.ops.fastblocks.eca.default, args)
