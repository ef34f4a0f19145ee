"""Compatibility matrix: a patched model accepts everything the unpatched model accepts.

Models x uses, patched vs unpatched (the table in docs/compatibility.md). Exactness checks run in
float64 (same math: <= 1e-10), reduced-precision ones against the unpatched model within the bf16
tolerance. The uses run on timm's test_efficientnet (stem, depthwise-separable and
inverted-residual blocks with SE, BN + SiLU: every fused kind of EfficientNet at a fraction of the
cost); the shape-only rows also on mobilenetv2_050 (BN + ReLU6) and efficientnet_b0. Small inputs,
batch 2.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fastblocks as fb
from tests.helpers import rel_err

timm = pytest.importorskip("timm")

MODEL = "test_efficientnet"
SHAPE_MODELS = [MODEL, "mobilenetv2_050", "efficientnet_b0"]
CLASSES = 10
EXACT = 1e-10
BF16 = 2e-2


def build(name: str, dtype=torch.float64, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=CLASSES, **kwargs).to(dtype)


def pair(name: str, dtype=torch.float64, train: bool = True, **kwargs):
    """(unpatched, patched) copies of one model with the same weights."""
    ref = build(name, dtype, **kwargs).train(train)
    pat = copy.deepcopy(ref)
    fb.patch(pat)
    return ref, pat


def images(n: int = 4, size: int = 64, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    """Batch 4 at 64x64: the last training-mode BNs see 16 values per channel (over 2 or 4, a BN is so
    ill-conditioned that two float64 orderings of the same sums differ visibly after a step)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen).to(dtype)


def grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def state(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten() for t in model.state_dict().values()])


def train_step(model, x, loss_scale: float = 1.0) -> torch.Tensor:
    """Forward + backward of a fixed loss; returns the output (detached)."""
    model.zero_grad(set_to_none=True)
    y = model(x)
    (y.float().square().mean() * loss_scale).backward()
    return y.detach()


