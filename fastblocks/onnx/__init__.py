"""ONNX export of patched models: every fused op becomes standard ONNX ops (see docs/onnx.md).

``import fastblocks`` calls :func:`register`, so ``torch.onnx.export(model, (x,), ...)`` works on a
patched model in eval mode with either exporter and no extra argument:

- the dynamo exporter (``dynamo=True``, the default): while it runs, functional tracing records
  each fused op's eval form in plain torch ops (:mod:`.forms`), which it translates with its own
  ATen functions;
- the TorchScript exporter (``dynamo=False``): symbolics registered with
  ``torch.onnx.register_custom_op_symbolic`` (:mod:`.symbolics`).

Registering imports ``torch.onnx`` (torch's exporter package), not onnx or onnxscript; the
exporter's symbolic modules the symbolics call are imported at the first TorchScript export.
"""

from __future__ import annotations

import sys

import torch

from ..ops import _capture
from .forms import FORMS, TrainingModeExportError

__all__ = ["register", "TrainingModeExportError"]

_REGISTERED = False


def _exporting() -> bool:
    """The dynamo exporter is running (the TorchScript one traces with torch.jit instead). Asked at
    every functional trace of a fused op: without torch.onnx imported, nothing is exporting."""
    exporter = sys.modules.get("torch.onnx")
    return exporter is not None and exporter.is_in_onnx_export() and not torch.jit.is_tracing()


def register() -> None:
    """Register the export forms and the TorchScript symbolics of every fused op (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from .symbolics import MIN_OPSET, SYMBOLICS

    for name, form in FORMS.items():
        _capture.register_form(name, form, _exporting)
    for name, symbolic in SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, symbolic, MIN_OPSET)
    _REGISTERED = True
