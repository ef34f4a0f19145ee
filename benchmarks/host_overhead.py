"""Host cost of one fused-op call: ``python -m benchmarks.host_overhead [--device cpu|cuda]``.

Times calls on tiny inputs (a (2, 8, 6, 6) activation), where the kernels do almost nothing and
what is left is Python, dispatch and launches: each backend through the public op, once directly
(the plain-eager path of ``fastblocks/ops/_fused_op.py``) and once through the ``torch.library``
custom op (``_fused_op.DIRECT = False``, as ``FASTBLOCKS_DIRECT_EAGER=0`` sets it), beside the
plain PyTorch composition. Microseconds per call: the best of 5 means of ``--calls`` calls
(host time; on CUDA each batch of calls ends with a synchronize).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

import fastblocks as fb
from fastblocks.ops import _fused_op


@contextlib.contextmanager
def _via_custom_op():
    previous, _fused_op.DIRECT = _fused_op.DIRECT, False
    try:
        yield
    finally:
        _fused_op.DIRECT = previous


def _cases(device: str):
    g = torch.Generator().manual_seed(0)
    c = 8

    def t(*shape, grad=False, positive=False):
        v = torch.rand(*shape, generator=g) + 0.5 if positive else torch.randn(*shape, generator=g)
        return v.to(device).requires_grad_(grad)

    x, xg = t(2, c, 6, 6), t(2, c, 6, 6, grad=True)
    w, gamma, beta = t(c, 1, 3, 3, grad=True), t(c, grad=True, positive=True), t(c, grad=True)
    rm, rv = t(c), t(c, positive=True)
    wr, br, we, be = t(2, c, grad=True), t(2, grad=True), t(c, 2, grad=True), t(c, grad=True)

    def backward(y):
        y.sum().backward()

    def plain_se(v):
        s = v.mean((2, 3))
        return v * torch.sigmoid(F.linear(F.silu(F.linear(s, wr, br)), we, be))[:, :, None, None]

    return [
        ("dwconv_bn_act eval", True,
         lambda b: fb.ops.dwconv_bn_act(x, w, gamma, beta, rm, rv, training=False, backend=b),
         lambda: F.silu(F.batch_norm(F.conv2d(x, w, None, 1, 1, 1, c), rm, rv, gamma, beta, False, 0.0, 1e-5))),
        ("dwconv_bn_act train fwd+bwd", False,
         lambda b: backward(fb.ops.dwconv_bn_act(xg, w, gamma, beta, rm, rv, training=True, backend=b)),
         lambda: backward(F.silu(F.batch_norm(F.conv2d(xg, w, None, 1, 1, 1, c), rm, rv, gamma, beta, True,
                                              0.1, 1e-5)))),
        ("bn_act train fwd+bwd", False,
         lambda b: backward(fb.ops.bn_act(xg, gamma, beta, rm, rv, training=True, backend=b)),
         lambda: backward(F.silu(F.batch_norm(xg, rm, rv, gamma, beta, True, 0.1, 1e-5)))),
        ("squeeze_excite fwd+bwd", False,
         lambda b: backward(fb.ops.squeeze_excite(xg, wr, br, we, be, act="silu", backend=b)),
         lambda: backward(plain_se(xg))),
        ("silu fwd+bwd", False, lambda b: backward(fb.ops.silu(xg, backend=b)), lambda: backward(F.silu(xg))),
    ]


def _time_us(fn, calls: int, device: str) -> float:
    def batch():
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / calls * 1e6

    batch()  # warm-up: autotuning, compiles, first allocations
    return min(batch() for _ in range(5))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--calls", type=int, default=300, help="calls per timed batch")
    parser.add_argument("--model", default="efficientnet_b0",
                        help="timm model also timed whole on a tiny input (none: skip)")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="fastblocks backends to time (default: every available one but reference)")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"--calls must be >= 1, got {args.calls}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    backends = args.backends or [b for b in fb.available_backends() if b not in ("reference", "cuda_emulated")]
    head = ["call", "plain PyTorch"] + [f"{b} {how}" for b in backends for how in ("direct", "custom op")]
    print(f"host us per call, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, no_grad, fused, plain in _cases(args.device):
        with torch.no_grad() if no_grad else torch.enable_grad():
            cells = [name, f"{_time_us(plain, args.calls, args.device):.1f}"]
            for b in backends:
                start = len(cells)
                try:
                    cells.append(f"{_time_us(lambda: fused(b), args.calls, args.device):.1f}")
                    with _via_custom_op():
                        cells.append(f"{_time_us(lambda: fused(b), args.calls, args.device):.1f}")
                except fb.BackendUnavailableError:
                    del cells[start:]
                    cells += ["n/a", "n/a"]
        print("| " + " | ".join(cells) + " |")
    if args.model != "none":
        print()
        _model_rows(args.model, args.device, max(1, args.calls // 30))
    return 0


def _model_rows(name: str, device: str, calls: int) -> None:
    """A whole model on a tiny input (batch 2, 32 x 32): ms per eval forward / train step,
    unpatched vs patched (backend auto), patched through the direct path and the custom op."""
    import copy

    import timm

    torch.manual_seed(0)
    eager = timm.create_model(name, num_classes=10).to(device)
    patched = copy.deepcopy(eager)
    fb.patch(patched)
    x = torch.randn(2, 3, 32, 32, device=device)

    def step(model):
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    print(f"{name}, input 2x3x32x32, ms per call (host-bound: the kernels do almost nothing)\n")
    print("| call | unpatched | patched, direct | patched, custom op |\n|---|---|---|---|")
    for label, train in (("eval forward", False), ("train step", True)):
        cells = [label]
        for model, via_op in ((eager, False), (patched, False), (patched, True)):
            model.train(train)
            fn = (lambda m=model: step(m)) if train else (lambda m=model: m(x))
            with torch.enable_grad() if train else torch.no_grad(), \
                    _via_custom_op() if via_op else contextlib.nullcontext():
                cells.append(f"{_time_us(fn, calls, device) / 1e3:.2f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
