"""The fused ops, each a ``torch.library`` custom op in the ``fastblocks`` namespace."""

from .activation import activation, hard_swish, silu
from .bn_act import bn_act
from .dwconv_bn_act import dwconv_bn_act
from .eca import eca
from .gate_scale import gate_scale
from .squeeze_excite import squeeze_excite
from .sync_batchnorm import sync_bn_act, sync_dwconv_bn_act

__all__ = ["dwconv_bn_act", "bn_act", "squeeze_excite", "eca", "gate_scale", "silu", "hard_swish", "activation",
           "sync_bn_act", "sync_dwconv_bn_act"]
