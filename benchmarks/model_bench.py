"""Model-level benchmark: training step and inference throughput, memory, four variants per model.

Variants: ``eager`` (the model as built), ``compile`` (torch.compile of it), ``fastblocks`` (patched,
backend auto) and ``fastblocks+compile``; on request ``fastblocks-dw-recompute`` (patched with
``recompute="depthwise"``) and, inference only on CPU, the peer runtimes ``onnxruntime`` and
``openvino`` (the unpatched model exported to ONNX: :mod:`benchmarks.peers`). Training step: SGD
(momentum 0.9), cross-entropy on random labels, bf16 autocast on GPU, fp32 on CPU. Inference: eval mode under no_grad; on CPU the compiled
variants are built with Inductor's ``freezing`` on (constant-folds the weights, as deployments do).
Memory: bytes saved for backward by one training forward (every variant where autograd's
saved-tensor hooks see them) and, on GPU, the peak allocated memory of a training step.
Each variant's eval output and training gradients are checked against a float64 (GPU: float32,
no autocast) run of the eager model before timing: a variant must be at least as accurate as eager (2x eager's error + 1e-6;
gradients: or below GRAD_ERR_FLOOR); a peer's row also records the largest absolute difference of
its logits from eager's.
Timing: on CPU the steps of all variants given to one ``ModelBench.run`` are timed in turns, one
step of each per round (a slow spell of a shared machine falls on all alike); on GPU one variant
after another.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import traceback
from typing import Callable, Optional

import torch
from torch import nn

import fastblocks as fb
from fastblocks.utils import saved_tensor_bytes

from . import peers
from .cases import build_model
from .compiled import ExpectCompiled
from .timing import time_repeats, time_repeats_interleaved

MODELS = ("efficientnet_b0", "mobilenetv2_100", "mobilenetv3_large_100", "rexnet_100", "zoo:eca_mobilenet_v2")
QUICK_MODELS = {"cpu": ("efficientnet_b0", "mobilenetv2_100"), "cuda": ("efficientnet_b0",)}
VARIANTS = ("eager", "compile", "fastblocks", "fastblocks+compile")
# Also selectable (--variants): patched with recompute="depthwise" (fused depthwise outputs
# recomputed in backward: the saved bytes vs time trade of that option), and the peer runtimes.
EXTRA_VARIANTS = ("fastblocks-dw-recompute",) + peers.PEERS
MODES = ("inference", "train_step")
RESOLUTION = 224
# Float32 training gradients of a deep BN net at random init differ from float64 by up to a few
# 1e-3 for rounding-level reasons, and how much is luck: in mobilenetv3_large_100 (batch 8, 224)
# eager timm's own error is 1.8e-4 in NCHW and 1.5e-3 channels-last; rounding-level nudges of the
# input move it between 6e-6 and 1.3e-3; computing only the stem BN + hard-swish exactly (float64)
# *raises* it to 1.0e-3 / 3.2e-3. So "2x eager's error" alone would fail more accurate kernels;
# below this floor a variant's gradients count as right (a wrong kernel is off by 1e-1 and more;
# the tests check every op and patched model in float64 to 1e-8).
GRAD_ERR_FLOOR = 1e-2
COMPILE_OPTIONS: dict = {}  # torch.compile options of the compiled variants (tests: a cheap backend)


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

    def __init__(self, name: str, device: str, batch: int, memory_format, quick: bool, modes: tuple = MODES,
                 repeats: Optional[int] = None):
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise ValueError(f"modes: expected a non-empty subset of {MODES}, got {modes!r}")
        self.name, self.device, self.batch, self.quick, self.modes = name, device, batch, quick, tuple(modes)
        self.memory_format = memory_format
        torch.manual_seed(0)
        self.base = build_model(name).to(device).to(memory_format=memory_format)
        g = torch.Generator(device="cpu").manual_seed(1)
        self.x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, generator=g).to(device).contiguous(
            memory_format=memory_format)
        self.target = torch.randint(0, 1000, (batch,), generator=g).to(device)
        self.repeats = repeats or (5 if quick else 12)
        self.report: Optional[str] = None
        self.eager_err: dict = {}  # eager's own errors: the accuracy bound of the other variants
        self._eager_out: Optional[torch.Tensor] = None
        self._expected = self._reference_expectations()

    def _reference_expectations(self):
        """Eval logits and training gradients of the eager model without autocast, in float64 on
        CPU (the exact reference) and float32 on GPU (float64 activations of a batch-256 model
        would not fit; float32 is still far more accurate than the bf16-autocast variants)."""
        ref = copy.deepcopy(self.base).to(torch.float64 if self.device == "cpu" else torch.float32)
        x_ref = self.x.to(next(ref.parameters()).dtype)
        with torch.no_grad():
            logits = ref.eval()(x_ref)
        grads = None
        if "train_step" in self.modes:
            grads = _train_grads(ref, ref, x_ref, self.target, "cpu")  # "cpu": no autocast
        del ref
        return logits, grads

    def variant(self, name: str):
        model = copy.deepcopy(self.base)
        if name.startswith("fastblocks"):
            report = fb.patch(model, recompute="depthwise" if name == "fastblocks-dw-recompute" else "elementwise")
            self.report = self.report or str(report)
        # Plain torch.compile, no Dynamo reset (compile_fresh) per variant: on CPU all variants are
        # built before any is timed, and a reset would discard the graphs built before it. One
        # model's variants add 4 cache entries to its forward, under Dynamo's recompile limit (8).
        forward = torch.compile(model, **COMPILE_OPTIONS) if name.endswith("compile") else model
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
        """Check and time ``variants``; one row per (variant, mode) through ``on_row``. On CPU every
        variant is checked first and then all are timed in turns (``time_repeats_interleaved``), so
        their ratios do not carry a drift of the machine; on GPU each is timed once checked (one
        variant's models on the device at a time)."""
        torch._dynamo.reset()  # a fresh cache for this model's compiled variants (see variant())
        pending = []
        for job in self._checked_steps(variants, on_row):
            if self.device == "cuda":
                self._emit(job, self._time(job), on_row)
            else:
                pending.append(job)
        # Turns of a few calls after a pause and 50 ms of untimed calls: the peers' spinning worker
        # threads park, and the next variant's own threads settle, before its calls are timed.
        timings = time_repeats_interleaved([job["fn"] for job in pending], self.repeats, block=5, pause=0.02,
                                           settle=0.05)
        for job, timing in zip(pending, timings):
            self._emit(job, timing, on_row)

    def _time(self, job: dict):
        try:
            return time_repeats(self.device, job["fn"], self.repeats)
        except Exception as err:  # noqa: BLE001 - reported as the variant's row
            traceback.print_exc()
            return err

    def _emit(self, job: dict, timing, on_row: Callable[[dict], None]) -> None:
        row = job["row"]
        if isinstance(timing, Exception):
            on_row(dict(row, status="error", error=f"{type(timing).__name__}: {timing}"[:300]))
            return
        extra = dict(job["extra"])
        if row["mode"] == "train_step":
            extra["peak_bytes"] = self._peak_bytes(job["fn"])
        on_row(dict(row, status="ok", img_per_s=self.batch / timing.median, **extra, **timing.as_dict()))

    def _checked_steps(self, variants: tuple, on_row: Callable[[dict], None]):
        """Builds each variant, checks its eval output and training gradients against the reference,
        reports a wrong or failing one through ``on_row`` and yields the steps to time: dicts with
        the row so far, ``fn`` (one inference call / one SGD step) and ``extra`` columns."""
        logits_ref, grads_ref = self._expected
        eager_err = self.eager_err
        for name in variants:
            compiled = name.endswith("compile")
            row = dict(model=self.name, batch=self.batch, variant=name,
                       layout="channels_last" if self.memory_format == torch.channels_last else "nchw",
                       dtype="bf16-autocast" if self.device == "cuda" else "float32")
            if name in peers.PEERS:
                yield from self._peer_steps(name, row, on_row)
                continue
            mode = "inference"
            try:
                if "inference" in self.modes:
                    model, forward = self.variant(name)
                    model.eval()
                    freezing = functools.partial(_freezing, self.device, compiled)
                    with freezing():
                        with self._first_call(name, "inference"):
                            out = self._eval_step(forward)
                    out_err = _rel_err(out, logits_ref)
                    problem = self._accuracy_problem("eval output", out_err, eager_err.get("eval"), name)
                    if name == "eager":
                        eager_err["eval"] = out_err
                    if problem is None:
                        yield dict(row=dict(row, mode="inference", rel_err=out_err), extra={},
                                   fn=lambda f=forward, z=freezing: self._eval_step_in(z, f))
                    else:
                        on_row(dict(row, mode="inference", status="wrong", error=problem))
                if "train_step" not in self.modes:
                    continue
                mode = "train_step"
                # a fresh copy: frozen inference graphs must not serve training
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
                yield dict(row=dict(row, mode="train_step", rel_err=grad_err), extra=dict(saved_bytes=saved),
                           fn=lambda m=model, f=forward, o=optimizer: self._train_step(m, f, o))
            except Exception as err:  # report and go on with the next variant
                traceback.print_exc()
                on_row(dict(row, mode=mode, status="error", error=f"{type(err).__name__}: {err}"[:300]))

    def _peer_steps(self, name: str, row: dict, on_row: Callable[[dict], None]):
        """A peer runtime's inference step (peers have no training step), checked as the other
        variants are; a runtime that is not installed gives a ``skipped`` row, its reason printed."""
        if "inference" not in self.modes:
            return
        row = dict(row, mode="inference", dtype="float32")
        reason = "runs on the CPU only" if self.device != "cpu" else peers.unavailable(name)
        if reason is not None:
            print(f"model benchmark: {name} skipped: {reason}", flush=True)
            on_row(dict(row, status="skipped", error=reason))
            return
        try:
            call = peers.build(name, self.base, self.x, torch.get_num_threads())
            out = torch.from_numpy(call().copy())
        except Exception as err:  # noqa: BLE001 - an export or runtime failure is the peer's row
            traceback.print_exc()
            on_row(dict(row, status="error", error=f"{type(err).__name__}: {err}"[:300]))
            return
        err = _rel_err(out, self._expected[0])
        row.update(rel_err=err, max_abs_diff_vs_eager=float((out - self._eager_logits()).abs().max()),
                   runtime=f"{name} {peers.version(name)}", input_layout="nchw")
        problem = self._accuracy_problem("eval output", err, self.eager_err.get("eval"), name)
        if problem is not None:
            on_row(dict(row, status="wrong", error=problem))
            return
        yield dict(row=row, extra={}, fn=call)

    def _eager_logits(self) -> torch.Tensor:
        """The unpatched model's float32 eval logits (what a peer's export should reproduce)."""
        if self._eager_out is None:
            with torch.no_grad():
                self._eager_out = copy.deepcopy(self.base).eval()(self.x).float()
        return self._eager_out

    def _eval_step_in(self, context, forward):
        with context():
            return self._eval_step(forward)

    @staticmethod
    def _accuracy_problem(what: str, err: float, eager: Optional[float], name: str) -> Optional[str]:
        """None when a variant's error against the reference is at eager's level: at most 2x eager's
        error + 1e-6, and for training gradients never less than GRAD_ERR_FLOOR."""
        if name == "eager" or eager is None:
            return None if err < 1e-1 else f"{what} rel. error {err:.2e} (eager itself is off)"
        bound = 2 * eager + 1e-6
        if what == "training gradients":
            bound = max(bound, GRAD_ERR_FLOOR)
        return None if err <= bound else f"{what} rel. error {err:.2e} > {bound:.2e} (eager's: {eager:.2e})"

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
