import pytest
import torch
from torch import nn

import fastblocks as fb
from fastblocks.patch import UnfusedPair


class CustomBlock(nn.Module):
    """A forward fb.patch has no rule for: its BN -> act pairs stay unfused."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.SiLU()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4), nn.LeakyReLU(0.2)
        self.bn3, self.relu = nn.BatchNorm2d(4), nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act1(self.bn1(self.conv1(x)))
        z = self.act2(self.bn2(self.conv2(y)))
        w = self.bn3(z)
        w += y  # in place: the ReLU gets BN output + residual, not the BN's output
        return self.relu(w)


def test_finds_the_pairs_a_custom_forward_runs_and_changes_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(CustomBlock(), nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.BatchNorm2d(4), nn.ReLU6())
    x = torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    before = fb.find_unfused_bn_act(model, x)
    assert before == [
        UnfusedPair("0.bn1", "0.act1", "silu", True),
        UnfusedPair("0.bn2", "0.act2", "LeakyReLU(negative_slope=0.2): the kernels fuse slope 0.01 only", False),
        UnfusedPair("2", "3", "relu6", True),
    ]
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # no running-stat update
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

    # the Sequential's dw conv + BN + ReLU6 fuse; CustomBlock's forward is unknown (its SiLU becomes a
    # memory-efficient one, still after an unfused BN)
    fb.patch(model, backend="eager")
    assert fb.find_unfused_bn_act(model, x) == before[:2]
    fb.unpatch(model)
    assert fb.find_unfused_bn_act(model, input=x) == before  # keyword arguments reach the forward too


def test_patched_timm_models_leave_no_fusable_pair():
    timm = pytest.importorskip("timm")
    for name in ("resnet18", "efficientnet_b0", "repvit_m0_9"):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10)
        fb.patch(model, backend="eager")
        assert fb.find_unfused_bn_act(model, torch.randn(1, 3, 64, 64)) == [], name


def test_bad_model():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        fb.find_unfused_bn_act("resnet18", torch.randn(1, 3, 8, 8))


def test_command_line_lists_the_pairs_and_fails_when_a_fusable_one_is_left(capsys):
    pytest.importorskip("timm")
    from fastblocks.find_unfused import main

    assert main(["resnet18", "--size", "64"]) == 0
    assert "resnet18: 0 unfused BN -> act pair(s)" in capsys.readouterr().out
    assert main(["efficientvit_m0", "--size", "64"]) == 1  # PatchMerging runs one act module twice: left
    out = capsys.readouterr().out
    assert "efficientvit_m0: 2 unfused BN -> act pair(s)" in out
    assert "stages.1.downsample.patchmerge.conv1.bn -> stages.1.downsample.patchmerge.act: relu" in out
