"""Eval-mode inference of patched models: BatchNorm folded into the conv before it (a cache of the
model's own tensors), activation and residual add fused into the conv."""

import copy
import pickle

import pytest
import torch
from torch import nn

import fastblocks as fb
from fastblocks.inference import fold_batchnorm
from fastblocks.inference.blocks import BLOCK_ATTR
from fastblocks.inference.modules import FOLD_ATTR
from tests.helpers import rel_err

# conv kind -> (in channels, out channels, kernel, groups, stride)
CONVS = {
    "dense3x3": (6, 10, 3, 1, 1),
    "pointwise": (12, 7, 1, 1, 1),
    "grouped": (8, 12, 3, 4, 2),
    "depthwise": (9, 9, 3, 9, 2),
    "depthwise_k5": (6, 6, 5, 6, 1),
}


def randomize_bn(model: nn.Module) -> nn.Module:
    """Random running statistics and affine parameters (fresh BNs fold to the identity)."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.weight is not None:
                with torch.no_grad():
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model


def conv_bn(kind: str, bias: bool = False, affine: bool = True, act: nn.Module = None,
            track_running_stats: bool = True) -> nn.Sequential:
    cin, cout, k, groups, stride = CONVS[kind]
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias),
              nn.BatchNorm2d(cout, affine=affine, track_running_stats=track_running_stats)]
    layers += [act] if act is not None else []
    return randomize_bn(nn.Sequential(*layers)).eval()


def patched_pair(model: nn.Module):
    """(patched model, unpatched copy holding the same values, report)."""
    ref = copy.deepcopy(model)
    report = fb.patch(model)
    return model, ref, report


def eval_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def assert_accurate(patched: nn.Module, ref: nn.Module, x: torch.Tensor) -> None:
    """float32 eval output no further from the float64 unpatched model than 4x the float32
    unpatched model's own error (and never beyond the float32 forward tolerance)."""
    exact = eval_out(copy.deepcopy(ref).double(), x.double())
    own = rel_err(eval_out(ref, x), exact)
    err = rel_err(eval_out(patched, x), exact)
    assert err <= max(4 * own, 1e-7) and err <= 1e-5, f"patched {err:.2e} vs unpatched float32 {own:.2e}"


def input_grads(models, x: torch.Tensor) -> list:
    """d sum(model(x)^2) / dx for each model, its parameters frozen."""
    grads = []
    for m in models:
        m.requires_grad_(False)
        xg = x.clone().requires_grad_(True)
        m(xg).square().sum().backward()
        grads.append(xg.grad)
    return grads


def _is_folded(model: nn.Module) -> bool:
    """Whether the last eval forward ran folded (a fold cache or a depthwise eval plan is built)."""
    folds = [m.__dict__[FOLD_ATTR] for m in model.modules() if FOLD_ATTR in m.__dict__]
    plans = [m.__dict__.get("_eval_plan") for m in model.modules() if isinstance(m, fb.nn.DWConvBNAct)]
    return any(f._runner is not None for f in folds) or any(plans)


@pytest.mark.parametrize("kind", list(CONVS))
@pytest.mark.parametrize("bias, affine, act", [(False, True, None), (True, False, "relu"), (False, True, "silu"),
                                               (True, True, "silu")])
def test_fold_matches_unpatched(kind, bias, affine, act):
    act_module = {None: None, "relu": nn.ReLU(), "silu": nn.SiLU()}[act]
    model, ref, report = patched_pair(conv_bn(kind, bias, affine, act_module))
    assert len(report.folded) + sum(r.replacement == "DWConvBNAct" for r in report.replaced) == 1, str(report)
    x = torch.randn(2, CONVS[kind][0], 11, 9)
    assert_accurate(model, ref, x)
    assert _is_folded(model)
    x64 = x.double()
    out = eval_out(copy.deepcopy(model).double(), x64)
    assert rel_err(out, eval_out(copy.deepcopy(ref).double(), x64)) <= 1e-10


def test_fold_batchnorm_formula():
    conv = nn.Conv2d(4, 5, 3, bias=True).double()
    bn = randomize_bn(nn.BatchNorm2d(5).double()).eval()
    w, b = fold_batchnorm(conv.weight, conv.bias, bn)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(nn.functional.conv2d(x, w, b), bn(conv(x))) <= 1e-12
    assert not w.requires_grad and not b.requires_grad
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(conv.weight, None, nn.BatchNorm2d(5, track_running_stats=False))


def test_bn_without_running_stats_is_reported_not_folded():
    model, ref, report = patched_pair(conv_bn("pointwise", track_running_stats=False))
    assert report.folded == [] and len(report.unfolded) == 1
    assert "track_running_stats=False" in report.unfolded[0].reason and "not foldable" in str(report)
    x = torch.randn(3, 12, 5, 5)
    assert rel_err(eval_out(model, x), eval_out(ref, x)) <= 1e-6


def _block(act=nn.SiLU) -> nn.Sequential:
    """dense conv -> BN -> act, depthwise conv -> BN -> act, 1x1 conv -> BN (lone)."""
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), act(),
        nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), act(),
        nn.Conv2d(8, 5, 1, bias=False), nn.BatchNorm2d(5))).eval()


def test_cache_rebuilt_after_optimizer_step_in_eval():
    model, ref, _ = patched_pair(_block())
    x = torch.randn(2, 3, 12, 12)
    eval_out(model, x)  # cache built
    for m in (model, ref):  # one step with grads enabled in eval mode (the unfolded path)
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        m(x).square().mean().backward()
        opt.step()
    assert rel_err(eval_out(model, x), eval_out(ref, x)) <= 1e-6


