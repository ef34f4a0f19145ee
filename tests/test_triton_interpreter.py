"""The ``triton`` backend's kernels, run on CPU tensors through Triton's interpreter.

``TRITON_INTERPRET`` must be set before triton is imported, which a pytest process that already
imported triton cannot guarantee; so the cases run in a worker subprocess started with
``TRITON_INTERPRET=1 FASTBLOCKS_POISON=1`` (outputs are filled with NaN before the kernels run,
so an unwritten element fails the comparison). One worker per pytest process (xdist workers
each get their own) receives one case per test as a JSON line and answers with the result.

Every case compares against the float64 reference with ``tests.helpers.compare_with_reference`` (output,
every gradient, running stats). ``run_case`` is also used by ``test_triton_gpu.py`` on CUDA.

Run one case by hand:  TRITON_INTERPRET=1 FASTBLOCKS_POISON=1 python tests/test_triton_interpreter.py <case-id>
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
import traceback

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INTERP_BLOCKS_ENV = "FASTBLOCKS_TRITON_INTERP_BLOCKS"  # kernels._common reads it per launch
CASE_TIMEOUT_S = 180
# fastblocks._act.ACTIVATIONS, spelled out: this module must not import fastblocks before the worker
# sets TRITON_INTERPRET (test_cases_cover_every_config checks the two agree).
ACTS = ["silu", "relu", "relu6", "hardswish", "leaky_relu", "gelu", "gelu_tanh", "identity"]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}


# ----------------------------------------------------------------------------------------------
# Cases: JSON-able dicts. "op" picks the builder; the rest configures it.
# ----------------------------------------------------------------------------------------------

def _dw(shape, k, stride, padding, training, act, cl, dtype="float32", **extra):
    return dict(op="dwconv_bn_act", shape=shape, k=k, stride=stride, padding=padding, training=training,
                act=act, cl=cl, dtype=dtype, **extra)


def _bn(shape, training, act, cl, dtype="float32", **extra):
    return dict(op="bn_act", shape=shape, training=training, act=act, cl=cl, dtype=dtype, **extra)


CASES = {
    # dwconv_bn_act: each k / stride / padding mode / act, train and eval, both layouts.
    "dw-k3-s1-same-train-silu-nchw": _dw((2, 5, 9, 7), 3, 1, "same", True, "silu", False),
    "dw-k3-s1-same-eval-relu-cl": _dw((2, 5, 9, 7), 3, 1, "same", False, "relu", True),
    "dw-k3-s2-tfsame-train-hardswish-cl-odd": _dw((1, 6, 11, 9), 3, 2, "tf_same", True, "hardswish", True),
    "dw-k3-s2-tfsame-eval-silu-nchw-even": _dw((2, 3, 10, 8), 3, 2, "tf_same", False, "silu", False),
    "dw-k3-s2-pad0-eval-relu6-nchw": _dw((2, 4, 9, 9), 3, 2, 0, False, "relu6", False),
    "dw-k3-s1-pad2-train-identity-cl": _dw((2, 4, 7, 9), 3, 1, 2, True, "identity", True),
    "dw-k3-s2-same-train-silu-nchw-batch1": _dw((1, 3, 7, 9), 3, 2, "same", True, "silu", False),
    "dw-k5-s2-tfsame-train-silu-cl": _dw((1, 4, 9, 11), 5, 2, "tf_same", True, "silu", True),
    "dw-k5-s1-same-eval-hardswish-nchw": _dw((1, 4, 9, 7), 5, 1, "same", False, "hardswish", False),
    "dw-k5-s2-pad1-train-relu-nchw": _dw((1, 3, 8, 9), 5, 2, 1, True, "relu", False),
    "dw-k7-s1-same-train-relu6-cl": _dw((1, 3, 9, 8), 7, 1, "same", True, "relu6", True),
    "dw-k7-s2-tfsame-eval-silu-nchw": _dw((1, 3, 11, 9), 7, 2, "tf_same", False, "silu", False),
    "dw-k3-s2-same-train-leaky-cl": _dw((2, 4, 9, 7), 3, 2, "same", True, "leaky_relu", True),
    "dw-k3-s1-same-train-gelu-cl": _dw((2, 4, 7, 6), 3, 1, "same", True, "gelu", True),
    "dw-k5-s2-tfsame-eval-gelu-tanh-nchw": _dw((1, 4, 9, 8), 5, 2, "tf_same", False, "gelu_tanh", False),
    "dw-fp64-train-gelu-tanh-cl": _dw((1, 3, 6, 7), 3, 1, "same", True, "gelu_tanh", True, dtype="float64"),
    # affine / running stats / conv bias combinations
    "dw-noaffine-convbias-train-relu-cl": _dw((2, 4, 8, 8), 3, 1, "same", True, "relu", True,
                                               affine=False, conv_bias=True),
    "dw-norunning-convbias-train-silu-nchw": _dw((2, 4, 6, 7), 3, 2, "tf_same", True, "silu", False,
                                                  running=False, conv_bias=True),
    "dw-convbias-eval-hardswish-cl": _dw((2, 4, 6, 7), 3, 1, "same", False, "hardswish", True,
                                         conv_bias=True, eps=1e-3),
    # only some gradients requested (backward mask)
    "dw-grad-x-only-train": _dw((2, 4, 7, 7), 3, 1, "same", True, "silu", True, grads=["x"]),
    "dw-grad-params-only-train": _dw((2, 4, 7, 7), 3, 2, "same", True, "silu", False,
                                     grads=["weight", "bn_weight", "conv_bias"], conv_bias=True),
    "dw-grad-params-only-eval": _dw((2, 4, 7, 7), 3, 1, "same", False, "relu6", True,
                                    grads=["weight", "bn_bias"]),
    # block boundaries inside tiny tensors: several channel blocks and many programs / tiles
    "dw-smallblocks-c17-train-cl": _dw((1, 17, 7, 6), 3, 2, "tf_same", True, "silu", True,
                                       blocks="BH=2,BW=4,BC=4"),
    "dw-smallblocks-c5-train-nchw": _dw((1, 5, 5, 6), 3, 1, "same", True, "hardswish", False,
                                        blocks="BH=2,BW=4,BC=2"),
    "dw-smallblocks-eval-s2-nchw": _dw((1, 3, 9, 7), 5, 2, "same", False, "relu", False,
                                       blocks="BH=2,BW=4,BC=2"),
    # dW accumulated per tap in registers (the DW_REGS configs), several programs and tiles each
    "dw-dwregs-k3-train-cl": _dw((2, 10, 7, 9), 3, 1, "same", True, "silu", True,
                                 blocks="BH=2,BW=4,BC=4,DW_REGS=1"),
    "dw-dwregs-k5-s2-eval-nchw": _dw((1, 3, 9, 11), 5, 2, "tf_same", False, "hardswish", False,
                                     blocks="BH=2,BW=4,BC=2,DW_REGS=1"),
    # large per-channel mean: the Welford statistics must not cancel
    "dw-offset-mean-train": _dw((2, 3, 9, 9), 3, 1, "same", True, "identity", True, offset=50.0),
    # low precision (fp32 accumulation) and float64 (exact to 1e-10)
    "dw-fp16-train-cl": _dw((2, 6, 9, 7), 3, 2, "same", True, "silu", True, dtype="float16"),
    "dw-fp16-eval-nchw": _dw((2, 6, 9, 7), 3, 1, "same", False, "hardswish", False, dtype="float16"),
    "dw-bf16-train-cl-k5": _dw((1, 6, 9, 7), 5, 1, "tf_same", True, "silu", True, dtype="bfloat16"),
    "dw-bf16-eval-nchw": _dw((2, 6, 8, 7), 3, 2, "tf_same", False, "relu", False, dtype="bfloat16"),
    "dw-fp64-train-tfsame-s2": _dw((2, 3, 7, 8), 3, 2, "tf_same", True, "silu", True, dtype="float64",
                                   conv_bias=True),
    "dw-fp64-eval-pad1": _dw((1, 3, 6, 7), 5, 1, 1, False, "hardswish", False, dtype="float64"),
    "dw-gradcheck-fp64": dict(op="gradcheck_dwconv"),
    "dw-deterministic": dict(op="determinism"),
    "dw-opcheck": dict(op="opcheck"),
    "compiled-block": dict(op="compiled"),
    "dw-unsupported-k9": dict(op="unsupported"),

    # bn_act
    "bn-train-silu-nchw": _bn((2, 5, 7, 9), True, "silu", False),
    "bn-eval-relu-cl": _bn((2, 5, 7, 9), False, "relu", True),
    "bn-train-hardswish-cl-noaffine-norunning": _bn((2, 6, 5, 7), True, "hardswish", True,
                                                     affine=False, running=False),
    "bn-eval-relu6-nchw-eps": _bn((3, 4, 5, 5), False, "relu6", False, eps=1e-3),
    "bn-train-identity-offset-manytiles": _bn((2, 3, 17, 13), True, "identity", False, offset=100.0),
    "bn-train-silu-smallblocks-cl": _bn((2, 11, 5, 6), True, "silu", True, blocks="BH=2,BW=2,BC=4"),
    "bn-batch1-train-relu": _bn((1, 3, 1, 5), True, "relu", True),
    "bn-grad-x-only-eval": _bn((2, 4, 5, 5), False, "silu", False, grads=["x"]),
    "bn-fp16-train-cl": _bn((2, 8, 6, 5), True, "silu", True, dtype="float16"),
    # (bf16 with relu6 / hardswish on fewer elements fails for eager too: x's rounding to bf16 moves
    # values across the kinks, and dbeta of a small channel sum is ill-conditioned)
    "bn-bf16-eval-nchw": _bn((3, 8, 7, 5), False, "hardswish", False, dtype="bfloat16"),
    "bn-fp64-train": _bn((2, 3, 5, 6), True, "silu", True, dtype="float64"),
    "bn-fp64-train-leaky-nchw": _bn((2, 3, 5, 6), True, "leaky_relu", False, dtype="float64"),
    "bn-eval-leaky-cl": _bn((2, 5, 4, 3), False, "leaky_relu", True),
    "bn-fp64-train-gelu-nchw": _bn((2, 3, 5, 6), True, "gelu", False, dtype="float64"),
    "bn-bf16-train-gelu-tanh-cl": _bn((2, 8, 6, 5), True, "gelu_tanh", True, dtype="bfloat16"),

    # gate_scale
    **{f"gate-{gate}-{dt}-{'cl' if cl else 'nchw'}": dict(op="gate_scale", shape=(3, 11, 5, 7), gate=gate,
                                                          cl=cl, dtype=dt)
       for gate, dt, cl in [("sigmoid", "float32", False), ("hard_sigmoid", "float32", True),
                            ("sigmoid", "float16", True), ("hard_sigmoid", "bfloat16", False),
                            ("sigmoid", "float64", False)]},
    "gate-grad-x-only": dict(op="gate_scale", shape=(2, 5, 4, 3), gate="sigmoid", cl=True,
                             dtype="float32", grads=["x"]),
    "gate-logits-n-c-1-1-big-hw": dict(op="gate_scale", shape=(1, 3, 33, 40), gate="hard_sigmoid", cl=False,
                                       dtype="float32", logits_4d=True),

    # squeeze_excite
    "se-relu-sigmoid-nchw": dict(op="squeeze_excite", shape=(3, 10, 7, 5), r=3, act="relu", gate="sigmoid",
                                 cl=False, dtype="float32"),
    "se-silu-hardsigmoid-cl-nobias": dict(op="squeeze_excite", shape=(2, 17, 3, 11), r=4, act="silu",
                                          gate="hard_sigmoid", cl=True, dtype="float32", bias=False),
    "se-hardswish-bf16-cl": dict(op="squeeze_excite", shape=(2, 16, 6, 5), r=4, act="hardswish",
                                 gate="sigmoid", cl=True, dtype="bfloat16"),
    "se-relu-fp16-nchw-1x1": dict(op="squeeze_excite", shape=(2, 8, 1, 1), r=2, act="relu", gate="sigmoid",
                                  cl=False, dtype="float16"),
    "se-fp64": dict(op="squeeze_excite", shape=(2, 6, 4, 5), r=2, act="silu", gate="sigmoid", cl=False,
                    dtype="float64"),
    "se-params-only-grad": dict(op="squeeze_excite", shape=(2, 6, 4, 5), r=2, act="relu", gate="sigmoid",
                                cl=True, dtype="float32", grads=["reduce_weight", "expand_bias"]),

    # eca
    "eca-k3-sigmoid-nchw": dict(op="eca", shape=(3, 16, 6, 5), k=3, gate="sigmoid", cl=False, dtype="float32"),
    "eca-k5-hardsigmoid-cl": dict(op="eca", shape=(1, 5, 3, 7), k=5, gate="hard_sigmoid", cl=True,
                                  dtype="float32"),
    "eca-k3-fp16-cl": dict(op="eca", shape=(2, 24, 5, 5), k=3, gate="sigmoid", cl=True, dtype="float16"),
    "eca-k3-fp64": dict(op="eca", shape=(2, 7, 3, 4), k=3, gate="sigmoid", cl=False, dtype="float64"),

    # activation
    **{f"act-{act}-fp32": dict(op="activation", shape=(3, 5, 7, 2), act=act, dtype="float32")
       for act in ACTS},
    "act-silu-fp16-cl": dict(op="activation", shape=(2, 6, 5, 3), act="silu", dtype="float16", cl=True),
    "act-hardswish-bf16-2d": dict(op="activation", shape=(37, 11), act="hardswish", dtype="bfloat16"),
    "act-relu6-noncontiguous": dict(op="activation", shape=(9, 13), act="relu6", dtype="float32",
                                    transpose=True),
    "act-silu-fp64": dict(op="activation", shape=(4, 9), act="silu", dtype="float64"),
    "act-gelu-fp64": dict(op="activation", shape=(4, 9), act="gelu", dtype="float64"),
    "act-large-values-finite": dict(op="large_values"),

    # structure
    "layouts-preserved": dict(op="layouts"),
    "no-autotune-under-interpreter": dict(op="no_autotune"),
    "strided-running-stats": dict(op="strided_stats"),
}


# ----------------------------------------------------------------------------------------------
# Case runner (worker side; also used on CUDA by test_triton_gpu.py)
# ----------------------------------------------------------------------------------------------

def _master(shape, seed, device, cl=False, scale=1.0, offset=0.0):
    from tests.helpers import randn
    t = randn(*shape, seed=seed, scale=scale, offset=offset).to(device)
    return t.contiguous(memory_format=torch.channels_last) if cl and t.dim() == 4 else t


def _params(shape, seed, device, positive=False, scale=1.0):
    from tests.helpers import rand_positive, randn
    t = rand_positive(*shape, seed=seed) if positive else randn(*shape, seed=seed, scale=scale)
    return t.to(device)


def _wrap(fn, device_out):
    """Check the triton output keeps x's memory format; move outputs to the CPU when the helper's
    random dy lives there (compare_with_reference draws it on the CPU)."""
    import fastblocks as fb
    from fastblocks._validate import memory_format_of

    def call(**kw):
        y = fn(**kw)
        x = kw["x"]
        if fb.get_backend() == "triton" and x.dim() == 4:
            assert memory_format_of(y) == memory_format_of(x), \
                f"output memory format {memory_format_of(y)} != input's {memory_format_of(x)}"
        return y.cpu() if device_out else y
    return call


def run_case(spec: dict, device: str = "cpu", backend: str = "triton") -> dict:
    """Build the case's float64 inputs, run ``compare_with_reference``; returns {name: rel err}."""
    import fastblocks as fb
    from tests.helpers import compare_with_reference

    op = spec["op"]
    special = _SPECIAL.get(op)
    if special is not None:
        return special(device, backend)
    dtype = DTYPES[spec["dtype"]]
    low = dtype in (torch.float16, torch.bfloat16)
    cl = spec.get("cl", False)
    seed = sum(map(ord, json.dumps(spec, sort_keys=True))) % 1000
    to_cpu = device != "cpu"
    kw = {}
    if op == "dwconv_bn_act":
        n, c, h, w = spec["shape"]
        k = spec["k"]
        affine, running = spec.get("affine", True), spec.get("running", True)
        inputs = dict(
            x=_master(spec["shape"], seed, device, cl, offset=spec.get("offset", 0.0)),
            weight=_params((c, 1, k, k), seed + 1, device, scale=0.5),
            bn_weight=_params((c,), seed + 2, device, positive=True) if affine else None,
            bn_bias=_params((c,), seed + 3, device) if affine else None,
            running_mean=_params((c,), seed + 4, device, scale=0.1) if running else None,
            running_var=_params((c,), seed + 5, device, positive=True) if running else None,
            conv_bias=_params((c,), seed + 6, device) if spec.get("conv_bias") else None,
            stride=spec["stride"], padding=spec["padding"], training=spec["training"], act=spec["act"],
            momentum=0.3, eps=spec.get("eps", 1e-5))

        def fn(x, weight, bn_weight, bn_bias, running_mean, running_var, **rest):
            return fb.ops.dwconv_bn_act(x, weight, bn_weight, bn_bias, running_mean, running_var, **rest)
        if low:
            kw = dict(param_dtype=torch.float32, x_dtype_names=("x", "weight", "conv_bias"))
    elif op == "bn_act":
        n, c, h, w = spec["shape"]
        affine, running = spec.get("affine", True), spec.get("running", True)
        inputs = dict(
            x=_master(spec["shape"], seed, device, cl, scale=2.0, offset=spec.get("offset", 0.5)),
            bn_weight=_params((c,), seed + 1, device, positive=True) if affine else None,
            bn_bias=_params((c,), seed + 2, device) if affine else None,
            running_mean=_params((c,), seed + 3, device, scale=0.1) if running else None,
            running_var=_params((c,), seed + 4, device, positive=True) if running else None,
            training=spec["training"], act=spec["act"], momentum=0.2, eps=spec.get("eps", 1e-5))

        def fn(x, bn_weight, bn_bias, running_mean, running_var, **rest):
            return fb.ops.bn_act(x, bn_weight, bn_bias, running_mean, running_var, **rest)
        if low:
            kw = dict(param_dtype=torch.float32)
    elif op == "gate_scale":
        n, c = spec["shape"][:2]
        logits = _params((n, c), seed + 1, device, scale=3.0)
        inputs = dict(x=_master(spec["shape"], seed, device, cl),
                      logits=logits[:, :, None, None] if spec.get("logits_4d") else logits, gate=spec["gate"])

        def fn(x, logits, gate):
            return fb.ops.gate_scale(x, logits, gate=gate)
        if low:
            kw = dict(param_dtype=torch.float32)
    elif op == "squeeze_excite":
        n, c, h, w = spec["shape"]
        r, bias = spec["r"], spec.get("bias", True)
        inputs = dict(
            x=_master(spec["shape"], seed, device, cl),
            reduce_weight=_params((r, c, 1, 1), seed + 1, device, scale=0.5),
            reduce_bias=_params((r,), seed + 2, device) if bias else None,
            expand_weight=_params((c, r, 1, 1), seed + 3, device, scale=0.5),
            expand_bias=_params((c,), seed + 4, device) if bias else None,
            act=spec["act"], gate=spec["gate"])

        def fn(x, reduce_weight, reduce_bias, expand_weight, expand_bias, **rest):
            return fb.ops.squeeze_excite(x, reduce_weight, reduce_bias, expand_weight, expand_bias, **rest)
        if low:
            kw = dict(param_dtype=torch.float32)
    elif op == "eca":
        inputs = dict(x=_master(spec["shape"], seed, device, cl),
                      conv_weight=_params((1, 1, spec["k"]), seed + 1, device), gate=spec["gate"])

        def fn(x, conv_weight, gate):
            return fb.ops.eca(x, conv_weight, gate=gate)
        if low:
            kw = dict(param_dtype=torch.float32)
    elif op == "activation":
        x = _master(spec["shape"], seed, device, spec.get("cl", False), scale=4.0)
        if spec.get("transpose"):
            x = x.t()
        inputs = dict(x=x, act=spec["act"])

        def fn(x, act):
            return fb.ops.activation(x, act)
    else:
        raise ValueError(f"unknown op {op!r}")
    if "grads" in spec:
        kw["grad_names"] = spec["grads"]
    return compare_with_reference(_wrap(fn, to_cpu), inputs, dtype, backend, **kw)


