import pytest
import torch

timm = pytest.importorskip("timm")

import fastblocks as fb  # noqa: E402
from tests.helpers import check_patch_equivalence  # noqa: E402

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
    # no depthwise convs; ECA in each of the 8 bottlenecks; BN+ReLU: 2 in the deep stem Sequential, the
    # stem's bn1 + act1, bn1 + act1 and bn2 + act2 of each bottleneck (bn3 feeds the residual add) = 19
    "ecaresnet26t": {"EfficientChannelAttention": 8, "BatchNormAct2d": 19},
    # basic blocks: bn1 + act1 of each of the 8 and the stem's; SE (timm SEModule) in each block
    "seresnet18": {"SqueezeExcite": 8, "BatchNormAct2d": 9},
    # original SENet port: SE (legacy SEModule: fc1, relu, fc2, sigmoid) in each of the 8 basic blocks;
    # BN+ReLU: the layer0 stem Sequential, bn1 and bn2 of each block (one relu module runs after both
    # and after the add: the block's forward is swapped)
    "legacy_seresnet18": {"SqueezeExcite": 8, "BatchNormAct2d": 17},
    # legacy SE-ResNeXt bottlenecks: bn1, bn2 of each of the 8 + the stem
    "legacy_seresnext26_32x4d": {"SqueezeExcite": 8, "BatchNormAct2d": 17},
    # 4 stages x 1 OSA block, each ending in an EffectiveSEModule; BN+ReLU: 3 stem convs, and per
    # block the 1x1 reduction, 3 separable convs (dw -> pw -> BN+act) and the concat conv
    "ese_vovnet19b_dw": {"EffectiveSqueezeExcite": 4, "BatchNormAct2d": 23},
    # HGNet-tiny: 1 + 1 + 2 + 1 HG blocks, each with HGNet's own EseModule (conv, sigmoid); HGNet
    # ConvBNAct (conv, bn, act, lab): the dw 3x3 s2 downsample of stages 2-4 (no act) -> 3 dw; BN+ReLU:
    # 3 stem convs + 5 blocks x (5 layers + the aggregation conv) = 33
    "hgnet_tiny": {"EffectiveSqueezeExcite": 5, "DWConvBNAct": 3, "BatchNormAct2d": 33},
    # HGNetV2-B0 (LearnableAffineBlock after each act): dw = 3 downsamples + 9 light blocks' k5 dw
    # conv (conv2, +ReLU); BN+ReLU: 5 stem convs, 3 + 2 per dense block, 2 per light block = 21;
    # the light blocks' 1x1 conv1 has no act: 9 lone BNs, reported
    "hgnetv2_b0": {"DWConvBNAct": 12, "BatchNormAct2d": 21},
    # RepViT: ConvNorm / RepVggDw are Sequential subclasses (forward kept): 26 dw 3x3 + BN; 10 SE; the
    # stem's conv1 and 26 channel-mixer ConvNorm BNs take the GELU that follows them
    "repvit_m0_9": {"DWConvBNAct": 26, "SqueezeExcite": 10, "BatchNormAct2d": 27},
    # GhostNetV3: re-parameterisable branches of timm ConvBnAct (dw kxk and 1x1 depthwise + BN); BN + act:
    # the stem (GhostNet.forward_features: conv_stem, bn1, act1) and the last block's bn1
    "ghostnetv3_050": {"DWConvBNAct": 149, "SqueezeExcite": 7, "BatchNormAct2d": 2},
    # aligned Xception: 13 blocks x 3 SeparableConv2d (conv_dw, bn_dw, act_dw, conv_pw, bn_pw, act_pw): 39 dw
    # + BN; BN+ReLU: 2 stem ConvNormAct, the exit block's 3 pointwise BNs, and 24 pointwise BNs (act_pw an
    # Identity) whose SeparableConv2d is followed by the next ReLU of the block's stack Sequential
    "xception41": {"DWConvBNAct": 39, "BatchNormAct2d": 29},
    # DLA-34: base_layer, level0, level1 (conv, BN, ReLU Sequentials) + bn1 of the 12 DlaBasic blocks
    # (one relu module after bn1 and after the residual add: the block's forward is swapped); bn2 feeds
    # the add: lone; the 6 DlaRoots without a residual (shortcut False: conv, bn, relu) fuse, the others' BN
    # feeds the add
    "dla34": {"BatchNormAct2d": 15 + 6},
    # DLA-46-C: the 3 stem Sequentials + bn1, bn2 of the 12 DlaBottleneck blocks + 6 DlaRoots
    "dla46_c": {"BatchNormAct2d": 27 + 6},
    # Res2Net-50 14w x 8s: the stem's bn1 + per Bottle2neck bn1 and its 7 per-scale BNs (ModuleList
    # bns; one relu module after each and after the add: the block's forward is swapped); 16 blocks
    "res2net50_14w_8s": {"BatchNormAct2d": 1 + 16 * 8},
    # DLA-60 Res2Net: the 3 stem Sequentials + 16 DlaBottle2neck blocks x (bn1 + the 3 per-scale BNs)
    "dla60_res2net": {"BatchNormAct2d": 3 + 16 * 4 + 8},  # + 8 DlaRoots without a residual
    # GhostNet V1: 37 dw (ghost modules' cheap ops, the stride-2 shortcuts) + the 4 stride-2 blocks'
    # conv_dw + bn_dw (no act); SE in 7 blocks; BN + act: 16 ghost primary convs, the last block's bn1 and
    # the stem's bn1
    "ghostnet_100": {"DWConvBNAct": 41, "SqueezeExcite": 7, "BatchNormAct2d": 18},
    # MixNet-S: 16 blocks; the 3 with one k3 kernel (the ds block, stage 1) have a plain dw conv, the
    # 13 others a MixedConv2d (k 3.5 / 3.5.7 / 3.5.7.9 / 3.5.7.9.11 groups) -> one fused module each;
    # SE in the 13 blocks of stages 2-5; BN+act: stem, 15 expansions (some MixedConv2d 1x1 groups), head
    "mixnet_s": {"DWConvBNAct": 3, "MixedDWConvBNAct": 13, "SqueezeExcite": 13, "BatchNormAct2d": 17},
    # TF port: Conv2dSame ("tf_same") groups
    "tf_mixnet_s": {"DWConvBNAct": 3, "MixedDWConvBNAct": 13, "SqueezeExcite": 13, "BatchNormAct2d": 17},
    # DarkNet-17 (LeakyReLU, slope 0.01): the stem ConvNormAct + 5 stages x (the stride-2 conv_down and
    # one DarkBlock's conv1, conv2); the blocks end in the residual add, no act
    "darknet17": {"BatchNormAct2d": 16},
    # CSPResNet-50 (LeakyReLU): stem + the conv_down of stages 2-4 + 13 bottlenecks x (conv1, conv2) + 2
    # transition convs per stage = 38; conv_exp is linear (cross_linear) and each conv3 feeds the add:
    # lone BNs; the act3 after the add stands alone (a LeakyReLU keeps one tensor already)
    "cspresnet50": {"BatchNormAct2d": 1 + 3 + 26 + 8},
    # MaxViT-nano (GELU): 1 + 2 + 3 + 1 MbConvBlocks: conv2_kxk (dw, k3; stride 2 opening each stage)
    # + norm2 (BN + GELU), SE; BN+GELU: the stem's norm1 + each block's norm1; pre_norm has no act: lone
    "maxvit_nano_rw_256": {"DWConvBNAct": 7, "SqueezeExcite": 7, "BatchNormAct2d": 8},
    # TF port: GELUTanh, Conv2dSame ("tf_same") depthwise convs; 2 + 2 + 5 + 2 blocks
    "maxvit_tiny_tf_224": {"DWConvBNAct": 11, "SqueezeExcite": 11, "BatchNormAct2d": 12},
    # CoAtNet-0 rw: the SE runs between conv2_kxk and norm2 (attn_early): dw convs unfused (reported);
    # BN+GELU: stem + 5 conv blocks x (pre_norm, norm1, norm2)
    "coatnet_0_rw_224": {"DWConvBNAct": 0, "SqueezeExcite": 5, "BatchNormAct2d": 16},
    # EfficientFormer-L1: the stem's 2 conv + BN + ReLU, and fc1 + norm1 + GELU of the 3 + 2 + 6 + 3
    # Meta4D blocks' ConvMlpWithNorm (fc2 + norm2 feeds the residual add: lone); the last block is Meta3D
    "efficientformer_l1": {"BatchNormAct2d": 16},
    # EfficientViT-B0 (MIT, hard-swish): the stem in_conv, the stem DSConv and 2 + 2 MBConvs of stages 1-2
    # (inverted_conv BN + act, dw depth_conv + BN + act), the head's in_conv; stages 3-4 (fewer_norm: 3
    # blocks' inverted_conv / depth_conv without BN) and the head classifier's act: memory-efficient acts
    "efficientvit_b0": {"BatchNormAct2d": 6, "DWConvBNAct": 5, "MemoryEfficientAct": 13},
    # Next-ViT-S: 4 stem ConvNormAct + the ConvAttention (grouped 3x3 + BN + ReLU) of each of the 16
    # NextConvBlocks and the 4 NextTransformerBlocks
    "nextvit_small": {"BatchNormAct2d": 24},
    # ResNeSt-14d (radix 2): 2 deep-stem Sequentials + bn1 / act1, and per bottleneck (4) conv1 + bn1,
    # the SplitAttn's conv + bn0 and its attention fc1 + bn1 (the bottleneck's bn2 is an Identity)
    "resnest14d": {"BatchNormAct2d": 15},
    # conv-norm modules (conv, bn) followed by the block's act. EfficientViT-M0: 3 patch-embed ConvNorms
    # (a Sequential with the ReLUs), 12 + 4 ConvMlp pw1; 42 dw ConvNorms; PatchMerging (one act run
    # twice) is left
    "efficientvit_m0": {"BatchNormAct2d": 19, "DWConvBNAct": 42, "SqueezeExcite": 2},
    # SHViT: 3 patch-embed Conv2dNorms, 11 + 4 FFN pw1, 2 PatchMerging conv1 (+ 2 dw conv2 + act2)
    "shvit_s1": {"BatchNormAct2d": 20, "DWConvBNAct": 17, "SqueezeExcite": 2},
    # TinyViT: patch-embed conv1, MBConv conv1 x2 and PatchMerging conv1 x3 + GELU; dw conv2 + GELU
    "tiny_vit_5m_224": {"BatchNormAct2d": 6, "DWConvBNAct": 15},
    # conv LeViT: 3 stem ConvNorms (LeViT's own ConvNorm class) and 11 LevitMlp ln1 + hard-swish
    "levit_conv_128s": {"BatchNormAct2d": 14, "MemoryEfficientAct": 11},
    # CPUBone: ConvLayer (conv, norm, act): 11 BN + hard-swish (found by fb.find_unfused_bn_act)
    "cpubone_s0": {"BatchNormAct2d": 11, "MemoryEfficientAct": 1},
    # LowFormer: ConvLayer (conv, norm, act): 9 BN + hard-swish, 7 dw
    "lowformer_b0": {"BatchNormAct2d": 9, "DWConvBNAct": 7, "MemoryEfficientAct": 9},
    # EfficientViM: ConvLayer2d (conv, norm, act): 18 dw (2 with ReLU), 11 dense conv BN + ReLU
    "efficientvim_m1": {"BatchNormAct2d": 11, "DWConvBNAct": 18, "SqueezeExcite": 2, "MemoryEfficientAct": 6},
    # iFormer: the Stem's conv1 / conv2 ConvNorms + GELU (19 BN + act elsewhere)
    "iformer_s": {"BatchNormAct2d": 21, "DWConvBNAct": 19},
    # HRNet: the stem's bn1 + act1, bn2 + act2 (HighResolutionNet.forward_features) + 41 in the blocks
    "hrnet_w18_small": {"BatchNormAct2d": 43},
    # legacy Xception: stem bn1, bn2 and exit bn3, bn4 (Xception.forward_features) + 20 in the blocks
    "legacy_xception": {"BatchNormAct2d": 24},
}
# timm.create_model kwargs (the image size of models whose attention windows follow it) and input size
CREATE_KWARGS = {name: dict(img_size=64) for name in ("maxvit_nano_rw_256", "maxvit_tiny_tf_224", "coatnet_0_rw_224",
                                                      "levit_conv_128s")}
