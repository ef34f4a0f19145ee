import copy

import pytest
import torch
from torch import nn

import fastblocks as fb

timm = pytest.importorskip("timm")
tv = pytest.importorskip("torchvision")


def small_model():
    torch.manual_seed(0)
    return timm.create_model("mobilenetv3_large_100", num_classes=5)


def test_report_is_data_and_a_table():
    model = small_model()
    report = fb.patch(model)
    assert isinstance(report, fb.PatchReport)
    assert report.replaced and all(r.path and r.replacement for r in report.replaced)
    assert all(s.reason for s in report.skipped)
    text = str(report)
    assert "DWConvBNAct" in text and "skipped" in text and "totals" in text


def test_idempotent():
    model = small_model()
    first = fb.patch(model)
    modules = dict(model.named_modules())
    second = fb.patch(model)
    assert len(second.replaced) == 0 and second.already_patched and len(first.replaced) > 0
    assert dict(model.named_modules()).keys() == modules.keys()
    assert all(modules[k] is m for k, m in model.named_modules())


def test_unpatch_restores_exact_objects_and_current_tensors():
    model = small_model()
    before = dict(model.named_modules())
    params = dict(model.named_parameters())
    fb.patch(model)
    with torch.no_grad():  # training while patched must survive unpatch
        for p in model.parameters():
            p.add_(1.0)
    fb.unpatch(model)
    after = dict(model.named_modules())
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    assert all(p is params[n] for n, p in model.named_parameters())
    assert type(model.blocks[1][0].conv_dw) is nn.Conv2d


def test_unpatch_after_moving_dtype_keeps_buffers():
    model = small_model()
    fb.patch(model)
    model.double()
    model.train()
    model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    patched_state = {k: v.clone() for k, v in model.state_dict().items()}
    fb.unpatch(model)
    for k, v in model.state_dict().items():
        assert v.dtype == patched_state[k].dtype and torch.equal(v, patched_state[k]), k


def test_state_dict_round_trip_strict():
    plain = small_model()
    patched = copy.deepcopy(plain)
    fb.patch(patched)
    patched.load_state_dict(plain.state_dict(), strict=True)
    plain.load_state_dict(patched.state_dict(), strict=True)
    assert plain.state_dict().keys() == patched.state_dict().keys()


def test_keeps_training_flag_and_dtype():
    model = small_model().eval().to(torch.float64)
    fb.patch(model)
    assert not any(m.training for m in model.modules())
    out = model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.parametrize("name", ["vgg11", "squeezenet1_0"])
def test_models_without_fusable_blocks_unchanged(name):
    torch.manual_seed(0)
    model = getattr(tv.models, name)(num_classes=3)
    before = [(n, type(m)) for n, m in model.named_modules()]
    report = fb.patch(model)
    assert report.replaced == []
    assert [(n, type(m)) for n, m in model.named_modules()] == before
    assert "nothing to fuse" in str(report)


def test_hooks_subclasses_and_unusual_convs_are_skipped_with_reasons():
    class MyBN(nn.BatchNorm2d):
        pass

    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.SiLU(),        # fused
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False), nn.BatchNorm2d(4), nn.ReLU(),  # dilation
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), MyBN(4), nn.ReLU(),                    # subclass
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.ReLU(),          # hooked BN
    )
    model[10].register_forward_hook(lambda *a: None)
    report = fb.patch(model)
    reasons = " | ".join(s.reason for s in report.skipped)
    assert [r.path for r in report.replaced if r.replacement == "DWConvBNAct"] == ["0"]
    assert "dilation" in reasons and "not a plain BatchNorm2d" in reasons and "hooks" in reasons
    assert type(model[10]) is nn.BatchNorm2d