def _gradcheck_dwconv(device, backend):
    import fastblocks as fb
    from tests.helpers import rand_positive, randn
    c = 2
    errs = {}
    for stride, padding, training in [(2, "tf_same", True), (1, 1, False)]:
        x = randn(1, c, 5, 4, seed=1).to(device).requires_grad_()
        w = randn(c, 1, 3, 3, seed=2).to(device).requires_grad_()
        g = rand_positive(c, seed=3).to(device).requires_grad_()
        b = randn(c, seed=4).to(device).requires_grad_()
        cb = randn(c, seed=5).to(device).requires_grad_()
        rm, rv = randn(c, seed=6).to(device), rand_positive(c, seed=7).to(device)

        def f(x, w, g, b, cb):
            return fb.ops.dwconv_bn_act(x, w, g, b, rm.clone(), rv.clone(), conv_bias=cb, stride=stride,
                                        padding=padding, training=training, act="silu", backend=backend)
        assert torch.autograd.gradcheck(f, (x, w, g, b, cb), fast_mode=True), (stride, padding, training)
        errs[f"gradcheck-s{stride}-{padding}-{training}"] = 0.0
    return errs


def _determinism(device, backend):
    """Two runs on the same inputs: bitwise identical outputs, gradients and running stats."""
    import fastblocks as fb
    from tests.helpers import rand_positive, randn
    c = 6
    results = []
    for _ in range(2):
        x = randn(2, c, 9, 8, seed=11).float().to(device).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = randn(c, 1, 3, 3, seed=12).float().to(device).requires_grad_()
        g = rand_positive(c, seed=13).float().to(device).requires_grad_()
        b = randn(c, seed=14).float().to(device).requires_grad_()
        rm, rv = torch.zeros(c, device=device), torch.ones(c, device=device)
        y = fb.ops.dwconv_bn_act(x, w, g, b, rm, rv, stride=2, training=True, backend=backend)
        y.backward(randn(*y.shape, seed=15).float().to(device))
        results.append([y.detach(), x.grad, w.grad, g.grad, b.grad, rm, rv])
    for name, a, b in zip(["y", "dx", "dw", "dgamma", "dbeta", "running_mean", "running_var"], *results):
        assert torch.equal(a, b), f"{name} differs between two identical runs"
    return {}


