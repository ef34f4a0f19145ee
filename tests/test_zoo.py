"""Tests for fastblocks.zoo: parameter counts vs the seeds, shapes, backward,
registry behaviour, argument validation and the structural conventions the
fused-op patcher relies on."""

from __future__ import annotations

import math
from typing import Dict, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastblocks.zoo as zoo
from fastblocks.zoo.eca_mobilenet_v2 import EcaInvertedResidual, EcaMobileNetV2
from fastblocks.zoo.eca_resnet import EcaResNet, eca_resnet
from fastblocks.zoo.layers import ChannelShuffle, EcaLayer, SqueezeExcite, eca_kernel_size, make_divisible
from fastblocks.zoo.nin import NiN
from fastblocks.zoo.preact_se_resnet import PreActSEResNet
from fastblocks.zoo.rexnet_lite import RexLinearBottleneck, ReXNetLite
from fastblocks.zoo.shufflenet_v1 import ShuffleNetV1, ShuffleUnit

ALL_MODELS = [
    "eca_mobilenet_v2",
    "eca_resnet101",
    "eca_resnet18",
    "eca_resnet34",
    "eca_resnet50",
    "nin",
    "preact_se_resnet18",
    "rexnet_lite",
    "rexnet_lite_1_0",
    "rexnet_lite_1_3",
    "rexnet_lite_1_5",
    "rexnet_lite_2_0",
    "shufflenet_v1",
    "shufflenet_v1_g3",
    "shufflenet_v1_g8",
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


_CACHE: Dict[Tuple[str, Tuple[Tuple[str, object], ...]], nn.Module] = {}


def build(name: str, **kw: object) -> nn.Module:
    """Build (and cache) a zoo model; tests must set train/eval mode themselves."""
    key = (name, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = zoo.create(name, **kw)
    return _CACHE[key]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def n_params_with_bn_stats(m: nn.Module) -> int:
    """Trainable params + BN running mean/var (what Paddle's summary calls Total)."""
    stats = sum(b.numel() for n, b in m.named_buffers() if n.endswith(("running_mean", "running_var")))
    return n_params(m) + stats


def ref_eca_k(c: int, gamma: int = 2, b: int = 1) -> int:
    t = int(abs((math.log2(c) + b) / gamma))
    return t if t % 2 else t + 1


# --------------------------------------------------------------------------- #
# parameter counts vs the seeds
# --------------------------------------------------------------------------- #
def test_eca_mobilenet_v2_matches_seed_paddle_summary() -> None:
    m = build("eca_mobilenet_v2")
    assert n_params(m) == 3_504_903  # seed 002: Trainable params
    assert n_params_with_bn_stats(m) == 3_539_015  # seed 002: Total params


def test_eca_mobilenet_v2_eca_placement_and_kernel_sizes() -> None:
    m = build("eca_mobilenet_v2")
    blocks = [b for b in m.features if isinstance(b, EcaInvertedResidual)]
    assert len(blocks) == 17
    ks = []
    for b in blocks:
        children = list(b.conv.named_children())
        name, eca = children[-1]
        assert name == "eca" and isinstance(eca, EcaLayer)
        pname, proj = children[-2]
        assert pname == "project" and [n for n, _ in proj.named_children()] == ["conv", "bn"]
        assert proj.conv.kernel_size == (1, 1)
        ks.append(eca.kernel_size)
    # seed: k=1 when the block's output channels < 96, else 3
    assert ks == [1] * 10 + [3] * 7
    assert sum(ks) == 3_504_903 - 3_504_872  # torchvision mobilenet_v2 has 3,504,872
    drop = m.classifier[0]
    assert isinstance(drop, nn.Dropout) and drop.p == 0.25


def _seed_myresnet_replica(layers=(2, 2, 2, 2), num_classes: int = 10) -> nn.ModuleList:
    """Parameter-exact PyTorch replica of seed 002's MyResNet(ResidualBottleneckBlock, 18, 10)
    (only the parameterised layers; enough to count parameters)."""

    def block(cin: int, cout: int, stride: int) -> nn.ModuleList:
        mid = cin if stride == 2 else cout // 4
        mods = [nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.Conv2d(mid, mid, 3, stride, 1),
                nn.BatchNorm2d(mid), nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout)]
        if cin != cout:
            mods += [nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout)]
        return nn.ModuleList(mods)

    mods = [nn.Conv2d(3, 64, 7, 2, 3), nn.BatchNorm2d(64)]
    inplanes = 64
    for i, (c, n) in enumerate(zip((64, 128, 256, 512), layers)):
        out = c * 4
        tmp = out  # seed: isinstance(<class>, ResidualBottleneckBlock) is always False
        mods.append(block(inplanes, tmp, 2 if i > 0 else 1))
        for _ in range(1, n):
            mods.append(block(tmp, out, 1))
            tmp = inplanes = out
    mods.append(nn.Linear(512 * 4, num_classes))
    return nn.ModuleList(mods)


