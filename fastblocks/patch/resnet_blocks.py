"""ResNet blocks whose one ReLU module runs after several BNs (torchvision BasicBlock / Bottleneck,
timm's legacy SENet and DLA blocks): their bn1 (and bn2) become BatchNormAct2d(relu), and the block's class
becomes a subclass whose forward is the original one without the ReLU after those BNs. Every module
and parameter stays where it was."""

from __future__ import annotations


class TorchvisionBasicBlock:
    """torchvision.models.resnet.BasicBlock.forward; bn1 applies the ReLU."""

    fused_bns = ("bn1",)

    def forward(self, x):
        identity = x
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TorchvisionBottleneck:
    """torchvision.models.resnet.Bottleneck.forward; bn1 and bn2 apply the ReLU."""

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


class LegacySEBottleneck:
    """timm.models.senet.Bottleneck.forward (SEBottleneck, SEResNetBottleneck, SEResNeXtBottleneck);
    bn1 and bn2 apply the ReLU."""

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


class LegacySEResNetBlock:
    """timm.models.senet.SEResNetBlock.forward; bn1 and bn2 apply the ReLU."""

    fused_bns = ("bn1", "bn2")

    def forward(self, x):
        shortcut = x
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out = self.se_module(out) + shortcut
        return self.relu(out)


class DlaBasic:
    """timm.models.dla.DlaBasic.forward; bn1 applies the ReLU."""

    fused_bns = ("bn1",)

    def forward(self, x, shortcut=None, children=None):
        if shortcut is None:
            shortcut = x
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        out += shortcut
        return self.relu(out)


class DlaBottleneck:
    """timm.models.dla.DlaBottleneck.forward; bn1 and bn2 apply the ReLU."""

    fused_bns = ("bn1", "bn2")

    def forward(self, x, shortcut=None, children=None):
        if shortcut is None:
            shortcut = x
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        out += shortcut
        return self.relu(out)


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
}