def test_cache_rebuilt_after_train_eval_switch():
    model, ref, _ = patched_pair(_block())
    x = torch.randn(4, 3, 12, 12)
    eval_out(model, x)
    for m in (model, ref):
        m.train()
        m(x)  # updates the running statistics
        m.eval()
    assert rel_err(eval_out(model, x), eval_out(ref, x)) <= 1e-6


def test_cache_rebuilt_after_load_state_dict():
    model, ref, _ = patched_pair(_block())
    x = torch.randn(2, 3, 12, 12)
    eval_out(model, x)
    other = randomize_bn(_block())
    for p in other.parameters():
        p.data.normal_()
    for m in (model, ref):
        m.load_state_dict(other.state_dict())
    assert rel_err(eval_out(model, x), eval_out(other, x)) <= 1e-6


def test_cache_follows_dtype_and_memory_format():
    model, ref, _ = patched_pair(_block())
    x = torch.randn(2, 3, 12, 12)
    eval_out(model, x)
    model.double(), ref.double()
    assert rel_err(eval_out(model, x.double()), eval_out(ref, x.double())) <= 1e-10
    model.float(), ref.float()
    model.to(memory_format=torch.channels_last)
    ref.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    assert rel_err(eval_out(model, xc), eval_out(ref, xc)) <= 1e-6


def test_state_dict_unchanged_and_unpatch_drops_the_cache():
    model = _block()
    before = model.state_dict()
    classes = [type(m) for m in model.modules()]
    fb.patch(model)
    eval_out(model, torch.randn(1, 3, 12, 12))
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[k] is before[k] or after[k].data_ptr() == before[k].data_ptr() for k in before)
    fb.unpatch(model)
    assert [type(m) for m in model.modules()] == classes
    assert not any(FOLD_ATTR in m.__dict__ or "_eval_plan" in m.__dict__ for m in model.modules())


def test_eval_gradients_exact():
    """With grad enabled in eval: parameter gradients come from the original modules; with frozen
    parameters the folded conv runs and input gradients flow through it."""
    model, ref, _ = patched_pair(_block())
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    xr = x.detach().clone().requires_grad_(True)
    model(x).sum().backward()
    ref(xr).sum().backward()
    assert rel_err(x.grad, xr.grad) <= 1e-5
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-5, name
    model.requires_grad_(False)
    ref.requires_grad_(False)
    x.grad = xr.grad = None
    model(x).sum().backward()
    assert _is_folded(model)
    ref(xr).sum().backward()
    assert rel_err(x.grad, xr.grad) <= 1e-5


def test_copies_of_a_folded_model_drop_the_cache():
    model, ref, _ = patched_pair(_block())
    x = torch.randn(2, 3, 12, 12)
    eval_out(model, x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        folds = [m.__dict__[FOLD_ATTR] for m in clone.modules() if FOLD_ATTR in m.__dict__]
        assert folds and all(f._runner is None and f.conv in list(clone.modules()) for f in folds)
        assert rel_err(eval_out(clone, x), eval_out(ref, x)) <= 1e-6


# model -> (conv + BN pairs folded outside the depthwise convs, MBConv blocks with a whole-block eval forward)
TIMM_MODELS = {"efficientnet_b0": (33, 16), "mobilenetv2_100": (35, 17)}


@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_timm_model_eval(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)  # relu6 kinks: an input whose pre-activation sits within rounding of 0 or 6 flips a gradient
    model = randomize_bn(timm.create_model(name, num_classes=10)).eval()
    model, ref, report = patched_pair(model)
    blocks = sum(BLOCK_ATTR in m.__dict__ for m in model.modules())
    assert (len(report.folded), blocks) == TIMM_MODELS[name] and report.unfolded == [], str(report)
    x = torch.randn(1, 3, 48, 48)
    assert_accurate(model, ref, x)
    assert _is_folded(model)
    x64 = x.double()
    assert rel_err(eval_out(copy.deepcopy(model).double(), x64), eval_out(copy.deepcopy(ref).double(), x64)) <= 1e-10
    # frozen parameters, input gradient: the block forwards run folded and stay differentiable in x
    assert rel_err(*input_grads((model, ref), x)) <= 1e-5


def test_conv_without_batchnorm_takes_the_eval_path():
    """MobileNetV3's conv_head (1x1, bias, an Identity where a BN would be): the conv alone runs
    fastblocks' kernel at eval, follows its weights, and steps aside in training and on unpatch."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("mobilenetv3_small_050", num_classes=10)).eval()
    classes = [type(m) for m in model.modules()]
    model, ref, report = patched_pair(model)
    alone = [r for r in report.folded if r.path == "conv_head"]
    assert len(alone) == 1 and alone[0].replacement == "eval conv kernel", str(report)
    fold = model.conv_head.__dict__[FOLD_ATTR]
    for batch, fmt in ((1, torch.contiguous_format), (3, torch.channels_last), (3, torch.contiguous_format)):
        x = torch.randn(batch, 3, 48, 48).contiguous(memory_format=fmt)
        assert_accurate(model, ref, x)
    assert fold._runner is not None
    with torch.no_grad():  # an in-place update: the next eval forward uses the new weights
        for m in (model, ref):
            m.conv_head.weight.mul_(1.5)
            m.conv_head.bias.add_(0.25)
    x = torch.randn(2, 3, 48, 48)
    assert_accurate(model, ref, x)
    model.train(), ref.train()
    assert fold._runner is None
    assert rel_err(model(x), ref(x)) <= 1e-5
    fb.unpatch(model.eval())
    assert [type(m) for m in model.modules()] == classes and FOLD_ATTR not in model.conv_head.__dict__
