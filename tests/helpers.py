"""Shared test helpers: one tolerance table, one compare-against-reference routine."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Optional

import torch

import fastblocks as fb
from fastblocks._act import ACTIVATIONS

# Every activation the ops accept: a new entry in fastblocks._act is tested by every backend's tests.
ACTS = list(ACTIVATIONS)

# The backends every per-op test module runs on CPU tensors (those available in this build):
# cuda_emulated runs the CUDA kernels on the CPU emulator (built with FASTBLOCKS_BUILD_CUDA_EMULATION=1).
CPU_BACKENDS = [b for b in fb.available_backends() if b in ("eager", "cpu", "cuda_emulated")]

# dtype -> (forward, gradient) bound on ||out - ref|| / ||ref|| against a float64 reference.
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-2, 2e-2),
    torch.bfloat16: (1e-2, 2e-2),
}


def gpu_compile_env(**extra: str) -> dict:
    """The environment for a subprocess that compiles the Triton kernels for a GPU (no
    interpreter, no NaN poisoning), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTBLOCKS_POISON")}
    env.update(extra)
    return env


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||; for a (mathematically) zero reference, the error per unit-scale
    element instead (e.g. the conv-bias gradient under training-mode BN)."""
    out, ref = out.detach().double(), ref.detach().double()
    unit = max(ref.numel(), 1) ** 0.5
    denom = ref.norm()
    if denom < 1e-6 * unit:
        denom = unit
    return float((out - ref).norm() / denom)


def assert_close_to_reference(name: str, out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype,
                              kind: str = "forward") -> float:
    """Assert ``out`` matches ``ref`` (computed in float64) within the dtype's tolerance; NaN fails."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    tol = TOLERANCE[dtype][0 if kind == "forward" else 1]
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e} ({dtype}, {kind})"
    return err


def compare_with_reference(fn: Callable[..., torch.Tensor], inputs: dict, dtype: torch.dtype,
                           backend: str, param_dtype: Optional[torch.dtype] = None,
                           grad_names: Iterable[str] | None = None, seed: int = 0,
                           x_dtype_names: Iterable[str] = ("x",)) -> dict:
    """Run ``fn(**inputs)`` with ``backend`` in ``dtype`` and with ``reference`` in float64.

    ``inputs`` holds float64 master tensors. Tensors named in ``grad_names`` (default: all but
    running_*) require grad; "x" (and ``x_dtype_names``) are cast to ``dtype``, others to
    ``param_dtype`` (default dtype).
    Compares the output, every gradient and every running_* tensor (mutated in place).
    Returns {name: relative error}.
    """
    names = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]
    grad_names = set(grad_names if grad_names is not None else [n for n in names if not n.startswith("running_")])
    param_dtype = param_dtype or dtype

    def prepare(cast_x, cast_p):
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                t = v.detach().clone().to(cast_x if k in x_dtype_names else cast_p)
                out[k] = t.requires_grad_(k in grad_names)
            else:
                out[k] = v
        return out

    test_in = prepare(dtype, param_dtype)
    with fb.backend(backend):
        y = fn(**test_in)
    ref_in = prepare(torch.float64, torch.float64)
    with fb.backend("reference"):
        y_ref = fn(**ref_in)

    errs = {"out": assert_close_to_reference("output", y, y_ref, dtype)}
    assert y.dtype == dtype, f"output dtype {y.dtype} != {dtype}"
    gen = torch.Generator().manual_seed(seed)
    dy = torch.randn(y_ref.shape, generator=gen, dtype=torch.float64)
    if grad_names:
        y.backward(dy.to(y.dtype))
        y_ref.backward(dy)
        for k in sorted(grad_names):
            g, g_ref = test_in[k].grad, ref_in[k].grad
            assert g is not None, f"no gradient for {k}"
            assert g.dtype == test_in[k].dtype, f"grad of {k} has dtype {g.dtype}"
            errs[k] = assert_close_to_reference(f"grad {k}", g, g_ref, dtype, "grad")
    for k in names:
        if k.startswith("running_") and test_in[k] is not None:
            errs[k] = assert_close_to_reference(k, test_in[k], ref_in[k], dtype)
    return errs


def randn(*shape, seed: int, dtype=torch.float64, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype) * scale + offset


def rand_positive(*shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen, dtype=dtype) + 0.5


def layout(t: torch.Tensor, fmt: str) -> torch.Tensor:
    """t in "channels_last" or contiguous ("nchw") memory."""
    return t.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else t.contiguous()


def dwconv_inputs(n, c, h, w, k, seed, affine=True, running=True, conv_bias=False, fmt="nchw", **config) -> dict:
    """float64 master inputs of fastblocks.ops.dwconv_bn_act (x in ``fmt``) plus keyword ``config``."""
    inputs = dict(
        x=layout(randn(n, c, h, w, seed=seed), fmt),
        weight=randn(c, 1, k, k, seed=seed + 1, scale=0.5),
        bn_weight=rand_positive(c, seed=seed + 2) if affine else None,
        bn_bias=randn(c, seed=seed + 3) if affine else None,
        running_mean=randn(c, seed=seed + 4, scale=0.1) if running else None,
        running_var=rand_positive(c, seed=seed + 5) if running else None,
        conv_bias=randn(c, seed=seed + 6) if conv_bias else None,
    )
    inputs.update(config)
    return inputs


def dwconv_call(**kw) -> torch.Tensor:
    """fastblocks.ops.dwconv_bn_act from a :func:`dwconv_inputs` dict (for compare_with_reference)."""
    pos = [kw.pop(k) for k in ("x", "weight", "bn_weight", "bn_bias", "running_mean", "running_var")]
    return fb.ops.dwconv_bn_act(*pos, **kw)