INPUT_SHAPES = {"efficientformer_l1": (1, 3, 224, 224)}  # its attention bias table is fixed to 7 x 7 tokens


@pytest.mark.parametrize("name", list(CASES))
def test_patched_matches_unpatched(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **CREATE_KWARGS.get(name, {}))
    report = check_patch_equivalence(model, INPUT_SHAPES.get(name, (2, 3, 64, 64)))
    expected = CASES[name]
    counts = report.counts()
    for kind, n in expected.items():
        assert counts.get(kind, 0) == n, f"{name}: {kind} x{counts.get(kind, 0)} != {n}\n{report}"


def test_explicit_backend_leaves_what_it_cannot_run_unfused_at_patch_time():
    """backend="cpu" has depthwise kernels for k 3 / 5 / 7 only: MixNet's MixedConv2d with a k9 or
    k11 group is reported at patch time (its BN + act still fuse), not a failure at the first forward."""
    if "cpu" not in fb.available_backends():
        pytest.skip("the cpu backend is not built")
    torch.manual_seed(0)
    model = timm.create_model("mixnet_s", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    report = fb.patch(model, backend="cpu")
    unfused = [s for s in report.skipped if "backend 'cpu' cannot run it" in s.reason]
    # stage 4's two k3.5.7.9 blocks, stage 5's k3.5.7.9.11 and two k3.5.7.9 blocks
    assert len(unfused) == 5 and all("k=9" in s.reason for s in unfused), str(report)
    counts = report.counts()
    assert counts["MixedDWConvBNAct"] == 13 - 5 and counts["BatchNormAct2d"] == 17 + 5, str(report)
    assert ((model(x) - expected).norm() / expected.norm()).item() < 1e-5
    model.train()(torch.randn(2, 3, 64, 64)).sum().backward()


def test_unpatch_keeps_tensors_set_on_nested_fused_modules():
    """A parameter replaced on the patched model (here a MixNet group's conv weight and an SE
    conv's, nested one level down in the fused modules) is what the restored model holds."""
    torch.manual_seed(0)
    model = timm.create_model("mixnet_s", num_classes=10).eval()
    fb.patch(model)
    block = model.blocks[2][0]
    assert type(block.conv_dw).__name__ == "MixedDWConvBNAct"
    group_weight = torch.nn.Parameter(torch.randn_like(block.conv_dw._modules["1"].weight))
    se_weight = torch.nn.Parameter(torch.randn_like(block.se.conv_reduce.weight))
    block.conv_dw._modules["1"].weight = group_weight
    block.se.conv_reduce.weight = se_weight
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    fb.unpatch(model)
    assert type(block.conv_dw).__name__ == "MixedConv2d"
    assert block.conv_dw._modules["1"].weight is group_weight and block.se.conv_reduce.weight is se_weight
    assert ((model(x) - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("name", ["efficientnet_b0", "mixnet_s"])
def test_recompute_depthwise_saves_less_and_changes_nothing_else(name):
    """patch(recompute="depthwise"): the fused depthwise outputs are recomputed in backward instead of
    being kept by the SE / projection conv; outputs, gradients and running stats as unpatched."""
    import copy

    from fastblocks.utils import saved_tensor_bytes

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    check_patch_equivalence(model, recompute="depthwise")
    x = torch.randn(4, 3, 128, 128)  # activations well above the parameters (saved by the graph too)
    default, lean = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    fb.patch(default, backend="eager")
    fb.patch(lean, backend="eager", recompute="depthwise")
    ratio = saved_tensor_bytes(lambda: lean(x)) / saved_tensor_bytes(lambda: default(x))
    assert ratio < 0.9, ratio
    fb.patch(lean, backend="eager")  # patching again sets the level again
    assert saved_tensor_bytes(lambda: lean(x)) == saved_tensor_bytes(lambda: default(x))


def test_swapped_forward_of_another_library_version_is_not_used(monkeypatch):
    """A block whose forward fastblocks replaces is only patched when the installed forward is the
    one the replacement mirrors (source fingerprint); otherwise it is reported and left as it is."""
    from timm.models import dla

    torch.manual_seed(0)
    original = dla.DlaBasic.forward

    def changed_forward(self, x, shortcut=None, children=None):  # e.g. a later timm version
        return original(self, x, shortcut, children)

    monkeypatch.setattr(dla.DlaBasic, "forward", changed_forward)
    model = timm.create_model("dla34", num_classes=10)
    report = check_patch_equivalence(model)
    skipped = [s for s in report.skipped if s.original == "DlaBasic"]
    assert len(skipped) == 12 and all("not the version fastblocks mirrors" in s.reason for s in skipped), str(report)
    assert report.counts()["BatchNormAct2d"] == 3 + 6  # the stem Sequentials, the DlaRoots without a residual
    assert not any(type(m).__name__.startswith("Fused") for m in model.modules())


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


# Re-parameterisable (MobileOne, RepViT, GhostNetV3): timm's reparameterize_model folds the branches'
# conv / BN weights; on a patched model the blocks put their original modules back first.
# RepViT / TinyViT: ConvNorm.fuse() folds conv + BN, and the act its BN took comes back one level up.
@pytest.mark.parametrize("name", ["mobileone_s0", "repvit_m0_9", "ghostnetv3_050", "tiny_vit_5m_224", "efficientvim_m1"])
def test_reparameterize_patched_model(name):
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    model(x)  # running stats away from their init, so folding them is tested
    model.eval()
    expected = reparameterize_model(model)(x)
    patched = fb.patch(model, backend="eager")
    assert patched.counts().get("DWConvBNAct", 0) > 0, patched
    deployed = reparameterize_model(model)  # a deep copy; the patched model stays usable
    err = ((deployed(x) - expected).norm() / expected.norm()).item()
    assert err < 1e-5, err
    assert not any(type(m).__module__.startswith("fastblocks.nn") and type(m).__name__ == "DWConvBNAct"
                   for m in deployed.modules())
    assert any(type(m).__name__ == "DWConvBNAct" for m in model.modules())
    reparameterize_model(model, inplace=True)
    fb.unpatch(model)  # what the re-parameterised blocks already restored is not restored twice
    assert not any(type(m).__module__.startswith("fastblocks") for m in model.modules())
    assert ((model(x) - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("name", ["resnet18", "ecaresnet26t", "legacy_seresnet18", "dla34", "res2net50_14w_8s",
                                  "torchvision.densenet121", "torchvision.resnet50", "repvit_m0_9", "efficientvit_m0"])
def test_resnet_bn_relu_outputs_are_not_kept_for_backward(name):
    """A fused BN + ReLU (GELU: RepViT) output that the next conv saves is recomputed from the BN
    input (which is saved anyway): training saves at least one tensor less per fused BN than the
    unpatched model."""
    import copy

    from fastblocks.utils import saved_tensor_bytes

    torch.manual_seed(0)
    if name.startswith("torchvision."):
        tv = pytest.importorskip("torchvision")
        model = getattr(tv.models, name.split(".")[1])(num_classes=10).train()
    else:
        model = timm.create_model(name, num_classes=10).train()
    patched = copy.deepcopy(model)
    report = fb.patch(patched, backend="eager")
    fused = {r.path for r in report.replaced if r.replacement == "BatchNormAct2d"}
    out_bytes = []
    for path, module in model.named_modules():
        if path in fused:
            module.register_forward_hook(lambda m, i, o: out_bytes.append(o.numel() * o.element_size()))
    x = torch.randn(2, 3, 64, 64)
    unpatched_bytes = saved_tensor_bytes(lambda: model(x))
    assert len(out_bytes) == len(fused) >= 9
    assert unpatched_bytes - saved_tensor_bytes(lambda: patched(x)) >= sum(out_bytes)
