"""torch.export of a patched model: the fused ops appear as ``fastblocks::*`` nodes (no graph
break, no fallback to the unfused modules), the exported program computes what the patched model
does (training mode included: running statistics are updated as buffer mutations), and it survives
``run_decompositions`` and a save / load round trip."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import fastblocks as fb

timm = pytest.importorskip("timm")

FUSED = {"fastblocks.activation.default", "fastblocks.bn_act.default", "fastblocks.dwconv_bn_act.default",
         "fastblocks.squeeze_excite.default"}


def _fused_ops(program) -> set:
    return {str(n.target) for n in program.graph.nodes if str(n.target).startswith("fastblocks.")}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = timm.create_model("mobilenetv3_small_050", num_classes=10)
    report = fb.patch(m)
    assert len(report) > 0, "nothing was patched"
    return m


def test_eval_export_round_trip(model):
    m = copy.deepcopy(model).eval()
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(m, (x,))
    assert _fused_ops(program) == FUSED
    # export traces the fused ops; eager eval under no_grad folds BNs into convs instead (rounding-level
    # apart), so the exact comparison is with the eager forward that does not fold (grad enabled)
    expected = m(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(program.module()(x), expected, rtol=0, atol=0)
        decomposed = program.run_decompositions()
        assert _fused_ops(decomposed) == FUSED
        torch.testing.assert_close(decomposed.module()(x), expected, rtol=0, atol=0)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        torch.testing.assert_close(torch.export.load(buffer).module()(x), expected, rtol=0, atol=0)


def test_train_export_updates_running_stats(model):
    eager, exported = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    x = torch.randn(4, 3, 64, 64)
    program = torch.export.export(exported, (x,))
    assert _fused_ops(program) == FUSED
    module = program.module()
    out = module(x)
    torch.testing.assert_close(out, eager(x))
    ours = {k: v for k, v in module.state_dict().items() if "running_" in k}
    theirs = {k: v for k, v in eager.state_dict().items() if "running_" in k}
    assert ours and ours.keys() == theirs.keys()
    changed = 0
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, msg=key)
        changed += int(not torch.equal(value, model.state_dict()[key]))
    assert changed == len(theirs), "an exported training step must update every running statistic"