def test_eca_resnet_seed_count_belongs_to_a_non_eca_model() -> None:
    """Seed 002's 25,341,578 is a bias-conv bottleneck ResNet with layout [2,2,2,2]
    and NO ECA layer; our ECA-ResNet-50 legitimately differs."""
    replica = _seed_myresnet_replica()
    assert n_params(replica) == 25_341_578
    assert n_params_with_bn_stats(replica) == 25_376_010
    assert not any(isinstance(x, nn.Conv1d) for x in replica.modules())
    ours = zoo.create("eca_resnet50", num_classes=10)
    assert n_params(ours) == 23_528_608
    assert n_params(ours) != 25_341_578


@pytest.mark.parametrize(
    "depth,stage_channels,expected",
    [
        (18, ((64, 2), (128, 2), (256, 2), (512, 2)), 11_181_678),
        (34, ((64, 3), (128, 4), (256, 6), (512, 3)), 21_289_876),
        (50, ((256, 3), (512, 4), (1024, 6), (2048, 3)), 23_528_608),
        (101, ((256, 3), (512, 4), (1024, 23), (2048, 3)), 42_520_821),
    ],
)
def test_eca_resnet_param_count_is_torchvision_plus_eca(depth: int, stage_channels, expected: int) -> None:
    torchvision = pytest.importorskip("torchvision")
    m = build(f"eca_resnet{depth}", num_classes=10)
    base = n_params(getattr(torchvision.models, f"resnet{depth}")(num_classes=10))
    eca = sum(ref_eca_k(c) * n for c, n in stage_channels)
    assert n_params(m) == base + eca == expected
    assert sum(isinstance(x, EcaLayer) for x in m.modules()) == sum(n for _, n in stage_channels)


@pytest.mark.parametrize(
    "multiplier,official_m,exact",
    [(1.0, 4.7, 4_740_056), (1.3, 6.8, 6_747_960), (1.5, 8.3, 8_332_296), (2.0, 13.0, 12_966_200)],
)
def test_rexnet_lite_param_counts(multiplier: float, official_m: float, exact: int) -> None:
    """Seed 004 prints no count; the official clovaai README quotes 4.7M / 6.8M / 8.3M / 13M."""
    m = zoo.create("rexnet_lite", multiplier=multiplier)
    assert abs(n_params(m) / 1e6 - official_m) < 0.05 * official_m
    assert n_params(m) == exact


