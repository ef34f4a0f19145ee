"""Hypothesis fuzzing of fb.patch on random Sequential models: whatever the rules fuse, the patched
model equals the unpatched one (float64 train step, gradients, running stats, eval output), keeps
its state_dict keys, and unpatch gives back the original modules."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fastblocks as fb
from tests.helpers import check_patch_equivalence

timm = pytest.importorskip("timm")

C = 4
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


class ConvNorm(nn.Sequential):
    """The ConvNorm of RepViT / EfficientViT-M / TinyViT: a Sequential subclass keeping its forward."""


class Reversed(nn.Sequential):
    """A Sequential with its own forward (children run last to first): its order says nothing."""

    def forward(self, x):
        for module in reversed(self):
            x = module(x)
        return x


ACT_MODULES = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish, "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "leaky_relu": nn.LeakyReLU,
    "leaky_relu_0.2": lambda: nn.LeakyReLU(0.2),  # not fusable: left alone
    "sigmoid": nn.Sigmoid,  # a gate, not an activation the BN takes
}


def build(spec):
    """A module from a spec: a name, or ("seq" | "convnorm" | "reversed", [specs])."""
    if isinstance(spec, tuple):
        kind, children = spec
        cls = {"seq": nn.Sequential, "convnorm": ConvNorm, "reversed": Reversed}[kind]
        return cls(*(build(c) for c in children))
    if spec == "conv":
        return nn.Conv2d(C, C, 3, padding=1, bias=False)
    if spec == "dw":
        return nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False)
    if spec == "dw5s2":
        return nn.Conv2d(C, C, 5, stride=2, padding=2, groups=C, bias=True)
    if spec == "bn":
        return nn.BatchNorm2d(C)
    if spec == "bnact":
        return timm.layers.BatchNormAct2d(C, act_layer=nn.SiLU)
    if spec == "identity":
        return nn.Identity()
    return ACT_MODULES[spec]()


LEAF = st.sampled_from(["conv", "dw", "dw5s2", "bn", "bnact", "identity", *ACT_MODULES])
ACT = st.sampled_from(list(ACT_MODULES))
CONVS = st.sampled_from(["conv", "dw", "dw5s2"])
# a conv-norm module, or the same two children under a forward of its own (must not fuse)
CONV_NORM = st.tuples(st.sampled_from(["convnorm", "reversed"]), st.tuples(CONVS, st.just("bn")))
# Runs of children: the fusable patterns (conv-norm + act, conv + BN + act) come up often.
RUN = st.one_of(st.tuples(LEAF), st.tuples(CONV_NORM, ACT), st.tuples(CONVS, st.just("bn"), ACT))
NESTED = st.tuples(st.sampled_from(["seq", "reversed"]), st.lists(RUN, min_size=1, max_size=3).map(
    lambda runs: [item for run in runs for item in run]))
ITEMS = st.lists(st.one_of(RUN, st.tuples(NESTED)), min_size=1, max_size=5).map(
    lambda runs: [item for run in runs for item in run]).filter(lambda specs: str(specs).count("dw5s2") <= 2)
# 12x12 in, at most two stride-2 convs: a training BN sees >= 2 x 3 x 3 values per channel. (Over 2 values
# it maps its input to ~+-1 whatever it is: the gradients before it are ~0, their float32 error noise.)
INPUT = (2, C, 12, 12)
BACKENDS = [b for b in fb.available_backends() if b in ("eager", "cpu")]


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(specs=ITEMS, seed=st.integers(0, 1000))
def test_patched_random_sequential_matches_unpatched(backend, specs, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(build("conv"), *(build(s) for s in specs))  # a parameter to differentiate
    originals = [(name, type(m), m) for name, m in model.named_modules()]
    check_patch_equivalence(model, INPUT, seed=seed, backend=backend)  # patches a copy
    fb.patch(model, backend=backend)
    fb.unpatch(model)
    assert [(name, type(m), m) for name, m in model.named_modules()] == originals
