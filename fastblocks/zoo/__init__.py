"""fastblocks.zoo -- seed architectures that timm / torchvision lack.

Use :func:`create` (``fastblocks.zoo.create("eca_mobilenet_v2", num_classes=10)``)
and :func:`list_models`.  Models: ECA-MobileNetV2, ECA-ResNet 18/34/50/101,
ReXNet-lite, ShuffleNet V1 (g=3, 8), pre-activation SE-ResNet-18 and NiN.

A plain MobileNetV1 is *not* provided: timm 1.x already has it
(``timm.create_model("mobilenetv1_100")``, 4,231,976 parameters, the same
count as seed 003's MobileNetV1 with 1000 classes).
"""

from __future__ import annotations

# Submodules keep their names (``fastblocks.zoo.nin`` is the module, not the
# constructor); constructors whose name equals their module's name are reached
# through ``create(...)`` or the module, e.g. ``fastblocks.zoo.nin.nin()``.
from . import eca_mobilenet_v2, eca_resnet, nin, preact_se_resnet, rexnet_lite, shufflenet_v1  # registers models
from .eca_mobilenet_v2 import EcaInvertedResidual, EcaMobileNetV2
from .eca_resnet import (
    EcaBasicBlock,
    EcaBottleneck,
    EcaResNet,
    eca_resnet18,
    eca_resnet34,
    eca_resnet50,
    eca_resnet101,
)
from .layers import ChannelShuffle, EcaLayer, SqueezeExcite, conv_bn_act, make_divisible
from .nin import NiN
from .preact_se_resnet import PreActSEBlock, PreActSEResNet, preact_se_resnet18
from .registry import create, list_models, register_model
from .rexnet_lite import (
    RexLinearBottleneck,
    ReXNetLite,
    rexnet_lite_1_0,
    rexnet_lite_1_3,
    rexnet_lite_1_5,
    rexnet_lite_2_0,
)
from .shufflenet_v1 import ShuffleNetV1, ShuffleUnit, shufflenet_v1_g3, shufflenet_v1_g8

__all__ = [
    "ChannelShuffle",
    "EcaBasicBlock",
    "EcaBottleneck",
    "EcaInvertedResidual",
    "EcaLayer",
    "EcaMobileNetV2",
    "EcaResNet",
    "NiN",
    "PreActSEBlock",
    "PreActSEResNet",
    "ReXNetLite",
    "RexLinearBottleneck",
    "ShuffleNetV1",
    "ShuffleUnit",
    "SqueezeExcite",
    "conv_bn_act",
    "create",
    "eca_mobilenet_v2",
    "eca_resnet",
    "eca_resnet18",
    "eca_resnet34",
    "eca_resnet50",
    "eca_resnet101",
    "list_models",
    "make_divisible",
    "nin",
    "preact_se_resnet",
    "preact_se_resnet18",
    "register_model",
    "rexnet_lite",
    "rexnet_lite_1_0",
    "rexnet_lite_1_3",
    "rexnet_lite_1_5",
    "rexnet_lite_2_0",
    "shufflenet_v1",
    "shufflenet_v1_g3",
    "shufflenet_v1_g8",
]
