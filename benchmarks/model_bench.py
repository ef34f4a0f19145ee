"""Model-level benchmark: training step and inference throughput, memory, four variants per model.

Variants: ``eager`` (the model as built), ``compile`` (torch.compile of it), ``fastblocks`` (patched,
backend auto) and ``fastblocks+compile``; on request ``fastblocks-dw-recompute`` (patched with
``recompute="depthwise"``). Training step: SGD (momentum 0.9), cross-entropy on random
labels, bf16 autocast on GPU, fp32 on CPU. Inference: eval mode under no_grad; on CPU the compiled
variants are built with Inductor's ``freezing`` on (constant-folds the weights, as deployments do).
Memory: bytes saved for backward by one training forward (every variant where autograd's
saved-tensor hooks see them) and, on GPU, the peak allocated memory of a training step.
Each variant's eval output and training gradients are checked against a float64 (GPU: float32,
no autocast) run of the eager model before timing: a variant must be at least as accurate as eager (2x eager's error + 1e-6).
"""

from __future__ import annotations

import contextlib
import copy
import traceback
from typing import Callable, Optional

import torch
from torch import nn

import fastblocks as fb
from fastblocks.utils import saved_tensor_bytes

from .cases import build_model
from .compiled import ExpectCompiled, compile_fresh
from .timing import time_repeats

MODELS = ("efficientnet_b0", "mobilenetv2_100", "mobilenetv3_large_100", "rexnet_100", "zoo:eca_mobilenet_v2")
QUICK_MODELS = {"cpu": ("efficientnet_b0", "mobilenetv2_100"), "cuda": ("efficientnet_b0",)}
VARIANTS = ("eager", "compile", "fastblocks", "fastblocks+compile")
# Also selectable (--variants): patched with recompute="depthwise" (fused depthwise outputs
# recomputed in backward: the saved bytes vs time trade of that option).
EXTRA_VARIANTS = ("fastblocks-dw-recompute",)
RESOLUTION = 224


def _autocast(device: str):
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _freezing(device: str, compiled: bool):
    if device == "cpu" and compiled:
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)
    return contextlib.nullcontext()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None])


def _train_grads(model: nn.Module, forward: Callable, x: torch.Tensor, target: torch.Tensor, device: str):
    model.train()
    model.zero_grad(set_to_none=True)
    with _autocast(device):
        loss = nn.functional.cross_entropy(forward(x).float(), target)
    loss.backward()
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    return grads


