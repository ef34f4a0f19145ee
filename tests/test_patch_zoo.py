import pytest
import torch

from fastblocks import zoo
from tests.helpers import check_patch_equivalence

CASES = {
    # 17 dw conv+BN+ReLU6, 17 ECA; BN+ReLU6: stem, 16 expansions, head
    "eca_mobilenet_v2": ((2, 3, 64, 64), {"DWConvBNAct": 17, "EfficientChannelAttention": 17, "BatchNormAct2d": 18}),
    # 8 basic blocks with ECA; BN+ReLU in conv1 of each block and the stem
    "eca_resnet18": ((2, 3, 64, 64), {"EfficientChannelAttention": 8, "BatchNormAct2d": 9}),
    "rexnet_lite_1_0": ((2, 3, 64, 64), {"DWConvBNAct": 16}),
    "shufflenet_v1_g3": ((2, 3, 64, 64), {"DWConvBNAct": 16}),
    "preact_se_resnet18": ((2, 3, 32, 32), {"SqueezeExcite": 8}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_zoo_patched_matches_unpatched(name):
    torch.manual_seed(0)
    shape, expected = CASES[name]
    report = check_patch_equivalence(zoo.create(name, num_classes=10), input_shape=shape)
    counts = report.counts()
    for kind, n in expected.items():
        assert counts.get(kind, 0) == n, f"{name}: {kind} x{counts.get(kind, 0)} != {n}\n{report}"