def test_leaky_relu_is_fused_at_its_default_slope_only():
    from timm.layers import BatchNormAct2d as TimmBNAct

    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.LeakyReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.LeakyReLU(0.2),
        nn.Conv2d(4, 4, 1), TimmBNAct(4, act_layer=nn.LeakyReLU),
        nn.Conv2d(4, 4, 1), TimmBNAct(4, act_layer=nn.LeakyReLU, act_kwargs=dict(negative_slope=0.1)),
    )
    x = torch.randn(2, 4, 6, 5)
    expected = model(x)
    report = fb.patch(model)
    assert model[0].act == "leaky_relu" and isinstance(model[2], nn.Identity)
    # another slope: the conv + BN are fused without it, the LeakyReLU module stays and runs
    assert model[3].act == "identity" and type(model[5]) is nn.LeakyReLU
    assert isinstance(model[7], fb.nn.BatchNormAct2d) and model[7].act == "leaky_relu"
    assert type(model[9]) is TimmBNAct
    reasons = [s.reason for s in report.skipped if s.path == "9"]
    assert reasons == ["BatchNormAct2d with an unsupported activation (LeakyReLU(negative_slope=0.1): the kernels "
                       "fuse slope 0.01 only)"]
    torch.testing.assert_close(model(x), expected)


def test_gelu_is_fused_by_its_approximation():
    from timm.layers import BatchNormAct2d as TimmBNAct
    from timm.layers.activations import GELUTanh, QuickGELU

    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.GELU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.GELU(approximate="tanh"),
        nn.Conv2d(4, 4, 1), TimmBNAct(4, act_layer=GELUTanh),
        nn.Conv2d(4, 4, 1), TimmBNAct(4, act_layer=QuickGELU),  # x * sigmoid(1.702 x): no kernel has it
        nn.GELU(),  # standalone: eager GELU already saves x only, nothing to gain
    ).double()
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    expected = model(x)
    report = fb.patch(model)
    assert model[0].act == "gelu" and model[3].act == "gelu_tanh"
    assert isinstance(model[2], nn.Identity) and isinstance(model[5], nn.Identity)
    assert isinstance(model[7], fb.nn.BatchNormAct2d) and model[7].act == "gelu_tanh"
    assert type(model[9]) is TimmBNAct and [s.path for s in report.skipped] == ["9"]
    assert "QuickGELU" in report.skipped[0].reason
    assert type(model[10]) is nn.GELU
    torch.testing.assert_close(model(x), expected)


def test_sequential_subclasses_fuse_only_when_they_keep_sequential_forward():
    class ConvNorm(nn.Sequential):  # RepViT / EfficientViT-M style: forward inherited, plus a fuse()
        def fuse(self):
            conv, bn = self._modules.values()
            scale = bn.weight / (bn.running_var + bn.eps).sqrt()
            fused = nn.Conv2d(4, 4, 3, padding=1, groups=4, dtype=conv.weight.dtype)
            fused.weight.data.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.data.copy_(bn.bias - bn.running_mean * scale)
            return fused

    class Reordered(nn.Sequential):  # own forward: the children's order says nothing
        def forward(self, x):
            return self[0](self[2](self[1](x)))

    def conv_bn():
        return nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4)

    torch.manual_seed(0)
    model = nn.Sequential(ConvNorm(*conv_bn()), Reordered(*conv_bn(), nn.SiLU())).double()
    model.train()(torch.randn(2, 4, 6, 6, dtype=torch.float64))
    model.eval()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    expected = model(x)
    report = fb.patch(model, backend="eager")
    assert [r.path for r in report.replaced if r.replacement == "DWConvBNAct"] == ["0.0"], report
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    # fuse() reads the original conv and BN: the patched block puts them back first
    model[0] = model[0].fuse()
    assert type(model[0]) is nn.Conv2d
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    fb.unpatch(model)
    assert not any(type(m).__module__.startswith("fastblocks") for m in model.modules())
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