def test_rexnet_lite_structure() -> None:
    m = build("rexnet_lite_1_0")
    blocks = [b for b in m.features if isinstance(b, RexLinearBottleneck)]
    assert len(blocks) == 16
    assert blocks[0].in_channels == 32 and blocks[0].out_channels == 16
    # final width 16 + 164 = 180 -> make_divisible(180, 8) = 184
    assert blocks[-1].out_channels == make_divisible(16 + 164) == 184
    assert not any(isinstance(x, (nn.Sigmoid, nn.SiLU, SqueezeExcite)) for x in m.modules())  # no SE / SiLU
    acts = {type(x) for x in m.modules() if isinstance(x, (nn.ReLU, nn.ReLU6, nn.SiLU))}
    assert acts == {nn.ReLU6}
    assert m.features[-1].conv.out_channels == 1280
    assert m.output.conv.in_channels == 1280 and m.output.conv.out_channels == 1024
    assert build("rexnet_lite_1_5").output.conv.in_channels == 1920


def _shufflenet_params(groups: int, num_classes: int = 1000) -> int:
    """Parameter count of seed 003's ShuffleNet, derived from its layer list."""
    ch = {3: [24, 240, 480, 960], 8: [24, 384, 768, 1536]}[groups]
    total = 3 * 24 * 9 + 24  # biased stem conv, no BN

    def unit(cin: int, cout: int, grouped: bool, concat: bool) -> int:
        mid = cout // 4
        g1 = groups if grouped else 1
        exp_out = cout - cin if concat else cout
        return (cin * mid // g1 + mid + 2 * mid) + (9 * mid + 2 * mid) + (mid * exp_out // groups + 3 * exp_out)

    for stage, repeats in zip(range(1, 4), (3, 7, 3)):
        total += unit(ch[stage - 1], ch[stage], stage > 1, True)
        total += repeats * unit(ch[stage], ch[stage], True, False)
    return total + ch[-1] * num_classes + num_classes


@pytest.mark.parametrize("groups,expected", [(3, 1_875_760), (8, 2_450_848)])
def test_shufflenet_v1_param_count(groups: int, expected: int) -> None:
    m = build(f"shufflenet_v1_g{groups}")
    assert n_params(m) == _shufflenet_params(groups) == expected
    assert isinstance(m.conv1, nn.Conv2d) and m.conv1.bias is not None  # seed: plain biased stem


def _nin_params(num_classes: int) -> int:
    def blk(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout + 2 * (cout * cout + cout)

    return blk(3, 96, 11) + blk(96, 256, 5) + blk(256, 384, 3) + blk(384, num_classes, 3)


@pytest.mark.parametrize("num_classes,expected", [(10, 2_015_398), (1000, 7_439_608)])
def test_nin_param_count(num_classes: int, expected: int) -> None:
    assert n_params(build("nin", num_classes=num_classes)) == _nin_params(num_classes) == expected


def _senet18_params(num_classes: int, fc_in: int) -> int:
    """Parameter count of seed 003's SENet18 (PreActBlock) body + a Linear(fc_in, num_classes)."""
    total = 3 * 64 * 9 + 2 * 64
    cin = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for s in (stride, 1):
            r = planes // 16
            total += 2 * cin + cin * planes * 9 + 2 * planes + planes * planes * 9
            total += planes * r + r + r * planes + planes
            if s != 1 or cin != planes:
                total += cin * planes
            cin = planes
    return total + fc_in * num_classes + num_classes


@pytest.mark.parametrize(
    "kw,expected",
    [({}, 11_768_224), ({"num_classes": 10}, 11_260_354), ({"seed_head": True}, 36_344_224)],
)
def test_preact_se_resnet18_param_count(kw: dict, expected: int) -> None:
    m = build("preact_se_resnet18", **kw)
    fc_in = 25088 if kw.get("seed_head") else 512
    assert n_params(m) == _senet18_params(kw.get("num_classes", 1000), fc_in) == expected


def test_mobilenet_v1_is_provided_by_timm() -> None:
    """mobilenet_v1 is deliberately not in the zoo: timm has it with seed 003's parameter count."""
    timm = pytest.importorskip("timm")
    assert "mobilenetv1_100" in timm.list_models("mobilenetv1*")
    cfg = [(32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)]
    cfg += [(512, 512)] * 5 + [(512, 1024), (1024, 1024)]
    seed_count = 3 * 32 * 9 + 2 * 32 + sum(11 * i + i * o + 2 * o for i, o in cfg) + 1024 * 1000 + 1000
    assert n_params(timm.create_model("mobilenetv1_100")) == seed_count == 4_231_976
    assert "mobilenet_v1" not in zoo.list_models()


# --------------------------------------------------------------------------- #
# forward shapes (as printed by the seeds) and train-mode backward
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "name,kw,size,expected",
    [
        ("eca_mobilenet_v2", {}, 224, (1, 1000)),  # seed 002 summary
        ("eca_resnet18", {"num_classes": 10}, 224, (1, 10)),  # seed 002 MyResNet (1, 10)
        ("eca_resnet34", {}, 64, (1, 1000)),
        ("eca_resnet50", {"num_classes": 10}, 64, (1, 10)),
        ("eca_resnet101", {"num_classes": 10}, 64, (1, 10)),
        ("rexnet_lite_1_0", {}, 224, (1, 1000)),  # seed 004 main uses 224
        ("rexnet_lite_1_3", {}, 96, (1, 1000)),
        ("rexnet_lite_1_5", {}, 96, (1, 1000)),
        ("rexnet_lite_2_0", {}, 96, (1, 1000)),
        ("shufflenet_v1_g3", {}, 224, (1, 1000)),  # seed 003 main uses 224
        ("shufflenet_v1_g8", {}, 224, (1, 1000)),
        ("nin", {"num_classes": 10}, 224, (1, 10)),  # 11x11/4 stem: ImageNet-size input
        ("preact_se_resnet18", {"num_classes": 10}, 32, (1, 10)),  # CIFAR body
        ("preact_se_resnet18", {"seed_head": True}, 224, (1, 1000)),  # seed 003 main: 224 -> 1000
    ],
)
def test_forward_shape(name: str, kw: dict, size: int, expected: Tuple[int, int]) -> None:
    m = build(name, **kw).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, size, size))
    assert tuple(y.shape) == expected
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "name,kw,size",
    [
        ("eca_mobilenet_v2", {"width_mult": 0.5}, 64),
        ("eca_mobilenet_v2", {}, 64),
        ("eca_resnet18", {}, 64),
        ("eca_resnet34", {}, 64),
        ("eca_resnet50", {"num_classes": 10}, 64),
        ("eca_resnet101", {"num_classes": 10}, 64),
        ("rexnet_lite_1_0", {}, 64),
        ("rexnet_lite", {"multiplier": 0.75, "kernel_conf": "333555"}, 64),
        ("shufflenet_v1_g3", {}, 64),
        ("shufflenet_v1_g8", {"width_mult": 0.5}, 64),
        ("nin", {"num_classes": 10}, 96),
        ("preact_se_resnet18", {"num_classes": 10}, 32),
    ],
)
def test_train_backward(name: str, kw: dict, size: int) -> None:
    m = build(name, **kw).train()
    m.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, size, size, requires_grad=True)
    y = m(x)
    assert y.shape[0] == 2
    F.cross_entropy(y, torch.tensor([0, 1])).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    for layer in m.modules():  # attention weights must receive gradient
        if isinstance(layer, EcaLayer):
            assert layer.conv.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- #
