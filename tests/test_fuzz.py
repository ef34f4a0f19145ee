"""Hypothesis shape fuzzing of dwconv_bn_act and squeeze_excite against the reference (bounded)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastblocks as fb
from fastblocks._validate import conv_out_size, conv_pads, padding_spec
from tests.helpers import ACTS, compare_with_reference, rand_positive, randn

BACKENDS = [b for b in fb.available_backends() if b in ("eager", "cpu")]
# derandomize: CI runs the same examples every time (a failure is reproducible, never flaky).
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(n=st.integers(1, 3), c=st.integers(1, 9), h=st.integers(3, 12), w=st.integers(3, 12),
       k=st.sampled_from([3, 5, 7]), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from(["same", "tf_same", 0, 1, 3]), training=st.booleans(),
       act=st.sampled_from(ACTS),
       channels_last=st.booleans(), seed=st.integers(0, 10_000))
def test_dwconv_bn_act_fuzz(backend, n, c, h, w, k, stride, padding, training, act, channels_last, seed):
    mode, pad = padding_spec(padding)
    top, bottom, left, right = conv_pads(mode, pad, k, stride, 1, h, w)
    ho, wo = conv_out_size(h, top, bottom, k, stride, 1), conv_out_size(w, left, right, k, stride, 1)
    if ho < 1 or wo < 1 or (training and n * ho * wo < 4):
        # Empty output: a bad-input test. Training BN over < 4 values per channel normalises them to
        # ~+-1 whatever the input, so the gradients are ~0 and their float32 relative error is noise.
        return
    x = randn(n, c, h, w, seed=seed)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    inputs = dict(x=x, weight=randn(c, 1, k, k, seed=seed + 1), bn_weight=rand_positive(c, seed=seed + 2),
                  bn_bias=randn(c, seed=seed + 3), running_mean=randn(c, seed=seed + 4),
                  running_var=rand_positive(c, seed=seed + 5), stride=stride, padding=padding,
                  training=training, act=act)
    call = lambda x, weight, bn_weight, bn_bias, running_mean, running_var, **kw: fb.ops.dwconv_bn_act(  # noqa
        x, weight, bn_weight, bn_bias, running_mean, running_var, **kw)
    compare_with_reference(call, inputs, torch.float32, backend, seed=seed)


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
# r >= 2 and H*W >= 4: with one hidden unit and a 1-pixel map, some gradients are ~0 and float32
# noise alone exceeds 1e-4 (eager and reference alike).
@given(n=st.integers(1, 4), c=st.integers(1, 24), r=st.integers(2, 8), h=st.integers(2, 9),
       w=st.integers(2, 9), gate=st.sampled_from(["sigmoid", "hard_sigmoid"]), seed=st.integers(0, 10_000))
def test_squeeze_excite_fuzz(backend, n, c, r, h, w, gate, seed):
    inputs = dict(x=randn(n, c, h, w, seed=seed), reduce_weight=randn(r, c, seed=seed + 1),
                  reduce_bias=randn(r, seed=seed + 2), expand_weight=randn(c, r, seed=seed + 3),
                  expand_bias=randn(c, seed=seed + 4), gate=gate)
    call = lambda x, reduce_weight, reduce_bias, expand_weight, expand_bias, **kw: fb.ops.squeeze_excite(  # noqa
        x, reduce_weight, reduce_bias, expand_weight, expand_bias, **kw)
    compare_with_reference(call, inputs, torch.float32, backend, seed=seed)
