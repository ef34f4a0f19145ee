"""ONNX export of patched models: both exporters, standard ONNX ops only, ONNX Runtime matches PyTorch.

Each model is exported once per exporter, patched and unpatched (the dynamo exporter takes ~10 s of
CPU per export), at batch 2 with a dynamic batch dimension, and the patched export runs in ONNX
Runtime at batch 1 and 5. With ``-o junit_family=xunit1 --junitxml=FILE`` each model's export time,
node counts (patched, unpatched) and max abs differences are recorded in FILE.
"""

from __future__ import annotations

import copy
import io
import time
import warnings

import pytest
import torch
from torch import nn

import fastblocks as fb
from fastblocks.onnx import TrainingModeExportError
from tests.helpers import rel_err

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

STANDARD_DOMAINS = {"", "ai.onnx"}
SIZE = 48
EXPORT_BATCH, RUN_BATCHES = 2, (1, 5)


def _timm(name):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name, pretrained=False)


def _torchvision_mobilenet_v2():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.mobilenet_v2()


def _efficientnet_pytorch_b0():
    efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
    return efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0")


def _zoo_eca_mobilenet_v2():
    from fastblocks import zoo

    return zoo.create("eca_mobilenet_v2")


MODELS = {
    "timm_efficientnet_b0": _timm("efficientnet_b0"),
    "timm_mobilenetv3_large_100": _timm("mobilenetv3_large_100"),
    "timm_rexnet_100": _timm("rexnet_100"),
    "torchvision_mobilenet_v2": _torchvision_mobilenet_v2,
    "efficientnet_pytorch_b0": _efficientnet_pytorch_b0,
    "zoo_eca_mobilenet_v2": _zoo_eca_mobilenet_v2,
}
EXPORTERS = ("torchscript", "dynamo")


def randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine params, so a wrongly folded or dropped BN shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(c, generator=gen) - 0.5)
    return model


def export(model: nn.Module, x: torch.Tensor, exporter: str, **kw):
    """The ONNX ModelProto of ``model`` exported on ``x`` with a dynamic batch dimension."""
    names = {"input_names": ["x"], "dynamic_axes": {"x": {0: "batch"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            return torch.onnx.export(model, (x,), dynamo=True, verbose=False, **names, **kw).model_proto
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamo=False, **names, **kw)
    return onnx.load_from_string(buffer.getvalue())


def run_onnx(proto, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def custom_domains(proto) -> set:
    return ({n.domain for n in proto.graph.node} | {o.domain for o in proto.opset_import}) - STANDARD_DOMAINS


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_patched_model_exports_standard_onnx(name, exporter, record_property):
    """One test per model and exporter, so each export happens once (also under pytest-xdist)."""
    torch.manual_seed(0)
    model = randomize_bn(MODELS[name](), seed=1).eval()
    patched = copy.deepcopy(model)
    assert fb.patch(patched).replaced, f"fb.patch fused nothing in {name}"
    x = torch.randn(EXPORT_BATCH, 3, SIZE, SIZE)
    start = time.perf_counter()
    proto = export(patched, x, exporter)
    record_property("export_s", round(time.perf_counter() - start, 2))
    unpatched = export(model, x, exporter)

    assert not custom_domains(proto)
    assert not [n.op_type for n in proto.graph.node if "fastblocks" in n.op_type.lower()]
    onnx.checker.check_model(proto)
    record_property("nodes", (len(proto.graph.node), len(unpatched.graph.node)))
    assert len(proto.graph.node) <= len(unpatched.graph.node), "patched graph larger than unpatched"

    for batch in RUN_BATCHES:
        x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = model(x)
        out = run_onnx(proto, x)
        assert out.shape == ref.shape
        diff = float((out - ref).abs().max())
        record_property(f"max_abs_diff_batch{batch}", diff)
        assert rel_err(out, ref) <= 1e-5, f"batch {batch}: max abs diff {diff:.3g}"


# ----------------------------------------------------------------------------- every op, every act

class AllOps(nn.Module):
    """One call of every fused op, with the activations, gates and paddings the symbolics map."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)

        def p(*shape, offset=0.0):
            return nn.Parameter(torch.rand(*shape, generator=gen) + offset)

        self.w3, self.w5 = p(c, 1, 3, 3, offset=-0.5), p(c, 1, 5, 5, offset=-0.5)
        self.gamma, self.beta = p(c, offset=0.5), p(c, offset=-0.5)
        self.register_buffer("mean", torch.rand(c, generator=gen) - 0.5)
        self.register_buffer("var", torch.rand(c, generator=gen) + 0.5)
        self.wr, self.br = p(2, c, 1, 1, offset=-0.5), p(2, offset=-0.5)
        self.we, self.be = p(c, 2, offset=-0.5), p(c, offset=-0.5)
        self.eca_w = p(1, 1, 3, offset=-0.5)

    def forward(self, x):
        bn = dict(bn_weight=self.gamma, bn_bias=self.beta, running_mean=self.mean, running_var=self.var,
                  training=self.training)
        x = fb.ops.dwconv_bn_act(x, self.w3, act="relu6", **bn)
        x = fb.ops.dwconv_bn_act(x, self.w5, stride=2, padding="tf_same", act="hardswish", **bn)
        x = fb.ops.dwconv_bn_act(x, self.w3, padding=0, act="gelu", **bn)
        x = fb.ops.bn_act(x, act="leaky_relu", **bn)
        x = fb.ops.bn_act(x, None, None, self.mean, self.var, act="gelu_tanh", training=self.training)
        x = fb.ops.squeeze_excite(x, self.wr, self.br, self.we, self.be, act="silu", gate="hard_sigmoid")
        x = fb.ops.eca(x, self.eca_w)
        x = fb.ops.gate_scale(x, x.mean((2, 3), keepdim=True), gate="sigmoid")
        return fb.ops.silu(x) + fb.ops.hard_swish(x)


@pytest.mark.parametrize("exporter, opset", [("torchscript", 17), ("torchscript", None), ("dynamo", 17),
                                             ("dynamo", None)])
def test_every_op_exports_at_opset(exporter, opset):
    model = AllOps().eval()
    x = torch.randn(EXPORT_BATCH, 6, 15, 13)
    proto = export(model, x, exporter, **({} if opset is None else {"opset_version": opset}))
    assert not custom_domains(proto)
    x = torch.randn(3, 6, 15, 13)
    with torch.no_grad(), fb.backend("reference"):
        ref = model(x)
    assert rel_err(run_onnx(proto, x), ref) <= 1e-5


def _messages(exc: BaseException) -> str:
    text = []
    while exc is not None:
        text.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(text)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_training_mode_export_names_model_eval(exporter):
    model = AllOps().train()
    # the TorchScript exporter exports in eval mode unless told to keep training mode
    kw = {"training": torch.onnx.TrainingMode.TRAINING} if exporter == "torchscript" else {}
    with pytest.raises(Exception) as info:
        export(model, torch.randn(EXPORT_BATCH, 6, 15, 13), exporter, **kw)
    assert "model.eval()" in _messages(info.value)
    chain = info.value
    while chain is not None and not isinstance(chain, TrainingModeExportError):
        chain = chain.__cause__ or chain.__context__
    assert chain is not None