def test_conv_norm_module_followed_by_an_act_fuses_one_level_down():
    """Sequential(ConvNorm(conv, bn), act, ...): the EfficientViT-M / SHViT / LeViT-stem layout. The
    BN inside each ConvNorm takes the act that follows it (the act becomes an Identity); a depthwise
    ConvNorm becomes DWConvBNAct with it; ConvNorm.fuse() (re-parameterisation) puts the act back."""
    from tests.helpers import check_patch_equivalence

    class ConvNorm(nn.Sequential):
        def fuse(self):
            conv, bn = self._modules.values()
            scale = bn.weight / (bn.running_var + bn.eps).sqrt()
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                              groups=conv.groups, dtype=conv.weight.dtype)
            fused.weight.data.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.data.copy_(bn.bias - bn.running_mean * scale)
            return fused

    torch.manual_seed(0)
    model = nn.Sequential(ConvNorm(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)), nn.ReLU(),
                          ConvNorm(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4)),
                          nn.Hardswish(),
                          ConvNorm(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))).double()
    report = check_patch_equivalence(model, (2, 3, 6, 6))
    assert {r.path: r.replacement for r in report.replaced} == {"0.1": "BatchNormAct2d", "2.0": "DWConvBNAct"}, report
    assert [s.path for s in report.skipped] == ["4.1"], report  # no act after it
    model.train()(torch.randn(2, 3, 6, 6, dtype=torch.float64))
    model.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    expected = model(x)
    fb.patch(model, backend="eager")
    assert type(model[1]) is nn.Identity and type(model[3]) is nn.Identity
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    model[0], model[2] = model[0].fuse(), model[2].fuse()
    assert type(model[1]) is nn.ReLU and type(model[3]) is nn.Hardswish
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    fb.unpatch(model)
    assert not any(type(m).__module__.startswith("fastblocks") for m in model.modules())
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)

    class OwnBatchNorm(nn.BatchNorm2d):  # a subclass: not fused, reported once (both rules see it)
        pass

    report = fb.patch(nn.Sequential(ConvNorm(nn.Conv2d(3, 4, 3), OwnBatchNorm(4)), nn.ReLU()))
    assert [(s.path, s.reason) for s in report.skipped] == [
        ("0.1", "OwnBatchNorm is not a plain BatchNorm2d (subclass or custom norm)")], report


def test_torchscript_of_a_patched_model_says_what_to_do_instead():
    """torch.jit.script cannot compile the fused modules: a TypeError that names the way out, not
    TorchScript's complaint about variadic arguments. torch.jit.trace records the fused ops; an
    unpatched copy scripts as before."""
    model = small_model().eval()
    x = torch.randn(1, 3, 32, 32)
    fb.patch(model)
    expected = model(x)
    with pytest.raises(TypeError, match=r"torch.jit.script cannot compile fastblocks' .*unpatch"):
        torch.jit.script(model)
    with pytest.raises(TypeError, match="BatchNormAct2d"):
        torch.jit.script(fb.nn.BatchNormAct2d(4, act="relu"))
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), expected)
    scripted = torch.jit.script(fb.unpatch(copy.deepcopy(model)))
    torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)


def test_compiled_patched_model_matches():
    torch._dynamo.reset()
    model = small_model().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        fb.patch(model, backend="eager")
        compiled = torch.compile(model, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fb.patch("resnet")
    with pytest.raises(ValueError, match="backend must be one of"):
        fb.patch(nn.Sequential(), backend="fastest")
    with pytest.raises(TypeError, match="fuse_lone_bn must be a bool, got str"):
        fb.patch(nn.Sequential(), fuse_lone_bn="yes")
    with pytest.raises(ValueError, match="recompute must be one of"):
        fb.patch(nn.Sequential(), recompute="all")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got NoneType"):
        fb.unpatch(None)


@pytest.mark.parametrize("momentum", [None, 0.3])
@pytest.mark.parametrize("track", [True, False])
def test_batchnorm_momentum_none_and_num_batches_tracked(momentum, track):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
                          nn.BatchNorm2d(6, momentum=momentum, track_running_stats=track), nn.SiLU(),
                          nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6, momentum=momentum, track_running_stats=track),
                          nn.ReLU6()).double()
    patched = copy.deepcopy(model)
    report = fb.patch(patched, backend="eager")
    assert report.counts() == {"DWConvBNAct": 1, "BatchNormAct2d": 1}
    for step in range(3):
        x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
        for m in (model, patched):
            m.train()
            m(x).sum().backward()
    for (n, a), (_, b) in zip(model.state_dict().items(), patched.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=n)
    for a, b in zip(model.parameters(), patched.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-8, atol=1e-10)
    model.eval()
    patched.eval()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(patched(x), model(x), rtol=1e-10, atol=1e-12)
