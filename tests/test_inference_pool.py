"""Global average pools of a patched model: the C++ channel pool they call (``channel_pool``)
against float64 means, and the pool module's own forward wherever the kernel does not serve."""

import copy
import pickle

import pytest
import torch

import fastblocks as fb
from fastblocks.inference.pool import POOL_ATTR
from tests.helpers import rel_err
from tests.test_inference_fold import assert_accurate
from tests.test_inference_kernels import _timm_cl

pytestmark = pytest.mark.skipif(not fb.inference.conv_fusion.eval_kernels_available(),
                                reason="fastblocks' compiled CPU kernels are not built")
K = torch.ops.fastblocks_kernels


# (N, C, H, W): channel counts off the vector width, a 1280-channel head map, maps of several
# row blocks, a 1x1 map
@pytest.mark.parametrize("shape", [(1, 1280, 7, 7), (3, 72, 5, 9), (2, 37, 23, 19), (4, 20, 1, 1), (1, 8, 90, 90)])
def test_channel_pool_matches_the_mean_and_any_thread_count(shape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g).add_(2.0).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(K.channel_pool(x))
    finally:
        torch.set_num_threads(before)
    assert outs[0].shape == shape[:2] and outs[0].is_contiguous()
    assert rel_err(outs[0], x.double().mean((2, 3))) <= 1e-6
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("name", ["mobilenetv2_100", "mobilenetv3_large_100", "torchvision:efficientnet_b0"])
def test_patched_models_pool_on_the_eval_kernel(name):
    model, ref = _timm_cl(name)
    pools = [m for m in model.modules() if POOL_ATTR in m.__dict__]
    assert len(pools) == 1  # the model's pool, not the AdaptiveAvgPool2d inside timm's
    calls = []
    real = K.channel_pool
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    try:
        torch.ops.fastblocks_kernels.channel_pool = lambda t: calls.append(t.shape) or real(t)
        assert_accurate(model, ref, x)
    finally:
        torch.ops.fastblocks_kernels.channel_pool = real
    assert calls  # the eval forward took the kernel
    fb.unpatch(model)
    assert all(POOL_ATTR not in m.__dict__ for m in model.modules())
    assert type(pools[0]).__name__ in ("SelectAdaptivePool2d", "AdaptiveAvgPool2d")


def test_pool_report_line_and_models_with_nothing_else_to_fuse():
    model = pytest.importorskip("timm").create_model("mobilenetv2_100", num_classes=10)
    assert "1 global average pool on the eval kernel" in str(fb.patch(model))
    assert POOL_ATTR in model.global_pool.__dict__
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    fb.patch(plain)  # nothing fused or folded: the model stays as it is, its pool too
    assert type(plain[2]) is torch.nn.AdaptiveAvgPool2d


def test_pool_steps_aside_for_gradients_hooks_nchw_and_keeps_pickles_working():
    model, ref = _timm_cl("mobilenetv2_100")
    pool, ref_pool = model.global_pool, ref.global_pool
    x = torch.randn(2, 320, 5, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert rel_err(pool(x), ref_pool(x)) <= 1e-6
        assert rel_err(pool(x.contiguous()), ref_pool(x.contiguous())) == 0.0  # NCHW: the module's own
    xg = x.clone().requires_grad_()
    pool(xg).sum().backward()  # a gradient needed: PyTorch's pool, differentiable
    assert torch.allclose(xg.grad, torch.full_like(x, 1 / 25))
    seen = []
    handle = pool.pool.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        pool(x)
    handle.remove()
    assert seen == [torch.Size([2, 320, 1, 1])]  # the inner module's hook ran: its own forward
    clone = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        assert torch.equal(clone.global_pool(x), pool(x)) and torch.equal(copy.deepcopy(pool)(x), pool(x))

