import itertools

import pytest
import torch

import fastblocks as fb
from tests.helpers import CPU_BACKENDS, ACTS, compare_with_reference, dwconv_call as call, dwconv_inputs as make_inputs, rand_positive, randn



GRID = list(itertools.product([3, 5, 7], [1, 2], ["same", "tf_same", 0, 2], [True, False]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k,stride,padding,training", GRID)
def test_matches_reference_fp32(backend, k, stride, padding, training):
    act = ACTS[hash((k, stride, str(padding), training)) % len(ACTS)]
    inputs = make_inputs(2, 5, 9, 7, k, seed=k * 10 + stride, stride=stride, padding=padding,
                         training=training, act=act, momentum=0.3)
    compare_with_reference(call, inputs, torch.float32, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("affine,running,conv_bias", [(True, True, False), (False, True, True),
                                                      (True, False, True), (False, False, False)])
def test_acts_affine_running_stats(backend, act, affine, running, conv_bias):
    inputs = make_inputs(3, 4, 8, 8, 3, seed=7, affine=affine, running=running, conv_bias=conv_bias,
                         training=True, act=act, eps=1e-3)
    compare_with_reference(call, inputs, torch.float32, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n,c,h,w,k,stride", [(1, 3, 7, 9, 3, 2), (1, 1, 5, 5, 5, 1), (4, 17, 11, 13, 7, 2)])
def test_odd_shapes_and_batch_one(backend, n, c, h, w, k, stride):
    for training in (True, False):
        inputs = make_inputs(n, c, h, w, k, seed=n + c, stride=stride, padding="tf_same", training=training)
        compare_with_reference(call, inputs, torch.float32, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(backend, dtype):
    for training in (True, False):
        inputs = make_inputs(2, 6, 10, 9, 5, seed=3, stride=2, training=training)
        compare_with_reference(call, inputs, dtype, backend, param_dtype=torch.float32,
                               grad_names=["x", "weight", "bn_weight", "bn_bias"], x_dtype_names=("x", "weight"))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("padding,stride,training,affine,k", [
    ("same", 1, True, True, 3), ("same", 2, False, True, 5), ("tf_same", 2, True, False, 3),
    ("tf_same", 1, False, False, 7), (1, 2, True, True, 3), (0, 1, False, True, 3),
])
def test_gradcheck_float64(backend, padding, stride, training, affine, k):
    c = 3
    x = randn(2, c, 6, 7, seed=1).requires_grad_()
    w = randn(c, 1, k, k, seed=2).requires_grad_()
    cb = randn(c, seed=5).requires_grad_()
    gamma = rand_positive(c, seed=3).requires_grad_() if affine else None
    beta = randn(c, seed=4).requires_grad_() if affine else None
    rm, rv = randn(c, seed=6, scale=0.1), rand_positive(c, seed=7)

    def f(x, w, cb, *affine_params):
        g, b = affine_params if affine_params else (None, None)
        return fb.ops.dwconv_bn_act(x, w, g, b, rm.clone(), rv.clone(), conv_bias=cb, stride=stride,
                                    padding=padding, training=training, act="silu", backend=backend)

    params = (gamma, beta) if affine else ()
    assert torch.autograd.gradcheck(f, (x, w, cb) + params)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channels_last_in_channels_last_out(backend):
    inputs = make_inputs(2, 8, 9, 9, 3, seed=11, stride=2, training=True)
    x = inputs["x"].float().contiguous(memory_format=torch.channels_last).requires_grad_()
    args = [inputs[k].float() for k in ("weight", "bn_weight", "bn_bias", "running_mean", "running_var")]
    y = fb.ops.dwconv_bn_act(x, *args, stride=2, training=True, backend=backend)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    y.sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    y_ref = fb.ops.dwconv_bn_act(x.detach().contiguous(), *args, stride=2, training=True, backend="reference")
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_momentum_and_unbiased_running_var_exactly_like_f_batch_norm():
    inputs = make_inputs(2, 4, 5, 5, 3, seed=21)
    rm, rv = inputs["running_mean"].float(), inputs["running_var"].float()
    rm2, rv2 = rm.clone(), rv.clone()
    x, w = inputs["x"].float(), inputs["weight"].float()
    fb.ops.dwconv_bn_act(x, w, None, None, rm, rv, training=True, momentum=0.25, backend="eager")
    z = torch.nn.functional.conv2d(x, w, padding=1, groups=4)
    torch.nn.functional.batch_norm(z, rm2, rv2, training=True, momentum=0.25)
    torch.testing.assert_close(rm, rm2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rv, rv2, rtol=1e-6, atol=1e-6)


def test_opcheck():
    x = torch.randn(2, 4, 7, 6)
    w, g, b = torch.randn(4, 1, 3, 3), torch.rand(4) + 0.5, torch.randn(4)
    rm, rv = torch.randn(4), torch.rand(4) + 0.5
    for args in [(x, w, g, b, None, None, None, 2, "tf_same", 0, 1, True, 1e-5, "silu", "eager"),
                 (x, w, g, b, rm, rv, torch.randn(4), 1, "same", 0, 1, False, 1e-3, "relu6", "eager"),
                 (x.contiguous(memory_format=torch.channels_last).requires_grad_(), w.requires_grad_(),
                  None, None, None, None, None, 1, "explicit", 2, 1, True, 1e-5, "hardswish", "auto")]:
        torch.library.opcheck(torch.ops.fastblocks.dwconv_bn_act.default, args)