def _train_step(model, x, seed):
    torch.manual_seed(seed)  # dropout / drop-connect draw the same masks for every model
    out = model(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    (out * randn(*out.shape, seed=seed + 1, dtype=out.dtype)).sum().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _run(model, x, seed):
    """Train step (output, gradients by name, buffers after the step), then eval output."""
    model.train()
    out, grads = _train_step(model, x, seed)
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.eval()
    with torch.no_grad():
        out_eval = model(x)
    return out, grads, buffers, out_eval


def check_patch_equivalence(model: torch.nn.Module, input_shape=(2, 3, 64, 64), *, backend: str = "eager",
                            seed: int = 0, **patch_kwargs) -> "fb.PatchReport":
    """Patch a deep copy of ``model`` and compare it with the original: train mode (output, every
    parameter gradient, running stats after the step) and eval mode (output).

    float64: patched == unpatched for every tensor to 1e-8, gradients to 1e-7 (those that are mathematically ~0,
    e.g. a bias feeding a training-mode BN, against a floor of 1e-3 x the model's RMS gradient).
    float32: the patched model must be as accurate as the unpatched one, both measured against
    the float64 run: err(patched) <= 2 * err(unpatched) + 1e-5 for the outputs, all gradients
    together and the running stats. (Two float32 runs of random-init nets with BN over 2x2 maps
    and ReLU6 / hard-swish kinks legitimately differ by 1e-2 in some gradients.)
    Also checks that state_dict keys are unchanged. ``patch_kwargs`` go to fb.patch. Returns the
    patch report.
    """
    import copy

    x64 = randn(*input_shape, seed=seed + 1)
    runs, report = {}, None
    for dtype in (torch.float64, torch.float32):
        original = copy.deepcopy(model).to(dtype)
        patched = copy.deepcopy(original)
        report = fb.patch(patched, backend=backend, **patch_kwargs)
        assert list(patched.state_dict().keys()) == list(original.state_dict().keys()), "state_dict keys changed"
        runs[dtype] = (_run(original, x64.to(dtype), seed + 2), _run(patched, x64.to(dtype), seed + 2))
        assert not patched.training

    (ref, ref_p), (f32, f32_p) = runs[torch.float64], runs[torch.float32]
    names = [n for n, g in ref[1].items() if g is not None]
    for r in (ref_p, f32, f32_p):
        missing = [n for n in ref[1] if (ref[1][n] is None) != (r[1][n] is None)]
        assert not missing, f"gradients present in one model only: {missing}"

    # float64: exact equivalence.
    assert rel_err(ref_p[0], ref[0]) <= 1e-8, "float64 train output differs"
    assert rel_err(ref_p[3], ref[3]) <= 1e-8, "float64 eval output differs"
    rms = (sum(float(ref[1][n].square().sum()) for n in names) / max(sum(ref[1][n].numel() for n in names), 1)) ** 0.5
    for n in names:
        g, g_p = ref[1][n], ref_p[1][n]
        e = float((g_p - g).norm() / max(float(g.norm()), 1e-3 * rms * g.numel() ** 0.5))
        assert e <= 1e-7, f"float64 grad {n} differs: {e:.2e}"
    for n, b in ref[2].items():
        assert rel_err(ref_p[2][n], b) <= 1e-8, f"float64 buffer {n} differs after the step"

    # float32: as accurate as the unpatched model.
    flat = lambda grads: torch.cat([grads[n].double().flatten() for n in names])  # noqa: E731
    pairs = {"train output": (lambda r: r[0]), "eval output": (lambda r: r[3]), "gradients": (lambda r: flat(r[1]))}
    for n in ref[2]:
        if ref[2][n].is_floating_point():
            pairs[f"buffer {n}"] = (lambda r, n=n: r[2][n])
        else:
            assert torch.equal(f32_p[2][n], ref[2][n]), f"buffer {n} differs"
    for what, get in pairs.items():
        e_u, e_p = rel_err(get(f32), get(ref)), rel_err(get(f32_p), get(ref))
        assert e_p <= 2 * e_u + 1e-5, f"float32 {what}: patched error {e_p:.2e} vs unpatched {e_u:.2e}"
    return report


def assert_deterministic_b0_layer(backend: str, batch: int) -> None:
    """Two training fwd+bwd runs of an EfficientNet-B0 layer (c144, 56x56, k5, stride 2, tf_same,
    bf16 channels_last, CUDA) give bitwise identical outputs, gradients and running stats
    (no atomics, fixed reduction order)."""
    import fastblocks as fb

    torch.manual_seed(0)
    x = torch.randn(batch, 144, 56, 56, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(144, 1, 5, 5, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = (torch.rand(144, device="cuda") + 0.5).requires_grad_()
    b = torch.randn(144, device="cuda", requires_grad=True)
    dy = torch.randn(batch, 144, 28, 28, device="cuda", dtype=torch.bfloat16)
    runs = []
    for _ in range(2):
        rm, rv = torch.zeros(144, device="cuda"), torch.ones(144, device="cuda")
        y = fb.ops.dwconv_bn_act(x, w, g, b, rm, rv, stride=2, padding="tf_same", training=True, backend=backend)
        grads = torch.autograd.grad(y, (x, w, g, b), dy)
        runs.append((y, *grads, rm, rv))
    for a, b_ in zip(*runs):
        assert torch.equal(a, b_)
