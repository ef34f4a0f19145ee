import pytest
import torch

tv = pytest.importorskip("torchvision")

from tests.helpers import check_patch_equivalence  # noqa: E402

CASES = {
    # 16 MBConv: 16 dw, 16 SE; BN+SiLU in Conv2dNormActivation: stem, 15 expansions, head
    "efficientnet_b0": {"DWConvBNAct": 16, "SqueezeExcite": 16, "BatchNormAct2d": 17},
    # 17 inverted residuals; BN+ReLU6: stem, 16 expansions, last conv
    "mobilenet_v2": {"DWConvBNAct": 17, "BatchNormAct2d": 18},
    # 15 dw; 8 SE (hardsigmoid); BN+act: stem, 14 expansions, last conv
    "mobilenet_v3_large": {"DWConvBNAct": 15, "SqueezeExcite": 8, "BatchNormAct2d": 16},
    # stem bn1 + relu, bn1 of each of the 8 basic blocks (their one relu module also runs after the add:
    # the block's forward is swapped)
    "resnet18": {"BatchNormAct2d": 9},
    # stem + bn1, bn2 of each of the 16 bottlenecks
    "resnet50": {"BatchNormAct2d": 33},
    # 58 dense layers x (norm1 + relu1, norm2 + relu2), the 3 transitions' norm + relu, features.norm0 +
    # relu0; norm5 (no act module follows in the Sequential: F.relu in DenseNet.forward) is lone
    "densenet121": {"BatchNormAct2d": 58 * 2 + 3 + 1},
    # every BasicConv2d (conv, bn, F.relu: the block's forward is swapped)
    "googlenet": {"BatchNormAct2d": 57},
    "inception_v3": {"BatchNormAct2d": 94},
}
MODEL_KWARGS = {"googlenet": dict(aux_logits=False, init_weights=False),
                "inception_v3": dict(aux_logits=False, init_weights=False)}
INPUT_SHAPE = {"inception_v3": (2, 3, 80, 80)}  # its stem needs >= 75 x 75


@pytest.mark.parametrize("name", list(CASES))
def test_patched_matches_unpatched(name):
    torch.manual_seed(0)
    model = getattr(tv.models, name)(num_classes=10, **MODEL_KWARGS.get(name, {}))
    report = check_patch_equivalence(model, INPUT_SHAPE.get(name, (2, 3, 64, 64)))
    counts = report.counts()
    for kind, n in CASES[name].items():
        assert counts.get(kind, 0) == n, f"{name}: {kind} x{counts.get(kind, 0)} != {n}\n{report}"
