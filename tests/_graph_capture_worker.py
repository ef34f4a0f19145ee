"""Trace fused ops through AOTAutograd on fake CUDA tensors, without a GPU, and print JSON.

Run by tests/test_graph_capture.py in a subprocess without TRITON_INTERPRET (the kernels must be
imported as GPU kernels). Triton gets a stand-in sm_90 driver (so torch's analysis of which kernel
arguments are written can lower each kernel to TTIR); the triton backend's availability check and
the CUDA device guard are faked, since nothing runs: fake tensors only record what would be launched.

Output: {case: {"forward": [...], "backward": [...]}}, each graph a list of
{"kernel": name, "clones": [argument names functionalization copies], "clones_after_reinplace": [the
same after Inductor's reinplacing pass], "configs": autotune configs Inductor will get (None: not autotuned)} for every Triton launch and
{"op": name} for every fastblocks op left whole; plus "cache_key_sources": the kernels whose source
torch.compile's AOTAutograd cache would hash for a graph holding fastblocks::dwconv_bn_act.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import torch
from torch._functorch.aot_autograd import aot_function
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._inductor.fx_passes.reinplace import reinplace_inplaceable_ops_core
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from triton.runtime.autotuner import Autotuner

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastblocks as fb  # noqa: E402
import fastblocks.backends.triton as triton_backend  # noqa: E402
from fastblocks import _dispatch  # noqa: E402
import fastblocks.kernels._common  # noqa: E402
from benchmarks.triton_codegen import stand_in_cuda_driver  # noqa: E402
from triton.runtime import driver  # noqa: E402

BF16, CL = torch.bfloat16, torch.channels_last
# cases also traced with symbolic batch and image sizes
DYNAMIC = ("dwconv_k3_s1_train_cl", "dwconv_k5_s2_eval_cl", "squeeze_excite_cl")


def describe(gm: torch.fx.GraphModule) -> list:
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            name = getattr(kernel, "fn", kernel).__name__
            configs = len(kernel.configs) if isinstance(kernel, Autotuner) else None
            out.append({"kernel": name, "clones": sorted(node.kwargs["tensors_to_clone"]), "configs": configs})
        elif str(node.target).startswith("fastblocks."):
            out.append({"op": str(node.target)})
    return out


def trace(fn, inputs: list) -> list:
    """The graph AOTAutograd hands to the compiler for ``fn`` (inference: no input needs a grad;
    backward ops are traced by calling them directly, as running autograd's engine on fake CUDA
    tensors needs a device)."""
    graphs = []

    def compiler(gm, _example):
        nodes = describe(gm)
        # Inductor's reinplacing pass: launches then write into their buffers, with no copies left
        reinplace_inplaceable_ops_core(gm.graph)
        reinplaced = describe(gm)
        assert [n.get("kernel") for n in reinplaced] == [n.get("kernel") for n in nodes], "launches changed"
        for node, after in zip(nodes, reinplaced):
            if "kernel" in node:
                node["clones_after_reinplace"] = after["clones"]
        graphs.append(nodes)
        return gm

    aot_function(fn, fw_compiler=compiler)(*inputs)
    return graphs[0]


def cache_key_sources(op: str) -> dict:
    """What AOTAutograd's cache key would hash for ``op``: kernel name -> length of the source
    closure torch computes for it (as in AOTAutogradCacheDetails.get_triton_source_codes_from_gm)."""
    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code
    from triton.runtime.autotuner import Autotuner

    out = {}
    for kernel in torch._library.triton.get_triton_kernels_for_op(op):
        fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
        out[fn.__name__] = len(user_defined_triton_kernel_transitive_closure_source_code(fn))
    return out


def tensor(*shape, fmt=None, dtype=BF16):
    t = torch.empty(shape, dtype=dtype, device="cuda")
    return t if fmt is None else t.contiguous(memory_format=fmt)


def cases(n=2, c=32, h=9):
    ops = torch.ops.fastblocks
    f32 = torch.float32
    every = [True] * 5

    def x(fmt=CL, size=h):
        return tensor(n, c, size, size, fmt=fmt)

    def chan():
        return tensor(c, dtype=f32)

    def dwconv(k, stride, training, fmt, backend="triton"):
        def forward(x, w, g, b, rm, rv):
            return fb.ops.dwconv_bn_act(x, w, g, b, rm, rv, stride=stride, training=training, act="silu",
                                        backend=backend)

        def backward(dy, x, w, g, b, mean, var):
            return ops.dwconv_bn_act_backward(dy, x, w, g, b, None, mean, var, stride, "same", 1, 1, training,
                                              1e-5, "silu", every, backend)

        ho = (h - 1) // stride + 1
        return ((forward, [x(fmt), tensor(c, 1, k, k), chan(), chan(), chan(), chan()]),
                (backward, [x(fmt, ho), x(fmt), tensor(c, 1, k, k), chan(), chan(), chan(), chan()]))

    def bn_act(training):
        def forward(x, g, b, rm, rv):
            return fb.ops.bn_act(x, g, b, rm, rv, training=training, act="hardswish", backend="triton")

        def backward(dy, x, g, b, mean, var):
            return ops.bn_act_backward(dy, x, g, b, mean, var, training, 1e-5, "hardswish", [True] * 3, "triton")

        return ((forward, [x(), chan(), chan(), chan(), chan()]), (backward, [x(), x(), chan(), chan(), chan(), chan()]))

    pooled = lambda: tensor(n, c, dtype=f32)  # noqa: E731
    se_params = lambda: [tensor(8, c, 1, 1), tensor(8), tensor(c, 8, 1, 1), tensor(c)]  # noqa: E731
    return {
        "dwconv_k3_s1_train_cl": dwconv(3, 1, True, CL),
        "dwconv_k5_s2_eval_cl": dwconv(5, 2, False, CL),
        "dwconv_k3_s2_train_nchw": dwconv(3, 2, True, torch.contiguous_format),
        "dwconv_auto_train_cl": dwconv(3, 1, True, CL, backend="auto"),
        "dwconv_eager_train_cl": dwconv(3, 1, True, CL, backend="eager"),
        "bn_act_train_cl": bn_act(True),
        "squeeze_excite_cl": (
            (lambda x, r, rb, e, eb: fb.ops.squeeze_excite(x, r, rb, e, eb, backend="triton"), [x()] + se_params()),
            (lambda dy, x, p, lg, r, rb, e, eb: ops.squeeze_excite_backward(dy, x, p, lg, r, rb, e, eb, "relu",
                                                                             "sigmoid", every, "triton"),
             [x(), x(), pooled(), pooled()] + se_params())),
        "eca_cl": ((lambda x, k: fb.ops.eca(x, k, backend="triton"), [x(), tensor(1, 1, 3)]),
                   (lambda dy, x, p, lg, k: ops.eca_backward(dy, x, p, lg, k, "sigmoid", [True] * 2, "triton"),
                    [x(), x(), pooled(), pooled(), tensor(1, 1, 3)])),
        "gate_scale_cl": ((lambda x, g: fb.ops.gate_scale(x, g, backend="triton"), [x(), tensor(n, c)]),
                          (lambda dy, x, g: ops.gate_scale_backward(dy, x, g, "sigmoid", [True] * 2, "triton"),
                           [x(), x(), tensor(n, c)])),
        "silu_cl": ((lambda x: fb.ops.silu(x, backend="triton"), [x()]),
                    (lambda dy, x: ops.activation_backward(dy, x, "silu", "triton"), [x(), x()])),
    }


def main() -> None:
    driver.set_active(stand_in_cuda_driver(90))
    # the triton backend asks torch.cuda.is_available(); faking that for torch too would make
    # fake-tensor factories touch the (missing) driver
    triton_backend._availability = lambda: None
    _dispatch._AVAILABILITY["triton"] = triton_backend._availability
    torch.cuda.device = lambda device: contextlib.nullcontext()
    fastblocks.kernels._common.target_programs = lambda device: 4 * 132
    only = sys.argv[1:]
    result = {}
    shape_env = ShapeEnv()

    def symbolic(name, hint):  # a dynamic size, as torch.compile makes after a size changes
        return shape_env.create_symintnode(shape_env.create_symbol(hint, ConstantSource(name)), hint=hint)

    with FakeTensorMode(shape_env=shape_env):
        table = cases()
        dynamic = cases(n=symbolic("n", 8), h=symbolic("h", 28))
        for name in DYNAMIC:
            table[f"{name}_dynamic"] = dynamic[name]
        for name, (forward, backward) in table.items():
            if not only or name in only:
                result[name] = {"forward": trace(*forward), "backward": trace(*backward)}
    result["cache_key_sources"] = cache_key_sources("fastblocks::dwconv_bn_act")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
