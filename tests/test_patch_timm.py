import pytest
import torch

timm = pytest.importorskip("timm")

import fastblocks as fb  # noqa: E402
from utils import check_patch_equivalence  # noqa: E402

# model -> expected replacement counts (derived from the architecture, see comments)
CASES = {
    # 16 MBConv blocks: 16 depthwise conv+BN+SiLU, 16 SE; BN+SiLU: stem, 15 expansion convs, head.
    "efficientnet_b0": {"DWConvBNAct": 16, "SqueezeExcite": 16, "BatchNormAct2d": 17},
    # same structure with Conv2dSame (TF "SAME" padding) depthwise convs
    "tf_efficientnet_b0": {"DWConvBNAct": 16, "SqueezeExcite": 16, "BatchNormAct2d": 17},
    # 17 inverted residuals: 17 dw; ReLU6 BN: stem, 16 expansions, head
    "mobilenetv2_100": {"DWConvBNAct": 17, "BatchNormAct2d": 18},
    # 15 dw blocks, 8 with SE (hard-sigmoid gate); BN+act: stem, 14 expansions, the 1x1 960 ConvBnAct;
    # the head conv has no BN, so its hard-swish becomes a memory-efficient module.
    "mobilenetv3_large_100": {"DWConvBNAct": 15, "SqueezeExcite": 8, "BatchNormAct2d": 16,
                              "MemoryEfficientAct": 1},
    # 16 bottlenecks; SE with BN inside in 13 of them; BN+SiLU: stem, 15 expansions, head.
    "rexnet_100": {"DWConvBNAct": 16, "SqueezeExciteWithNorm": 13, "BatchNormAct2d": 17},
    # no depthwise convs; ECA in each of the 8 bottlenecks; BN+ReLU twice in the deep stem Sequential
    # (block BNs feed shared-position activations in the block's forward: left alone)
    "ecaresnet26t": {"EfficientChannelAttention": 8, "BatchNormAct2d": 2},
    # original SENet port: SE (legacy SEModule: fc1, relu, fc2, sigmoid) in each of the 8 basic blocks;
    # BN+ReLU in the layer0 stem Sequential (the blocks' BNs feed ReLUs in forward code: lone)
    "legacy_seresnet18": {"SqueezeExcite": 8, "BatchNormAct2d": 1},
    # 4 stages x 1 OSA block, each ending in an EffectiveSEModule; BN+ReLU: 3 stem convs, and per
    # block the 1x1 reduction, 3 separable convs (dw -> pw -> BN+act) and the concat conv
    "ese_vovnet19b_dw": {"EffectiveSqueezeExcite": 4, "BatchNormAct2d": 23},
    # HGNet-tiny: 1 + 1 + 2 + 1 HG blocks, each with HGNet's own EseModule (conv, sigmoid); its
    # ConvBNAct blocks are not known to the patcher (their BNs are reported lone)
    "hgnet_tiny": {"EffectiveSqueezeExcite": 5},
    # MixedConv2d depthwise convs are skipped (with the reason); single-kernel groups fuse.
    "mixnet_s": None,
}


@pytest.mark.parametrize("name", list(CASES))
def test_patched_matches_unpatched(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    report = check_patch_equivalence(model)
    expected = CASES[name]
    counts = report.counts()
    if expected is not None:
        for kind, n in expected.items():
            assert counts.get(kind, 0) == n, f"{name}: {kind} x{counts.get(kind, 0)} != {n}\n{report}"
    else:
        assert any("MixedConv2d" in s.reason for s in report.skipped), str(report)
        assert counts.get("DWConvBNAct", 0) > 0 and counts.get("SqueezeExcite", 0) > 0


def test_excitation_convs_that_are_not_plain_1x1_are_skipped_with_the_reason():
    import copy

    from timm.layers.squeeze_excite import EffectiveSEModule, SEModule

    torch.manual_seed(0)
    model = torch.nn.Sequential(SEModule(8, rd_channels=4), EffectiveSEModule(8), SEModule(8, rd_channels=4),
                                EffectiveSEModule(8, add_maxpool=True), EffectiveSEModule(8)).double()
    model[2].fc1 = torch.nn.Conv2d(8, 4, 1, groups=2).double()  # grouped: not a product with the pooled input
    model[1].fc.register_forward_hook(lambda *a: None)
    original = copy.deepcopy(model)
    report = fb.patch(model, backend="eager")
    kinds = {r.path: r.replacement for r in report.replaced}
    reasons = {s.path: s.reason for s in report.skipped}
    assert kinds == {"0": "SqueezeExcite", "4": "EffectiveSqueezeExcite"}, report
    assert "not a 1x1 conv" in reasons["2"] and "hooks" in reasons["1"] and "add_maxpool" in reasons["3"]
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(model(x), original(x), rtol=1e-12, atol=1e-12)
