"""Shared test helpers: one tolerance table, one compare-against-reference routine."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

import fastblocks as fb

# dtype -> (forward, gradient) bound on ||out - ref|| / ||ref|| against a float64 reference.
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-2, 2e-2),
    torch.bfloat16: (1e-2, 2e-2),
}


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
