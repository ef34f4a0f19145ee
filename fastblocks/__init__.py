"""fastblocks: fused, memory-efficient kernels for efficient-CNN blocks.

    import fastblocks as fb
    y = fb.ops.dwconv_bn_act(x, w, gamma, beta, rm, rv, training=True, act="silu")
    fb.set_backend("eager")            # or: with fb.backend("reference"): ...
    report = fb.patch(model)           # swap fused modules into a timm / torchvision model
"""

from . import nn, ops, utils
from ._dispatch import (BackendUnavailableError, available_backends, backend, get_backend,
                        set_backend)
from .backends import load_all as _load_backends
from .onnx import register as _register_onnx_export
from .patch import PatchReport, find_unfused_bn_act, patch, unpatch

_load_backends()
_register_onnx_export()

__version__ = "0.1.0"

__all__ = ["ops", "nn", "utils", "patch", "unpatch", "PatchReport", "find_unfused_bn_act", "available_backends",
           "set_backend", "get_backend", "backend", "BackendUnavailableError", "__version__"]