class ModelBench:
    """One model at one batch size: builds the variants from one initial state and measures them."""

    def __init__(self, name: str, device: str, batch: int, memory_format, quick: bool):
        self.name, self.device, self.batch, self.quick = name, device, batch, quick
        self.memory_format = memory_format
        torch.manual_seed(0)
        self.base = build_model(name).to(device).to(memory_format=memory_format)
        g = torch.Generator(device="cpu").manual_seed(1)
        self.x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, generator=g).to(device).contiguous(
            memory_format=memory_format)
        self.target = torch.randint(0, 1000, (batch,), generator=g).to(device)
        self.repeats = 5 if quick else 12
        self.report: Optional[str] = None
        self.eager_err: dict = {}  # eager's own errors: the accuracy bound of the other variants
        self._expected = self._reference_expectations()

    def _reference_expectations(self):
        """Eval logits and training gradients of the eager model without autocast, in float64 on
        CPU (the exact reference) and float32 on GPU (float64 activations of a batch-256 model
        would not fit; float32 is still far more accurate than the bf16-autocast variants)."""
        ref = copy.deepcopy(self.base).to(torch.float64 if self.device == "cpu" else torch.float32)
        x_ref = self.x.to(next(ref.parameters()).dtype)
        with torch.no_grad():
            logits = ref.eval()(x_ref)
        grads = _train_grads(ref, ref, x_ref, self.target, "cpu")  # "cpu": no autocast
        del ref
        return logits, grads

    def variant(self, name: str):
        model = copy.deepcopy(self.base)
        if name.startswith("fastblocks"):
            report = fb.patch(model, recompute="depthwise" if name == "fastblocks-dw-recompute" else "elementwise")
            self.report = self.report or str(report)
        forward = compile_fresh(model) if name.endswith("compile") else model
        return model, forward

    def _first_call(self, name: str, what: str):
        """Context for a variant's first call: a compiled variant must compile a graph there."""
        if name.endswith("compile"):
            return ExpectCompiled(f"{self.name} {name} ({what})")
        return contextlib.nullcontext()

    def _eval_step(self, forward):
        with torch.no_grad(), _autocast(self.device):
            return forward(self.x)

    def _train_step(self, model, forward, optimizer):
        optimizer.zero_grad(set_to_none=True)
        with _autocast(self.device):
            loss = nn.functional.cross_entropy(forward(self.x).float(), self.target)
        loss.backward()
        optimizer.step()

    def run(self, variants: tuple, on_row: Callable[[dict], None]) -> None:
        logits_ref, grads_ref = self._expected
        eager_err = self.eager_err
        for name in variants:
            compiled = name.endswith("compile")
            row = dict(model=self.name, batch=self.batch, variant=name,
                       layout="channels_last" if self.memory_format == torch.channels_last else "nchw",
                       dtype="bf16-autocast" if self.device == "cuda" else "float32")
            try:
                model, forward = self.variant(name)
                # inference
                model.eval()
                with _freezing(self.device, compiled):
                    with self._first_call(name, "inference"):
                        out = self._eval_step(forward)
                    out_err = _rel_err(out, logits_ref)
                    problem = self._accuracy_problem("eval output", out_err, eager_err.get("eval"), name)
                    if problem is None:
                        t = time_repeats(self.device, lambda: self._eval_step(forward), self.repeats)
                        on_row(dict(row, mode="inference", status="ok", rel_err=out_err,
                                    img_per_s=self.batch / t.median, **t.as_dict()))
                    else:
                        on_row(dict(row, mode="inference", status="wrong", error=problem))
                    if name == "eager":
                        eager_err["eval"] = out_err
                # training (a fresh copy: frozen inference graphs must not serve training)
                model, forward = self.variant(name)
                with self._first_call(name, "training"):
                    grads = _train_grads(model, forward, self.x, self.target, self.device)
                grad_err = _rel_err(grads, grads_ref)
                problem = self._accuracy_problem("training gradients", grad_err, eager_err.get("train"), name)
                if name == "eager":
                    eager_err["train"] = grad_err
                if problem is not None:
                    on_row(dict(row, mode="train_step", status="wrong", error=problem))
                    continue
                model.train()
                with _autocast(self.device):
                    saved = self._saved_bytes(forward)
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                step = lambda: self._train_step(model, forward, optimizer)  # noqa: E731
                t = time_repeats(self.device, step, self.repeats)
                peak = self._peak_bytes(step)
                on_row(dict(row, mode="train_step", status="ok", rel_err=grad_err, img_per_s=self.batch / t.median,
                            saved_bytes=saved, peak_bytes=peak, **t.as_dict()))
            except Exception as err:  # report and go on with the next variant
                traceback.print_exc()
                on_row(dict(row, mode="train_step", status="error", error=f"{type(err).__name__}: {err}"[:300]))

    @staticmethod
    def _accuracy_problem(what: str, err: float, eager: Optional[float], name: str) -> Optional[str]:
        if name == "eager" or eager is None:
            return None if err < 1e-1 else f"{what} rel. error {err:.2e} (eager itself is off)"
        bound = 2 * eager + 1e-6
        return None if err <= bound else f"{what} rel. error {err:.2e} > 2 x eager's {eager:.2e}"

    def _saved_bytes(self, forward) -> Optional[int]:
        try:
            return saved_tensor_bytes(lambda: forward(self.x))
        except Exception:  # compiled graphs may not expose saved tensors to hooks
            return None

    def _peak_bytes(self, step) -> Optional[int]:
        if self.device != "cuda":
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()


def memory_vs_batch(name: str, device: str, batches: tuple, memory_format, on_row: Callable[[dict], None]) -> None:
    """Bytes saved for backward by one training forward, eager vs patched, per batch size."""
    torch.manual_seed(0)
    base = build_model(name).to(device).to(memory_format=memory_format).train()
    patched = copy.deepcopy(base)
    fb.patch(patched)
    for batch in batches:
        x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, device=device).contiguous(memory_format=memory_format)
        for variant, model in (("eager", base), ("fastblocks", patched)):
            with _autocast(device):
                saved = saved_tensor_bytes(lambda: model(x))
            on_row(dict(model=name, batch=batch, variant=variant, saved_bytes=saved))
