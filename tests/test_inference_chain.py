"""Chained eval forward of a Sequential of whole-block MBConv blocks: the same numbers as the
blocks' own calls, and the Sequential's own forward wherever a block call would differ."""

import copy
import pickle

import pytest
import torch
from torch import nn

import fastblocks as fb
from fastblocks.inference.blocks import BLOCK_ATTR
from fastblocks.inference.chain import CHAIN_ATTR
from tests.test_inference_fold import assert_accurate, eval_out, randomize_bn
from tests.test_inference_kernels import _timm_cl

pytestmark = pytest.mark.skipif(not fb.inference.conv_fusion.eval_kernels_available(),
                                reason="fastblocks' compiled CPU kernels are not built")


def _chains(model):
    return {name: m.__dict__[CHAIN_ATTR] for name, m in model.named_modules() if CHAIN_ATTR in m.__dict__}


def _without_chains(model):
    """A copy of ``model`` whose Sequentials run their own forward (the per-block calls)."""
    clone = copy.deepcopy(model)
    for m in clone.modules():
        m.__dict__.pop(CHAIN_ATTR, None)
    return clone


@pytest.mark.parametrize("name, where, items", [("mobilenetv3_large_100", "blocks", 16), ("efficientnet_b0", "blocks", 16),
                                                ("torchvision:efficientnet_b0", "features", 18),
                                                ("rexnet_100", "features", 17)])
def test_chain_matches_the_block_calls_bit_for_bit(name, where, items):
    model, ref = _timm_cl(name)
    chains = _chains(model)
    assert list(chains) == [where] and len(chains[where].items) == items
    for x in (torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last), torch.randn(1, 3, 64, 64)):
        assert torch.equal(eval_out(model, x), eval_out(_without_chains(model), x))
    assert_accurate(model, ref, x)  # NCHW input: the stem's output is channels_last, the blocks chain after it


def test_chain_steps_aside_for_a_replaced_block_hooks_and_training():
    model, ref = _timm_cl("mobilenetv2_100")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    chain = _chains(model)["blocks"]
    for m in (model, ref):  # a block replaced inside a stage
        m.blocks[2][1] = nn.Identity()
    assert not chain._unchanged()
    assert_accurate(model, ref, x)
    seen = []
    handle = model.blocks[3].register_forward_hook(lambda m, i, o: seen.append(o.shape))  # an inner Sequential
    assert_accurate(model, ref, x)
    assert len(seen) == 1
    handle.remove()
    model.train()
    assert chain(x) is None  # training mode: the Sequential's own forward (the training fusions) runs


def test_chain_block_needing_a_gradient_runs_its_own_call():
    model, ref = _timm_cl("efficientnet_b0")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    model.requires_grad_(False), ref.requires_grad_(False)
    model.blocks[4][0].conv_pwl.weight.requires_grad_(True)
    ref.blocks[4][0].conv_pwl.weight.requires_grad_(True)
    model(x).square().sum().backward()
    ref(x).square().sum().backward()
    g, gr = model.blocks[4][0].conv_pwl.weight.grad, ref.blocks[4][0].conv_pwl.weight.grad
    assert g is not None and torch.allclose(g, gr, rtol=1e-4, atol=1e-6)


def test_chain_survives_copies_and_goes_on_unpatch():
    model, _ = _timm_cl("mobilenetv3_large_100")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = eval_out(model, x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        chain = _chains(clone)["blocks"]
        assert all(p is m.__dict__.get(BLOCK_ATTR) for m, p in zip(chain.items, chain.plans))
        assert torch.equal(eval_out(clone, x), y)
    fb.unpatch(model)
    assert type(model.blocks) is nn.Sequential and not _chains(model)


def test_sequential_without_two_blocks_gets_no_chain():
    seq = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())).eval()
    fb.patch(seq)
    assert not _chains(seq)
