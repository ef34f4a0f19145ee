"""Triton kernels and their launchers, one file per op (used by ``fastblocks.backends.triton``).

- :mod:`fastblocks.kernels.dwconv_bn_act`: depthwise conv -> BN -> act, forward (stats / normalise passes)
  and backward (sums / dz+dW / dx passes); also hosts the kernel family bn_act reuses.
- :mod:`fastblocks.kernels.bn_act`: BN -> act (the no-conv instance of the same kernels).
- :mod:`fastblocks.kernels.gate_scale`: pooling, gate-scale forward and one-pass gate-scale backward (SE, ECA).
- :mod:`fastblocks.kernels.activation`: element-wise activations, forward and memory-efficient backward.
- :mod:`fastblocks.kernels._common`: interpreter detection, autotune wrapper, poisoned allocation,
  activation / gate math, deterministic row reductions.

Importing a submodule imports triton; under ``TRITON_INTERPRET=1`` (read at import) the kernels
run on CPU tensors with one fixed config instead of autotuning.
"""
