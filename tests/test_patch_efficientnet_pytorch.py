import pytest
import torch

effnet = pytest.importorskip("efficientnet_pytorch")

from tests.helpers import check_patch_equivalence  # noqa: E402


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_efficientnet_b0_patched_matches_unpatched(memory_efficient):
    torch.manual_seed(0)
    model = effnet.EfficientNet.from_name("efficientnet-b0", num_classes=10)
    model.set_swish(memory_efficient=memory_efficient)
    report = check_patch_equivalence(model)
    counts = report.counts()
    # 16 MBConv blocks fused (dw+BN+swish, SE, expansion BN+swish); stem and head BN take _swish.
    assert counts == {"FusedMBConvBlock": 16, "BatchNormAct2d": 2}, str(report)


def test_static_padding_for_another_image_size_falls_back_exactly():
    # Built for 224x224: at odd sizes the static pads differ from TF SAME; the block must notice.
    torch.manual_seed(0)
    model = effnet.EfficientNet.from_name("efficientnet-b0", num_classes=10)
    check_patch_equivalence(model, input_shape=(2, 3, 45, 45))