# layers
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("c,k", [(1, 1), (16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_kernel_size(c: int, k: int) -> None:
    assert eca_kernel_size(c) == ref_eca_k(c) == k
    assert EcaLayer(c).kernel_size == k


def test_eca_layer_matches_reference() -> None:
    layer = EcaLayer(kernel_size=3)
    assert [n for n, _ in layer.named_children()] == ["conv"]
    assert n_params(layer) == 3 and layer.conv.bias is None and layer.conv.padding == (1,)
    x = torch.randn(2, 5, 4, 3)
    w = layer.conv.weight.detach().view(3)
    y = F.pad(x.mean((2, 3)), (1, 1))  # zero-padded channel descriptor (N, C + 2)
    att = torch.sigmoid(w[0] * y[:, :-2] + w[1] * y[:, 1:-1] + w[2] * y[:, 2:])
    torch.testing.assert_close(layer(x), x * att[:, :, None, None])


def test_squeeze_excite_matches_reference() -> None:
    se = SqueezeExcite(32, 2)
    assert [n for n, _ in se.named_children()] == ["fc1", "act", "fc2", "gate"]
    assert n_params(se) == 2 * 32 * 2 + 2 + 32
    assert se.fc1.bias is not None and se.fc2.bias is not None
    x = torch.randn(3, 32, 5, 5)
    s = x.mean((2, 3))
    h = F.relu(s @ se.fc1.weight.view(2, 32).T + se.fc1.bias)
    g = torch.sigmoid(h @ se.fc2.weight.view(32, 2).T + se.fc2.bias)
    torch.testing.assert_close(se(x), x * g[:, :, None, None])


def test_channel_shuffle_permutation() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert ChannelShuffle(3)(x).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_rexnet_partial_residual() -> None:
    blk = RexLinearBottleneck(16, 24, 6, stride=1).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        body = blk.conv(x)
        y = blk(x)
    torch.testing.assert_close(y[:, :16], body[:, :16] + x)
    torch.testing.assert_close(y[:, 16:], body[:, 16:])
    assert not RexLinearBottleneck(16, 24, 6, stride=2).use_shortcut


def test_shufflenet_concat_unit_shortcut() -> None:
    unit = ShuffleUnit(24, 240, 3, grouped_compress=False, combine="concat").eval()
    assert unit.compress.conv.groups == 1 and unit.expand.conv.groups == 3
    assert unit.expand.conv.out_channels == 240 - 24
    x = torch.randn(1, 24, 8, 8)
    with torch.no_grad():
        y = unit(x)
    assert y.shape == (1, 240, 4, 4)
    torch.testing.assert_close(y[:, :24], F.relu(F.avg_pool2d(x, 3, 2, 1)))


# --------------------------------------------------------------------------- #
# patcher conventions
# --------------------------------------------------------------------------- #
_ACTS = (nn.ReLU, nn.ReLU6, nn.SiLU)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("eca_mobilenet_v2", {}),
        ("eca_resnet18", {}),
        ("eca_resnet50", {"num_classes": 10}),
        ("rexnet_lite_1_0", {}),
        ("shufflenet_v1_g3", {}),
        ("shufflenet_v1_g8", {}),
        ("preact_se_resnet18", {"num_classes": 10}),
        ("nin", {"num_classes": 10}),
    ],
)
def test_patcher_conventions(name: str, kw: dict) -> None:
    m = build(name, **kw)
    n_dw = 0
    for parent in m.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        kids = list(parent.named_children())
        for i, (cname, child) in enumerate(kids):
            nxt = kids[i + 1][1] if i + 1 < len(kids) else None
            if isinstance(child, nn.Conv2d) and 1 < child.groups == child.in_channels == child.out_channels:
                n_dw += 1
                k = child.kernel_size[0]
                assert child.bias is None and child.padding == (k // 2, k // 2)
                assert isinstance(nxt, nn.BatchNorm2d) and cname == "conv"
            if isinstance(child, nn.BatchNorm2d):
                prev = kids[i - 1][1] if i > 0 else None
                assert cname == "bn" and (isinstance(prev, nn.Conv2d) or prev is None)
                assert nxt is None or isinstance(nxt, _ACTS)
                if isinstance(nxt, _ACTS):
                    assert kids[i + 1][0] == "act"
    n_bn = sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    in_seq = sum(
        isinstance(c, nn.BatchNorm2d) for p in m.modules() if type(p) is nn.Sequential for c in p.children()
    )
    assert in_seq == n_bn  # every BN lives in a plain nn.Sequential as child "bn"
    has_dw = name not in ("nin", "preact_se_resnet18") and not name.startswith("eca_resnet")
    assert (n_dw > 0) == has_dw


# --------------------------------------------------------------------------- #
# registry and argument validation
# --------------------------------------------------------------------------- #
def test_list_models() -> None:
    assert zoo.list_models() == ALL_MODELS
    assert zoo.list_models("eca_resnet*") == ["eca_resnet101", "eca_resnet18", "eca_resnet34", "eca_resnet50"]
    assert zoo.list_models("nothing*") == []


@pytest.mark.parametrize(
    "name,kw,cls",
    [
        ("eca_mobilenet_v2", {"num_classes": 7}, EcaMobileNetV2),
        ("eca_resnet34", {"num_classes": 7}, EcaResNet),
        ("rexnet_lite", {"num_classes": 7, "multiplier": 1.5}, ReXNetLite),
        ("shufflenet_v1", {"num_classes": 7, "groups": 8}, ShuffleNetV1),
        ("preact_se_resnet18", {"num_classes": 7}, PreActSEResNet),
        ("nin", {"num_classes": 7}, NiN),
    ],
)
def test_create_forwards_kwargs(name: str, kw: dict, cls: type) -> None:
    m = zoo.create(name, **kw)
    assert type(m) is cls
    last = [x for x in m.modules() if isinstance(x, (nn.Linear, nn.Conv2d))][-1]
    assert (last.out_features if isinstance(last, nn.Linear) else last.out_channels) == 7


def test_create_unknown_model_lists_valid_ones() -> None:
    with pytest.raises(ValueError) as exc:
        zoo.create("eca_resnet999")
    msg = str(exc.value)
    assert "eca_resnet999" in msg
    assert all(n in msg for n in ALL_MODELS)


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("shufflenet_v1", {"groups": 4}, r"groups must be one of \(3, 8\)"),
        ("shufflenet_v1", {"groups": 3.0}, "groups must be one of"),
        ("shufflenet_v1_g3", {"width_mult": 0}, "width_mult must be a positive"),
        ("shufflenet_v1_g3", {"width_mult": 0.01}, "too small"),
        ("eca_mobilenet_v2", {"width_mult": -1.0}, "width_mult must be a positive"),
        ("eca_mobilenet_v2", {"width_mult": 0.01}, "too small"),
        ("eca_mobilenet_v2", {"drop_rate": 1.5}, "drop_rate"),
        ("rexnet_lite", {"multiplier": 0.0}, "multiplier must be a positive"),
        ("rexnet_lite", {"multiplier": float("nan")}, "multiplier must be a positive"),
        ("rexnet_lite", {"kernel_conf": "3333"}, "kernel_conf"),
        ("eca_resnet18", {"num_classes": 0}, "num_classes must be a positive int"),
        ("nin", {"num_classes": 2.5}, "num_classes must be a positive int"),
        ("preact_se_resnet18", {"num_classes": -3}, "num_classes must be a positive int"),
    ],
)
def test_bad_arguments_raise_value_error(name: str, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        zoo.create(name, **kw)


def test_bad_depth_and_layer_arguments() -> None:
    with pytest.raises(ValueError, match=r"depth must be one of \[18, 34, 50, 101\]"):
        eca_resnet(depth=152)
    with pytest.raises(ValueError, match="positive odd"):
        EcaLayer(kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        EcaLayer()
    with pytest.raises(ValueError, match="groups"):
        ChannelShuffle(0)


def test_input_size_errors() -> None:
    with pytest.raises(ValueError, match="at least 67x67"):
        build("nin", num_classes=10).eval()(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="224x224"):
        build("preact_se_resnet18", seed_head=True).eval()(torch.randn(1, 3, 32, 32))
