import pytest
import torch

import fastblocks as fb
from tests.helpers import CPU_BACKENDS, ACTS, compare_with_reference, rand_positive, randn



def make_inputs(n, c, h, w, seed, affine=True, running=True, **config):
    inputs = dict(
        x=randn(n, c, h, w, seed=seed, scale=2.0, offset=0.5),
        bn_weight=rand_positive(c, seed=seed + 1) if affine else None,
        bn_bias=randn(c, seed=seed + 2) if affine else None,
        running_mean=randn(c, seed=seed + 3, scale=0.1) if running else None,
        running_var=rand_positive(c, seed=seed + 4) if running else None,
    )
    inputs.update(config)
    return inputs


def call(x, bn_weight, bn_bias, running_mean, running_var, **kw):
    return fb.ops.bn_act(x, bn_weight, bn_bias, running_mean, running_var, **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("training,affine,running", [(True, True, True), (True, False, True), (True, True, False),
                                                     (False, True, True), (False, False, True)])
def test_matches_reference_fp32(backend, act, training, affine, running):
    inputs = make_inputs(3, 7, 5, 9, seed=len(act), affine=affine, running=running,
                         training=training, act=act, momentum=0.2, eps=1e-3)
    compare_with_reference(call, inputs, torch.float32, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (1, 16, 2, 3), (5, 1, 3, 3)])
def test_odd_shapes_batch_one(backend, shape):
    compare_with_reference(call, make_inputs(*shape, seed=2, training=True), torch.float32, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_with_fp32_params(backend, dtype):
    for training in (True, False):
        compare_with_reference(call, make_inputs(2, 6, 8, 8, seed=4, training=training), dtype, backend,
                               param_dtype=torch.float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training,affine,act", [(True, True, "silu"), (False, True, "hardswish"),
                                                 (True, False, "relu6"), (False, False, "identity")])
def test_gradcheck_float64(backend, training, affine, act):
    c = 4
    x = randn(2, c, 3, 5, seed=1).requires_grad_()
    params = (rand_positive(c, seed=2).requires_grad_(), randn(c, seed=3).requires_grad_()) if affine else ()
    rm, rv = randn(c, seed=4), rand_positive(c, seed=5)

    def f(x, *p):
        g, b = p if p else (None, None)
        return fb.ops.bn_act(x, g, b, rm.clone(), rv.clone(), training=training, act=act, backend=backend)

    assert torch.autograd.gradcheck(f, (x,) + params)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channels_last_preserved(backend):
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = fb.ops.bn_act(x, torch.ones(8), torch.zeros(8), None, None, training=True, backend=backend)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.square().sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_opcheck():
    x = torch.randn(2, 4, 3, 5)
    for args in [(x, torch.rand(4), torch.randn(4), None, None, True, 1e-5, "silu", "eager"),
                 (x.requires_grad_(), None, None, torch.randn(4), torch.rand(4) + 1, False, 1e-5, "relu", "eager")]:
        torch.library.opcheck(torch.ops.fastblocks.bn_act.default, args)