def _opcheck(device, backend):
    x = torch.randn(2, 4, 7, 6, device=device)
    w, g, b = torch.randn(4, 1, 3, 3, device=device), torch.rand(4, device=device) + 0.5, torch.randn(4, device=device)
    rm, rv = torch.randn(4, device=device), torch.rand(4, device=device) + 0.5
    torch.library.opcheck(torch.ops.fastblocks.dwconv_bn_act.default,
                          (x.contiguous(memory_format=torch.channels_last).requires_grad_(), w.requires_grad_(),
                           g, b, None, None, None, 2, "tf_same", 0, 1, True, 1e-5, "silu", backend),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    torch.library.opcheck(torch.ops.fastblocks.gate_scale.default,
                          (x.requires_grad_(), torch.randn(2, 4, device=device), "sigmoid", backend),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    del rm, rv
    return {}


def _compiled(device, backend):
    """torch.compile(fullgraph=True, backend="aot_eager") of dwconv -> SE -> SiLU, training forward +
    backward, against the same ops uncompiled. Under the interpreter the ops stay opaque in the
    graph; on a GPU graph capture puts the kernels themselves into it (fastblocks/ops/_capture.py)."""
    import fastblocks as fb
    torch.manual_seed(0)
    c = 6
    x = torch.randn(2, c, 7, 7, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    shapes = [(c, 1, 3, 3), (c,), (c,), (2, c, 1, 1), (2,), (c, 2, 1, 1), (c,)]
    params = [torch.randn(shape, device=device) for shape in shapes]
    params[1] = params[1].abs() + 0.5  # BN weight
    params = [p.requires_grad_() for p in params]

    def block(x, rm, rv):
        w, g, b, r, rb, e, eb = params
        y = fb.ops.dwconv_bn_act(x, w, g, b, rm, rv, stride=2, training=True, backend=backend)
        return fb.ops.silu(fb.ops.squeeze_excite(y, r, rb, e, eb, backend=backend), backend=backend)

    def step(fn):
        rm, rv = torch.zeros(c, device=device), torch.ones(c, device=device)
        out = fn(x, rm, rv)
        return [out, *torch.autograd.grad(out.square().sum(), [x] + params), rm, rv]

    torch._dynamo.reset()
    got = step(torch.compile(block, fullgraph=True, backend="aot_eager"))
    for a, b in zip(got, step(block)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    return {}


def _unsupported(device, backend):
    import fastblocks as fb
    x = torch.randn(1, 2, 12, 12, device=device)
    w = torch.randn(2, 1, 9, 9, device=device)
    try:
        fb.ops.dwconv_bn_act(x, w, None, None, None, None, training=True, backend=backend)
    except fb.BackendUnavailableError as err:
        assert "support k in (3, 5, 7), got k=9" in str(err), str(err)
    else:
        raise AssertionError("k=9 should be declined by the triton backend, not silently run")
    return {}


def _large_values(device, backend):
    import fastblocks as fb
    for dtype in (torch.float32, torch.float16):
        x = torch.tensor([-1000.0, -100.0, -81.0, 81.0, 100.0, 1000.0], dtype=dtype, device=device,
                         requires_grad=True)
        for fn in (fb.ops.silu, fb.ops.hard_swish):
            y = fn(x, backend=backend)
            (g,) = torch.autograd.grad(y.sum(), x)
            assert torch.isfinite(y).all() and torch.isfinite(g).all(), (fn, dtype)
        logits = torch.tensor([[-100.0, 100.0, -81.0]], dtype=dtype, device=device)
        out = fb.ops.gate_scale(torch.ones(1, 3, 1, 1, dtype=dtype, device=device), logits, backend=backend)
        assert torch.isfinite(out).all()
    return {}


def _layouts(device, backend):
    """channels_last in -> channels_last out and dx; NCHW in -> NCHW out and dx."""
    import fastblocks as fb
    from fastblocks._validate import memory_format_of
    for fmt in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(2, 8, 5, 5, device=device).contiguous(memory_format=fmt).requires_grad_()
        c = 8
        ones, zeros = torch.ones(c, device=device), torch.zeros(c, device=device)
        outs = {
            "dwconv_bn_act": fb.ops.dwconv_bn_act(x, torch.randn(c, 1, 3, 3, device=device), ones, zeros,
                                                  None, None, stride=2, training=True, backend=backend),
            "bn_act": fb.ops.bn_act(x, ones, zeros, None, None, training=True, backend=backend),
            "gate_scale": fb.ops.gate_scale(x, torch.randn(2, c, device=device), backend=backend),
            "squeeze_excite": fb.ops.squeeze_excite(x, torch.randn(2, c, device=device), None,
                                                    torch.randn(c, 2, device=device), None, backend=backend),
            "silu": fb.ops.silu(x, backend=backend),
        }
        for name, y in outs.items():
            assert memory_format_of(y) == fmt, f"{name}: output format {memory_format_of(y)} != {fmt}"
            (dx,) = torch.autograd.grad(y.square().sum(), x)
            assert memory_format_of(dx) == fmt, f"{name}: dx format {memory_format_of(dx)} != {fmt}"
            assert torch.isfinite(dx).all(), name
    return {}


def _strided_stats(device, backend):
    """Running statistics that are strided views (every other element of a buffer): eval reads
    them, training updates them in place, like F.batch_norm (the eval pass reads them in the
    kernel: a contiguous copy is its business, not the caller's)."""
    import fastblocks as fb
    errs = {}
    g = torch.Generator().manual_seed(7)
    c = 6
    x = torch.randn(2, c, 7, 6, generator=g).to(device)
    w = torch.randn(c, 1, 3, 3, generator=g).to(device)
    gamma, beta = (torch.rand(c, generator=g) + 0.5).to(device), torch.randn(c, generator=g).to(device)
    base_mean, base_var = torch.randn(2 * c, generator=g).to(device), (torch.rand(2 * c, generator=g) + 0.5).to(device)
    for training in (False, True):
        for op in ("dwconv_bn_act", "bn_act"):
            stats = {}
            for b in (backend, "reference"):
                rm, rv = base_mean.clone()[::2], base_var.clone()[::2]
                assert not rm.is_contiguous()
                args = (x, w, gamma, beta, rm, rv) if op == "dwconv_bn_act" else (x, gamma, beta, rm, rv)
                y = getattr(fb.ops, op)(*args, training=training, backend=b)
                stats[b] = (y, rm, rv)
            for name, a, ref in zip(("out", "running_mean", "running_var"), stats[backend], stats["reference"]):
                err = float((a - ref).norm() / ref.norm())
                assert err < 1e-5, f"{op} training={training} {name}: rel. error {err:.2e}"
                errs[f"{op}-{'train' if training else 'eval'}-{name}"] = err
    return errs


def _no_autotune(device, backend):
    import fastblocks.kernels._common as common
    import fastblocks.kernels.activation
    import fastblocks.kernels.dwconv_bn_act
    import fastblocks.kernels.gate_scale
    if device == "cpu":
        assert common.INTERPRET
        for mod, names in [(fastblocks.kernels.dwconv_bn_act, ["_fused_cl", "_fused_nchw", "_dx_cl", "_dx_nchw"]),
                           (fastblocks.kernels.gate_scale, ["_pool_cl", "_fwd_nchw", "_bwd_cl"]),
                           (fastblocks.kernels.activation, ["_fwd", "_bwd"])]:
            for name in names:
                assert isinstance(getattr(mod, name), common._FixedConfig), f"{name} is autotuned under the interpreter"
    return {}


_SPECIAL = {"gradcheck_dwconv": _gradcheck_dwconv, "determinism": _determinism, "opcheck": _opcheck,
            "compiled": _compiled, "unsupported": _unsupported, "large_values": _large_values, "layouts": _layouts,
            "no_autotune": _no_autotune, "strided_stats": _strided_stats}


def _run_one(spec: dict) -> dict:
    blocks = spec.get("blocks")
    if blocks:
        os.environ[INTERP_BLOCKS_ENV] = blocks
    start = time.time()
    try:
        errs = run_case(spec)
        return {"ok": True, "errs": errs, "seconds": time.time() - start}
    except Exception:  # report, keep the worker alive for the next case
        return {"ok": False, "error": traceback.format_exc(limit=6), "seconds": time.time() - start}
    finally:
        os.environ.pop(INTERP_BLOCKS_ENV, None)


def _worker_main() -> None:
    """Read case ids (JSON lines) on stdin; answer '@@RESULT <json>' on stdout."""
    torch.set_num_threads(1)
    import fastblocks as fb
    assert "triton" in fb.available_backends(), f"triton backend unavailable: {fb.available_backends()}"
    print("@@READY", flush=True)
    for line in sys.stdin:
        case_id = json.loads(line)
        result = _run_one(CASES[case_id])
        print("@@RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------
# pytest side: one worker subprocess per pytest process
# ----------------------------------------------------------------------------------------------

class _Worker:
    def __init__(self):
        self.proc = None
        self.log = None

    def start(self):
        env = dict(os.environ, TRITON_INTERPRET="1", FASTBLOCKS_POISON="1",
                   PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]))
        env.pop("FASTBLOCKS_BACKEND", None)
        env.pop(INTERP_BLOCKS_ENV, None)
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1)
        self._read("@@READY", timeout=120)

    def _stderr_tail(self):
        self.log.seek(0)
        return self.log.read()[-3000:]

    def _read(self, prefix, timeout):
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                self.stop()
                raise TimeoutError(f"interpreter worker gave no answer in {timeout}s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                tail = self._stderr_tail()
                self.stop()
                raise RuntimeError(f"interpreter worker died:\n{tail}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def run(self, case_id: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps(case_id) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read("@@RESULT ", CASE_TIMEOUT_S))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _triton_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="module")
def interpreter():
    if not _triton_installed():
        pytest.skip("triton is not installed")
    worker = _Worker()
    yield worker
    worker.stop()


@pytest.mark.triton
@pytest.mark.parametrize("case_id", list(CASES))
def test_triton_interpreter(interpreter, case_id):
    result = interpreter.run(case_id)
    assert result["ok"], f"{case_id}: {CASES[case_id]}\n{result['error']}"


def test_cases_cover_every_op_and_option():
    """The interpreter grid covers every op, k, stride, padding mode, act, train / eval, dtype and layout."""
    specs = list(CASES.values())
    dw = [s for s in specs if s["op"] == "dwconv_bn_act"]
    assert {s["k"] for s in dw} == {3, 5, 7}
    assert {s["stride"] for s in dw} == {1, 2}
    assert {"same", "tf_same"} <= {s["padding"] for s in dw} and any(isinstance(s["padding"], int) for s in dw)
    assert {s["act"] for s in dw} == set(ACTS)
    for op in ("dwconv_bn_act", "bn_act"):
        sel = [s for s in specs if s["op"] == op]
        assert {s["training"] for s in sel} == {True, False}
        assert {s["cl"] for s in sel} == {True, False}
        assert {s["dtype"] for s in sel} == set(DTYPES)
    assert {s["op"] for s in specs} >= {"dwconv_bn_act", "bn_act", "gate_scale", "squeeze_excite", "eca",
                                        "activation"}
    assert {s["act"] for s in specs if s["op"] == "activation"} == set(ACTS)
    from fastblocks._act import ACTIVATIONS
    assert ACTS == list(ACTIVATIONS)


def test_kernels_autotune_without_interpreter():
    """Outside the interpreter the launchers go through triton.autotune, keyed on (C, H*W, ...)."""
    if not _triton_installed():
        pytest.skip("triton is not installed")
    code = ("import fastblocks.kernels.dwconv_bn_act as d, fastblocks.kernels.gate_scale as g, fastblocks.kernels.activation as a; "
            "from triton.runtime.autotuner import Autotuner; "
            "objs = [d._fused_cl, d._fused_nchw, d._dx_cl, d._dx_nchw, g._pool_cl, g._fwd_nchw, g._bwd_cl, a._fwd]; "
            "assert all(isinstance(o, Autotuner) and len(o.configs) > 1 for o in objs), objs; "
            "assert 'C' in d._fused_cl.keys and 'HWO' in d._fused_cl.keys and 'HW' in g._pool_cl.keys; print('ok')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


if __name__ == "__main__":
    sys.path[:0] = [ROOT, HERE]
    if sys.argv[1:] == ["--worker"]:
        _worker_main()
    else:
        import fastblocks  # noqa: F401
        failed = 0
        for case in sys.argv[1:] or list(CASES):
            res = _run_one(CASES[case])
            failed += not res["ok"]
            print(f"{case:50s} {'ok' if res['ok'] else 'FAIL'} {res['seconds']:.1f}s", res.get("error", ""))
        sys.exit(1 if failed else 0)