def assert_close(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"


def assert_same_training(ref, pat, x, tol: float = EXACT, step=train_step, buffers: bool = True) -> None:
    """One training step on each: outputs, parameter gradients and (``buffers``) buffers agree."""
    assert_close("output", step(pat, x), step(ref, x), tol)
    assert_close("grads", grads(pat), grads(ref), tol)
    if buffers:
        assert_close("buffers", state(pat), state(ref), tol)


def assert_no_worse(name: str, out: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor) -> None:
    """Reduced precision: ``out`` (patched) is as close to the float64 result ``exact`` as the
    tolerance table asks, or at most 1.5x as far as the unpatched ``ref`` is."""
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err, ref_err = rel_err(out, exact), rel_err(ref, exact)
    assert err <= max(BF16, 1.5 * ref_err), f"{name}: error {err:.3e} vs float64 (unpatched: {ref_err:.3e})"


# ----------------------------------------------------------------------------- what used to fail


@pytest.mark.parametrize("name", SHAPE_MODELS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_empty_batch(name, train):
    ref, pat = pair(name, train=train)
    x = images(0, 64)
    out = pat(x)
    assert out.shape == ref(x).shape == (0, CLASSES)
    assert torch.equal(state(pat), state(ref))  # running stats kept, num_batches_tracked counted alike


def test_double_backward_gradient_penalty():
    ref, pat = pair(MODEL)
    for model in (ref, pat):
        x = images().requires_grad_()
        (g,) = torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
        model.zero_grad(set_to_none=True)
        g.square().sum().backward()
        model.penalty = g.detach()
    assert_close("input gradient", pat.penalty, ref.penalty, EXACT)
    assert_close("penalty gradients", grads(pat), grads(ref), EXACT)


def test_func_grad_over_functional_call():
    ref, pat = pair(MODEL, train=False)
    x = images()

    def param_grads(model):
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = dict(model.named_buffers())

        def loss(p, xb):
            return torch.func.functional_call(model, (p, buffers), (xb,)).square().sum()
        full = torch.func.grad(loss)(params, x)
        # per-sample gradients: vmap over grad
        per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x[:2, None])
        return torch.cat([g.flatten() for g in full.values()]), torch.cat([g.flatten() for g in per_sample.values()])

    for got, want in zip(param_grads(pat), param_grads(ref)):
        assert_close("torch.func.grad", got, want, EXACT)


@pytest.mark.parametrize("name", SHAPE_MODELS)
def test_meta_device_forward(name):
    with torch.device("meta"):
        ref = timm.create_model(name, num_classes=CLASSES)
    pat = copy.deepcopy(ref)
    fb.patch(pat)
    for train in (False, True):
        x = torch.empty(2, 3, 64, 64, device="meta")
        out = pat.train(train)(x)
        assert out.device.type == "meta" and out.shape == ref.train(train)(x).shape == (2, CLASSES)


def test_forward_mode_ad():
    ref, pat = pair(MODEL, train=False)
    x, t = images(), images(seed=2)
    (_, want), (_, got) = (torch.func.jvp(m, (x,), (t,)) for m in (ref, pat))
    assert_close("jvp", got, want, EXACT)


def _op_calls():
    """(name, fn(backend, *tensors), float64 tensors) for every fused op, small and odd-sized."""
    gen = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    c = 5
    x, rm, rv = r(3, c, 6, 7), r(c), r(c).abs() + 0.5
    return [
        ("dwconv_bn_act", lambda b, x, w, g, bb: fb.ops.dwconv_bn_act(x, w, g, bb, rm.clone(), rv.clone(), stride=2,
                                                                       training=True, backend=b),
         (x, r(c, 1, 3, 3), r(c), r(c))),
        ("bn_act eval", lambda b, x, g, bb: fb.ops.bn_act(x, g, bb, rm, rv, act="hardswish", backend=b), (x, r(c), r(c))),
        ("squeeze_excite", lambda b, x, rw, re, ew, eb: fb.ops.squeeze_excite(x, rw, re, ew, eb, act="silu", backend=b),
         (x, r(2, c), r(2), r(c, 2), r(c))),
        ("eca", lambda b, x, w: fb.ops.eca(x, w, backend=b), (x, r(1, 1, 3))),
        ("gate_scale", lambda b, x, logits: fb.ops.gate_scale(x, logits, backend=b), (x, r(3, c))),
        ("activation", lambda b, x: fb.ops.activation(x, "gelu", backend=b), (x,)),
    ]


@pytest.mark.parametrize("call", _op_calls(), ids=lambda call: call[0])
def test_double_backward_of_each_op(call):
    """Second-order gradients of every op on the memory-efficient backend equal the reference's."""
    _, fn, tensors = call

    def second_order(backend):
        inputs = [t.clone().requires_grad_() for t in tensors]
        y = fn(backend, *inputs)
        first = torch.autograd.grad((y * y.detach().sin()).sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in first), inputs)
        return torch.cat([g.flatten() for g in (*first, *second)])
    assert_close("first and second order gradients", second_order("eager"), second_order("reference"), EXACT)


# ----------------------------------------------------------------------------- what keeps working


# Under checkpointing the recomputed forward updates BN running statistics again, up to where
# non-reentrant recomputation stops early (unpatched too: they differ from a run without
# checkpointing), so only outputs and gradients are compared.
def test_timm_gradient_checkpointing():
    ref, pat = pair(MODEL)
    for model in (ref, pat):
        model.set_grad_checkpointing(True)
    assert_same_training(ref, pat, images(), buffers=False)


def test_torch_utils_checkpoint_around_patched_blocks():
    from torch.utils.checkpoint import checkpoint

    ref, pat = pair(MODEL)

    def step(model, x):
        model.zero_grad(set_to_none=True)
        h = model.bn1(model.conv_stem(x))
        for block in model.blocks:
            h = checkpoint(block, h, use_reentrant=False)
        y = model.forward_head(model.bn2(model.conv_head(h)))
        y.square().mean().backward()
        return y.detach()
    assert_same_training(ref, pat, images(), step=step, buffers=False)


