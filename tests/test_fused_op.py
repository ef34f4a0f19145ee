"""fused_op's direct eager path: plain eager calls skip torch.library's dispatch (host overhead)
and must be indistinguishable from the custom op; anything that traces or transforms takes the
custom op."""

import copy
import importlib

import pytest
import torch

import fastblocks as fb
from fastblocks.ops import _fused_op

dw_module = importlib.import_module("fastblocks.ops.dwconv_bn_act")
act_module = importlib.import_module("fastblocks.ops.activation")


class _Counting:
    """Stands in for a FusedOp's CustomOpDef and counts the calls that reach it."""

    def __init__(self, opdef):
        self.opdef, self.calls = opdef, 0

    def __call__(self, *args):
        self.calls += 1
        return self.opdef(*args)

    def __getattr__(self, name):
        return getattr(self.opdef, name)


@pytest.fixture
def counted(monkeypatch):
    ops = {}
    for module, names in ((dw_module, ("_forward", "_backward_op")), (act_module, ("_forward", "_backward_op"))):
        for name in names:
            op = getattr(module, name)
            monkeypatch.setattr(op, "_opdef", _Counting(op._opdef))
            ops[f"{module.__name__.rsplit('.', 1)[-1]}.{name}"] = op._opdef
    return ops


class _PassThrough(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _dw_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    c = 5
    x = torch.randn(2, c, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    gamma = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    beta = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(c, generator=g, dtype=torch.float64), torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    return x, w, gamma, beta, rm, rv


def _dw_step(inputs, training):
    x, w, gamma, beta, rm, rv = inputs
    y = fb.ops.dwconv_bn_act(x, w, gamma, beta, rm, rv, stride=2, padding="tf_same", training=training,
                             act="silu", backend="eager")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    grads = torch.autograd.grad(y, (x, w, gamma, beta), dy)
    return [y, rm, rv, *grads]


@pytest.mark.parametrize("training", [True, False])
def test_direct_path_matches_the_custom_op(counted, training):
    direct = _dw_step(_dw_inputs(), training)
    assert counted["dwconv_bn_act._forward"].calls == 0 and counted["dwconv_bn_act._backward_op"].calls == 0
    with _PassThrough():  # a torch-function mode: the call must go through the custom op
        via_op = _dw_step(_dw_inputs(), training)
    # (the mode is not active in the autograd engine's backward: the backward op is called directly)
    assert counted["dwconv_bn_act._forward"].calls == 1
    for a, b in zip(direct, via_op):
        assert torch.equal(a, b)  # running stats included


def test_direct_path_saves_what_the_custom_op_saves(counted):
    def saved(mode):
        sizes = []

        def pack(t):
            sizes.append((tuple(t.shape), t.dtype))
            return t

        x, w, gamma, beta, rm, rv = _dw_inputs()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if mode is None:
                fb.ops.dwconv_bn_act(x, w, gamma, beta, rm, rv, training=True, backend="eager")
            else:
                with mode:
                    fb.ops.dwconv_bn_act(x, w, gamma, beta, rm, rv, training=True, backend="eager")
        return sizes

    direct = saved(None)
    assert direct == saved(_PassThrough()) and len(direct) == 6  # x, w, gamma, beta, mean, var
    assert counted["dwconv_bn_act._forward"].calls == 1


def test_no_grad_and_inference_skip_autograd(counted):
    x = torch.randn(3, 4, requires_grad=True)
    with torch.no_grad():
        y = fb.ops.silu(x, backend="eager")
    assert not y.requires_grad
    with torch.inference_mode():
        assert torch.equal(fb.ops.silu(x.detach(), backend="eager"), torch.nn.functional.silu(x.detach()))
    assert counted["activation._forward"].calls == 0


def test_double_backward_matches_the_reference_on_both_paths():
    x0 = torch.randn(4, 3, dtype=torch.float64)

    def second_order(backend, mode):
        x = x0.clone().requires_grad_()
        with mode if mode is not None else torch.autograd.set_grad_enabled(True):
            (g,) = torch.autograd.grad((fb.ops.silu(x, backend=backend) ** 2).sum(), x, create_graph=True)
            (g ** 2).sum().backward()
        return g.detach(), x.grad

    want = second_order("reference", None)
    for mode in (None, _PassThrough()):
        got = second_order("eager", mode)
        for a, b in zip(got, want):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_what_takes_the_custom_op():
    x = torch.randn(2, 3)
    p = torch.nn.Parameter(torch.randn(2, 3))
    assert _fused_op.plain_eager((x, p, "silu", 1.0, None))
    with _PassThrough():
        assert not _fused_op.plain_eager((x,))
    with torch.device("cpu"):  # a torch-function mode too
        assert not _fused_op.plain_eager((x,))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert not _fused_op.plain_eager((fake,))
    assert not _fused_op.plain_eager((x.as_subclass(_Sub),))
    seen = []
    torch.func.vmap(lambda t: seen.append(_fused_op.plain_eager((t,))) or t)(x)
    assert seen == [False]


class _Sub(torch.Tensor):
    pass


def test_transforms_and_tracing_still_work(counted):
    x = torch.randn(3, 5, dtype=torch.float64)
    # make_fx and TorchScript tracing record the custom op, not its body
    graph = torch.fx.experimental.proxy_tensor.make_fx(lambda t: fb.ops.silu(t, backend="eager"))(x)
    assert any("fastblocks.activation" in str(n.target) for n in graph.graph.nodes)
    assert counted["activation._forward"].calls >= 1
    traced = torch.jit.trace(lambda t: fb.ops.silu(t, backend="eager"), (x,), check_trace=False)
    assert "fastblocks::activation" in str(traced.graph)
    assert torch.allclose(traced(x), torch.nn.functional.silu(x))


def test_switch_sends_every_call_through_the_custom_op(counted, monkeypatch):
    monkeypatch.setattr(_fused_op, "DIRECT", False)
    fb.ops.silu(torch.randn(3, requires_grad=True), backend="eager").sum().backward()
    assert counted["activation._forward"].calls == 1 and counted["activation._backward_op"].calls == 1


def test_patched_model_under_autocast_is_the_same_on_both_paths(monkeypatch):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", num_classes=10)
    fb.patch(model, backend="eager")
    x = torch.randn(2, 3, 48, 48)
    results = []
    for direct in (True, False):
        monkeypatch.setattr(_fused_op, "DIRECT", direct)
        m = copy.deepcopy(model).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        y.float().square().sum().backward()
        results.append([y.detach().float()] + [p.grad for p in m.parameters()] + list(m.buffers()))
    assert len(results[0]) > 300
    assert all(torch.equal(a, b) for a, b in zip(*results))
