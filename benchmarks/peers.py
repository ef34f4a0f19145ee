"""ONNX Runtime and OpenVINO as inference peers of the model benchmark.

The model as built (never patched) is exported to ONNX with the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``, opset 17, eval mode, static shapes at the benchmark's
batch) and run on the CPU by:

- ``onnxruntime``: CPUExecutionProvider, ``intra_op_num_threads`` = the benchmark's thread count,
  ``inter_op_num_threads`` = 1, graph optimisation level ALL;
- ``openvino``: the ``CPU`` device, ``INFERENCE_PRECISION_HINT`` = f32, ``INFERENCE_NUM_THREADS`` =
  the benchmark's thread count.

The exported graph takes a contiguous NCHW float32 array whatever the layout of the benchmark's
input (both runtimes choose their own internal layouts), so a run's channels_last setting does not
apply to these rows. Both runtimes are optional (the ``bench`` extra); a missing one is reported,
not an error.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
import tempfile
import warnings
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # the report imports PEERS: torch and numpy are imported where they are used
    import numpy as np
    import torch
    from torch import nn

PEERS = ("onnxruntime", "openvino")
OPSET = 17


def unavailable(name: str) -> Optional[str]:
    """Why the peer ``name`` cannot run here (None when it can)."""
    if name not in PEERS:
        raise ValueError(f"name: expected one of {PEERS}, got {name!r}")
    if importlib.util.find_spec(name) is None:
        return f"{name} is not installed (pip install {name}, or the bench extra)"
    return None


def version(name: str) -> Optional[str]:
    """The installed version of the peer's package (None when it is missing)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def export_onnx(model: nn.Module, x: torch.Tensor, path: str) -> None:
    """Write ``model`` (a copy, in eval mode, NCHW weights) traced at ``x``'s shape to ``path``."""
    import torch

    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    # the TorchScript exporter is deprecated in favour of dynamo=True, chosen here on purpose
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x.contiguous(),), path, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"], do_constant_folding=True)


def _onnxruntime(path: str, x: np.ndarray, threads: int) -> Callable[[], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    runner = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {runner.get_inputs()[0].name: x}
    return lambda: runner.run(None, feed)[0]


def _openvino(path: str, x: np.ndarray, threads: int) -> Callable[[], np.ndarray]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(threads)})
    request = compiled.create_infer_request()

    def call() -> np.ndarray:
        # share_inputs: no copy of the input per call (ONNX Runtime reads the array in place too)
        return request.infer({0: x}, share_inputs=True)[0]

    return call


_BUILDERS = {"onnxruntime": _onnxruntime, "openvino": _openvino}


def build(name: str, model: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], np.ndarray]:
    """One inference call of ``model`` on input ``x`` (N, 3, H, W) through the peer ``name``: a
    function returning the logits as a float32 array. The exported file is deleted once loaded."""
    if name not in _BUILDERS:
        raise ValueError(f"name: expected one of {PEERS}, got {name!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive int, got {threads!r}")
    import numpy as np

    x_np = np.ascontiguousarray(x.detach().cpu().float().numpy())
    with tempfile.TemporaryDirectory(prefix="fastblocks-peer-") as folder:
        path = os.path.join(folder, "model.onnx")
        export_onnx(model, x.detach().cpu().float(), path)
        return _BUILDERS[name](path, x_np, threads)
