"""Blocks whose forward is swapped so that BNs can take the ReLU: ResNet-style blocks whose one ReLU
module runs after several BNs (torchvision BasicBlock / Bottleneck, timm's legacy SENet, DLA and
Res2Net blocks) and torchvision's BasicConv2d (GoogLeNet, Inception v3: a functional ReLU). Their
bn1 (bn2, ...) become BatchNormAct2d(relu), and the block's class becomes a subclass whose forward is
the original one without the ReLU after those BNs. Every module and parameter stays where it was.
Each forward lists the fingerprints (``patcher.forward_fingerprint``) of the original forwards it
was written from: another version of the library is left unpatched, with the reason."""

from __future__ import annotations

import torch

from .._recompute import offer_channel_slices


class _SharedReluForward:
    """Base of the forwards below: ``fused_bns`` become BatchNormAct2d(relu); ``relu_module``: the
    block has a ReLU module ``relu`` (checked to be one), else its ReLU is functional; ``MIRRORS``:
    the fingerprints of the original forwards."""

    MIRRORS: set = set()
    fused_bns: tuple = ()
    relu_module = True


class TorchvisionBasicBlock(_SharedReluForward):
    """torchvision.models.resnet.BasicBlock.forward; bn1 applies the ReLU."""

    MIRRORS = {"faaf7fa861b63ee6"}  # torchvision 0.29
    fused_bns = ("bn1",)

    def forward(self, x):
        identity = x
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TorchvisionBottleneck(_SharedReluForward):
    """torchvision.models.resnet.Bottleneck.forward; bn1 and bn2 apply the ReLU."""

    MIRRORS = {"502ff930576dc006"}  # torchvision 0.29
    fused_bns = ("bn1", "bn2")

    def forward(self, x):
        identity = x
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class LegacySEBottleneck(_SharedReluForward):
    """timm.models.senet.Bottleneck.forward (SEBottleneck, SEResNetBottleneck, SEResNeXtBottleneck);
    bn1 and bn2 apply the ReLU."""

    MIRRORS = {"e9b4656f447a4cea"}  # timm 1.0
    fused_bns = ("bn1", "bn2")

    def forward(self, x):
        shortcut = x
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out = self.se_module(out) + shortcut
        return self.relu(out)


class LegacySEResNetBlock(_SharedReluForward):
    """timm.models.senet.SEResNetBlock.forward; bn1 and bn2 apply the ReLU."""

    MIRRORS = {"de61e029d9df5e3f"}  # timm 1.0
    fused_bns = ("bn1", "bn2")

    def forward(self, x):
        shortcut = x
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out = self.se_module(out) + shortcut
        return self.relu(out)


class DlaBasic(_SharedReluForward):
    """timm.models.dla.DlaBasic.forward; bn1 applies the ReLU."""

    MIRRORS = {"4fa86406c2c39f40"}  # timm 1.0
    fused_bns = ("bn1",)

    def forward(self, x, shortcut=None, children=None):
        if shortcut is None:
            shortcut = x
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        out += shortcut
        return self.relu(out)


class DlaBottleneck(_SharedReluForward):
    """timm.models.dla.DlaBottleneck.forward; bn1 and bn2 apply the ReLU."""

    MIRRORS = {"7ca2953b889be1dc"}  # timm 1.0
    fused_bns = ("bn1", "bn2")

    def forward(self, x, shortcut=None, children=None):
        if shortcut is None:
            shortcut = x
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        out += shortcut
        return self.relu(out)


def _multi_scale(block, out: torch.Tensor) -> torch.Tensor:
    """The Res2Net scales of timm's Bottle2neck and DlaBottle2neck (same code in both): bn1's output
    split into ``width``-channel groups, each conv + bn (+ ReLU, fused) over the group plus the
    previous scale's output; the last group pooled or passed; concatenated."""
    spx = torch.split(out, block.width, 1)
    offer_channel_slices(spx, out)  # the convs save these views: recompute them from bn1's input
    spo = []
    sp = spx[0]
    for i, (conv, bn) in enumerate(zip(block.convs, block.bns)):
        sp = spx[i] if i == 0 or block.is_first else sp + spx[i]
        spo.append(bn(conv(sp)))
        sp = spo[-1]
    if block.scale > 1:
        spo.append(block.pool(spx[-1]) if block.pool is not None else spx[-1])
    return torch.cat(spo, 1)


class Res2NetBottle2neck(_SharedReluForward):
    """timm.models.res2net.Bottle2neck.forward; bn1 and every bns[i] apply the ReLU."""

    MIRRORS = {"6f9b7cd1b000247a"}  # timm 1.0
    fused_bns = ("bn1", "bns.*")

    def forward(self, x):
        shortcut = x
        out = self.drop_block(_multi_scale(self, self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out += shortcut
        return self.relu(out)


class DlaBottle2neck(_SharedReluForward):
    """timm.models.dla.DlaBottle2neck.forward (DLA-X Res2Net blocks); bn1 and every bns[i] apply the ReLU."""

    MIRRORS = {"3e6f577ce8ff5db9"}  # timm 1.0
    fused_bns = ("bn1", "bns.*")

    def forward(self, x, shortcut=None, children=None):
        if shortcut is None:
            shortcut = x
        out = _multi_scale(self, self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(out))
        out += shortcut
        return self.relu(out)


class TorchvisionBasicConv2d(_SharedReluForward):
    """torchvision.models.googlenet / inception BasicConv2d.forward (conv, bn, F.relu); bn applies it."""

    MIRRORS = {"b0afe1cbc76e401d"}  # torchvision 0.29
    fused_bns = ("bn",)
    relu_module = False  # the ReLU is functional, not a module

    def forward(self, x):
        return self.bn(self.conv(x))


# qualname -> the forward that replaces the block's own
SHARED_RELU_BLOCKS = {
    "torchvision.models.resnet.BasicBlock": TorchvisionBasicBlock,
    "torchvision.models.resnet.Bottleneck": TorchvisionBottleneck,
    "timm.models.senet.SEBottleneck": LegacySEBottleneck,
    "timm.models.senet.SEResNetBottleneck": LegacySEBottleneck,
    "timm.models.senet.SEResNeXtBottleneck": LegacySEBottleneck,
    "timm.models.senet.SEResNetBlock": LegacySEResNetBlock,
    "timm.models.dla.DlaBasic": DlaBasic,
    "timm.models.dla.DlaBottleneck": DlaBottleneck,
    "timm.models.res2net.Bottle2neck": Res2NetBottle2neck,
    "timm.models.dla.DlaBottle2neck": DlaBottle2neck,
    "torchvision.models.googlenet.BasicConv2d": TorchvisionBasicConv2d,
    "torchvision.models.inception.BasicConv2d": TorchvisionBasicConv2d,
}
