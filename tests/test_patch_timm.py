import pytest
import torch

timm = pytest.importorskip("timm")

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
