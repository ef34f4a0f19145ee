"""fastblocks.nn.MixedDWConvBNAct (MixNet's mixed depthwise conv + BN + act) against the plain
composition it replaces: split -> one depthwise conv per group -> concat -> BatchNorm -> act."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks as fb
from fastblocks.nn import AbsorbedBatchNorm2d, DWConvBNAct, MixedDWConvBNAct
from tests.helpers import rel_err


class MixedReference(nn.Module):
    """What timm's MixedConv2d + BatchNorm2d + act compute (channel groups of their own kernel size)."""

    def __init__(self, splits, kernels, stride):
        super().__init__()
        self.splits = splits
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
                                   for c, k in zip(splits, kernels))
        self.bn = nn.BatchNorm2d(sum(splits))

    def forward(self, x):
        parts = torch.split(x, self.splits, 1)
        return F.silu(self.bn(torch.cat([conv(p) for conv, p in zip(self.convs, parts)], 1)))


def fused_from(ref: MixedReference, backend=None) -> tuple[MixedDWConvBNAct, AbsorbedBatchNorm2d]:
    holder = AbsorbedBatchNorm2d.from_batchnorm(ref.bn)
    groups = [DWConvBNAct(c.weight, None, holder, c.stride[0], c.padding[0], "silu", backend=backend)
              for c in ref.convs]
    return MixedDWConvBNAct(groups, holder), holder


def _step(module, x, dy):
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(dy)
    return y, x.grad


@pytest.mark.parametrize("backend", ["eager", "cpu"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_matches_split_conv_cat_bn_act(backend, channels_last, stride):
    if backend not in fb.available_backends():
        pytest.skip(f"backend {backend} is not available")
    torch.manual_seed(0)
    dtype = torch.float64 if backend == "eager" else torch.float32
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    ref = MixedReference([6, 5, 5], [3, 5, 7], stride).to(dtype)
    with torch.no_grad():
        ref.bn.weight.uniform_(0.5, 1.5)
        ref.bn.bias.uniform_(-0.5, 0.5)
    fused_ref = MixedReference([6, 5, 5], [3, 5, 7], stride).to(dtype)
    fused_ref.load_state_dict(ref.state_dict())
    fused, holder = fused_from(fused_ref, backend)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 16, 9, 11, dtype=dtype).contiguous(memory_format=fmt)
    for training in (True, False):
        ref.train(training)
        fused.train(training)
        holder.train(training)
        dy = torch.randn(2, 16, (9 - 1) // stride + 1, (11 - 1) // stride + 1, dtype=dtype)
        y_ref, dx_ref = _step(ref, x, dy)
        y, dx = _step(fused, x, dy)
        assert y.is_contiguous(memory_format=fmt), "the output keeps x's layout"
        assert rel_err(y, y_ref) <= tol and rel_err(dx, dx_ref) <= tol
    for conv, group in zip(ref.convs, fused.children()):
        assert rel_err(group.weight.grad, conv.weight.grad) <= tol
    for name in ("weight", "bias"):
        assert rel_err(getattr(holder, name).grad, getattr(ref.bn, name).grad) <= tol
    for name in ("running_mean", "running_var"):
        assert rel_err(getattr(holder, name), getattr(ref.bn, name)) <= tol
    assert int(holder.num_batches_tracked) == int(ref.bn.num_batches_tracked) == 1  # counted once, not per group


def test_momentum_none_counts_once_per_forward():
    """momentum=None (cumulative average) divides by num_batches_tracked: one count per forward."""
    torch.manual_seed(0)
    ref = MixedReference([4, 4], [3, 5], 1).double()
    ref.bn.momentum = None
    fused_ref = MixedReference([4, 4], [3, 5], 1).double()
    fused_ref.load_state_dict(ref.state_dict())
    fused_ref.bn.momentum = None
    fused, holder = fused_from(fused_ref, "eager")
    for _ in range(3):
        x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
        ref(x)
        fused(x)
    assert int(holder.num_batches_tracked) == 3
    assert rel_err(holder.running_mean, ref.bn.running_mean) <= 1e-12
    assert rel_err(holder.running_var, ref.bn.running_var) <= 1e-12


def test_bad_groups_and_inputs_raise_clear_errors():
    bn = nn.BatchNorm2d(8)
    holder = AbsorbedBatchNorm2d.from_batchnorm(bn)
    g = lambda c, s=1: DWConvBNAct(nn.Parameter(torch.randn(c, 1, 3, 3)), None, holder, s, 1, "relu")  # noqa: E731
    with pytest.raises(ValueError, match="at least one"):
        MixedDWConvBNAct([], holder)
    with pytest.raises(ValueError, match="one stride"):
        MixedDWConvBNAct([g(4, 1), g(4, 2)], holder)
    with pytest.raises(ValueError, match="num_features 8"):
        MixedDWConvBNAct([g(4), g(3)], holder)
    fused = MixedDWConvBNAct([g(4), g(4)], holder)
    with pytest.raises(ValueError, match=r"shape \(N, 8, H, W\)"):
        fused(torch.randn(2, 6, 5, 5))
    assert list(fused.state_dict()) == ["0.weight", "1.weight"]  # the BN stays at its own place


def test_group_inputs_are_recomputed_from_the_block_input_under_recompute():
    """In a patched model (recompute scope), the dense per-group copies of x are not kept: what
    the groups save is x once - here x is itself a fused BN + ReLU output, recomputed from its
    input - and backward gives the same gradients as without the scope."""
    from fastblocks._recompute import recompute_scope
    from fastblocks.nn import BatchNormAct2d
    from fastblocks.utils import saved_tensor_bytes

    torch.manual_seed(0)
    ref = MixedReference([6, 5, 5], [3, 5, 7], 1).double()
    fused, _ = fused_from(ref, "eager")
    model = nn.Sequential(BatchNormAct2d(16, act="relu", backend="eager"), fused).double().train()
    z = torch.randn(2, 16, 9, 11, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    def scoped_forward():
        with recompute_scope():
            return model(z)

    plain, scoped = saved_tensor_bytes(lambda: model(z)), saved_tensor_bytes(scoped_forward)
    activation = z.numel() * z.element_size()
    # without the scope: z (BN input), x (BN output, kept by the group slices); with it: z only
    assert plain >= 2 * activation and scoped < 1.2 * activation, (plain, scoped, activation)
    grads = []
    for scope in (False, True):
        z.grad = None
        model.zero_grad()
        with recompute_scope() if scope else torch.enable_grad():
            model(z).backward(dy)
        grads.append([z.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert rel_err(b, a) <= 1e-12
