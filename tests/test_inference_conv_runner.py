"""The C++ runner of a folded conv (``fastblocks._C.ConvEvalRunner``): the eval kernel's output
while its checks pass, None wherever the Python path must decide."""

import pytest
import torch

import fastblocks as fb
from fastblocks.inference.modules import FOLD_ATTR
from tests.helpers import rel_err
from tests.test_inference_fold import assert_accurate
from tests.test_inference_kernels import _timm_cl

pytestmark = pytest.mark.skipif(not fb.inference.conv_fusion.eval_kernels_available(),
                                reason="fastblocks' compiled CPU kernels are not built")


def test_folded_conv_runner_returns_none_wherever_the_python_path_must_decide():
    # the C++ runner of a folded conv (mobilenetv3's ConvBnAct 1x1: pointwise; its stem: direct):
    # the kernel's output while the sources are unchanged and the modules in eval mode; None for
    # input it does not take, a gradient needed, training mode or any source changed, after which
    # the conv's next call rebuilds the folded weights and the runner
    model, ref = _timm_cl("mobilenetv3_large_100")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    assert_accurate(model, ref, x)
    block, ref_block = model.blocks[6][0], ref.blocks[6][0]
    fold = block.conv.__dict__[FOLD_ATTR]
    xi = torch.randn(1, 160, 3, 3).contiguous(memory_format=torch.channels_last)
    stem = model.conv_stem.__dict__[FOLD_ATTR]
    with torch.no_grad():
        assert rel_err(stem._cpp(x), ref.bn1(ref.conv_stem(x))) <= 1e-5
        assert stem._cpp(x.contiguous()) is not None  # the direct kernel reads any layout
        runner = fold._cpp
        assert rel_err(runner(xi), ref_block(xi)) <= 1e-5
        assert runner(xi.contiguous()) is None and runner(xi.double()) is None and runner(xi[0]) is None
    assert runner(xi) is None  # grad mode on and the parameters require grad
    block.train()
    with torch.no_grad():
        assert runner(xi) is None
    block.eval()
    changes = [
        lambda m: m.conv.weight.mul_(2.0),
        lambda m: m.bn1.running_var.mul_(3.0),
        lambda m: setattr(m.bn1, "eps", 1e-2),
        lambda m: setattr(m.conv, "weight", torch.nn.Parameter(m.conv.weight.detach())),  # same storage
    ]
    for change in changes:
        with torch.no_grad():
            block(xi)
            runner = fold._cpp
            change(block)
            change(ref_block)
            assert runner(xi) is None
            assert rel_err(block(xi), ref_block(xi)) <= 1e-5
            block(xi)
            assert fold._cpp is not runner and fold._cpp(xi) is not None
