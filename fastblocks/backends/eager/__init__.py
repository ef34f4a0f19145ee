"""The ``eager`` backend: memory-efficient PyTorch implementations registered for every op.

Forward saves only inputs and per-channel statistics (see each op's docstring); backward
recomputes the rest with ATen ops.
"""

from . import activation, bn_act, dwconv_bn_act, gate_scale, squeeze_excite, eca  # noqa: F401  (registers)