def grad_scaler_steps(model, device: str, dtype, steps: int = 2) -> tuple:
    """``steps`` SGD steps through torch.amp.GradScaler under autocast(``dtype``) (float64 model and
    no autocast when dtype is None); returns (outputs of every step, final state)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device, enabled=dtype is not None)
    outs = []
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        x = images(seed=s, dtype=torch.float32 if dtype is not None else torch.float64).to(device)
        with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            y = model(x)
            loss = y.float().square().mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        outs.append(y.detach().double().flatten())
    return torch.cat(outs), state(model)


def test_cpu_bf16_autocast_and_grad_scaler():
    exact = grad_scaler_steps(build(MODEL).train(), "cpu", None)
    ref, pat = pair(MODEL, dtype=torch.float32)
    got, want = grad_scaler_steps(pat, "cpu", torch.bfloat16), grad_scaler_steps(ref, "cpu", torch.bfloat16)
    for what, a, b, e in zip(("outputs", "state after 2 steps"), got, want, exact):
        assert_no_worse(what, a, b, e)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_autocast_grad_scaler():
    exact = grad_scaler_steps(build(MODEL).train().cuda(), "cuda", None)
    ref, pat = (m.cuda() for m in pair(MODEL, dtype=torch.float32))
    got, want = grad_scaler_steps(pat, "cuda", torch.float16), grad_scaler_steps(ref, "cuda", torch.float16)
    for what, a, b, e in zip(("outputs", "state after 2 steps"), got, want, exact):
        assert_no_worse(what, a, b, e)


def test_bf16_model():
    exact = build(MODEL).train()
    ref, pat = pair(MODEL, dtype=torch.bfloat16)
    x = images()
    results = [train_step(m, x.to(m.conv_stem.weight.dtype)) for m in (pat, ref, exact)]
    assert_no_worse("output", *results)
    assert_no_worse("grads", grads(pat), grads(ref), grads(exact))


def test_batch_one_at_224():
    ref, pat = pair(MODEL, dtype=torch.float32)
    x = images(1, 224, dtype=torch.float32)
    assert_same_training(ref, pat, x, tol=1e-4)
    assert_close("eval", pat.eval()(x), ref.eval()(x), 1e-5)


def test_torch_compile_training():
    ref, pat = pair(MODEL)
    compiled = torch.compile(pat, backend="aot_eager")
    assert_same_training(ref, compiled, images())


def test_nan_rows_isolated():
    ref, pat = pair(MODEL, train=False)
    x = images(3)
    x[1, 0, 5, 5] = float("nan")
    out = pat(x)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()
    assert_close("finite rows", out[[0, 2]], ref(x)[[0, 2]], EXACT)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_non_contiguous_and_channels_last_input(train):
    ref, pat = pair(MODEL, train=train)
    base = images(2, 48)
    for x in (base[:, :, ::2, 1::2], base.permute(0, 1, 3, 2), base.contiguous(memory_format=torch.channels_last)):
        assert_close("output", pat(x), ref(x), EXACT)


def test_channels_last_training():
    ref, pat = pair(MODEL)
    for model in (ref, pat):
        model.to(memory_format=torch.channels_last)
    assert_same_training(ref, pat, images().contiguous(memory_format=torch.channels_last))


def test_repatch_idempotent_and_deepcopy():
    ref, pat = pair(MODEL)
    again = fb.patch(pat)
    assert again.already_patched and not again.replaced, again
    twin_ref, twin = copy.deepcopy(ref), copy.deepcopy(pat)
    assert all(a is not b for a, b in zip(twin.parameters(), pat.parameters()))
    x = images()
    assert_same_training(ref, pat, x)
    assert_same_training(twin_ref, twin, x)


def test_deterministic_algorithms():
    ref, pat = pair(MODEL)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert_same_training(ref, pat, images())
    finally:
        torch.use_deterministic_algorithms(was)


def test_inference_mode_and_vmap_in_eval():
    ref, pat = pair(MODEL, train=False)
    x = images(3)
    with torch.inference_mode():
        assert_close("inference_mode", pat(x), ref(x), EXACT)
    assert_close("vmap", torch.func.vmap(pat)(x[:, None]), torch.func.vmap(ref)(x[:, None]), EXACT)


def test_timm_model_ema_v3():
    from timm.utils import ModelEmaV3

    ref, pat = pair(MODEL)
    emas = [ModelEmaV3(m, decay=0.9) for m in (ref, pat)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, pat)]
    for s in range(2):
        x = images(seed=s)
        for model, ema, opt in zip((ref, pat), emas, opts):
            train_step(model, x)
            opt.step()
            ema.update(model, step=s)
    assert_close("EMA state", state(emas[1].module), state(emas[0].module), EXACT)
    x = images(seed=5)
    assert_close("EMA eval output", emas[1].module.eval()(x), emas[0].module.eval()(x), EXACT)


def test_torch_export_dynamic_batch():
    ref, pat = pair(MODEL, train=False)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(pat, (images(2),), dynamic_shapes=({0: batch},))
    for n in (1, 3):
        x = images(n, seed=n)
        assert_close(f"batch {n}", exported.module()(x), ref(x), EXACT)


def test_checkpoint_save_load_resume(tmp_path):
    """model + optimizer state saved after 2 steps and loaded into a fresh patched model: the next 2
    steps equal an uninterrupted run (also when the checkpoint is loaded into an unpatched model)."""
    def fresh(patched=True):
        model = build(MODEL).train()
        if patched:
            fb.patch(model)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    def steps(model, opt, seeds):
        for s in seeds:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(images(seed=s)), torch.arange(4)).backward()
            opt.step()

    model, opt = fresh()
    steps(model, opt, range(4))
    uninterrupted = state(model)

    model, opt = fresh()
    steps(model, opt, range(2))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    for patched in (True, False):
        model, opt = fresh(patched)
        ckpt = torch.load(path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        steps(model, opt, range(2, 4))
        assert_close(f"resumed ({'patched' if patched else 'unpatched'})", state(model), uninterrupted, EXACT)


def test_script_error_says_what_to_do():
    _, pat = pair(MODEL, train=False)
    with pytest.raises(TypeError, match="unpatch"):
        torch.jit.script(pat)


def test_synchronised_batchnorm_errors_say_what_to_do():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    g, b = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="unpatch"):
        fb.ops.sync_bn_act(x[:0], g, b, None, None)
    y = fb.ops.sync_bn_act(x, g, b, None, None)
    with pytest.raises(RuntimeError, match="SyncBatchNorm"):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)


# ----------------------------------------------------------------------------- FSDP2


def _fsdp2_missing() -> str | None:
    if not torch.distributed.is_available():
        return "torch.distributed is not available"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return "this torch has no torch.distributed.fsdp.fully_shard (FSDP2)"
    return None


@pytest.mark.skipif(_fsdp2_missing() is not None, reason=str(_fsdp2_missing()))
def test_fsdp2_fully_shard_on_gloo(tmp_path):
    from tests import _fsdp_worker

    _fsdp_worker.run(str(tmp_path))
    for rank in range(_fsdp_worker.WORLD):
        rec = torch.load(tmp_path / f"rank{rank}.pt")
        if "skip" in rec:
            pytest.skip(rec["skip"])
        assert "error" not in rec, rec.get("error")
        for key in ("output", "grads", "params"):
            assert_close(f"rank {rank} {key}", rec[key], rec[f"{key}_ref"], EXACT)
