"""`make demo`: patch timm's EfficientNet-B0 (random init) and compare it with eager PyTorch.

Prints one table: a training step (forward + backward) and an eval forward, eager vs patched:
median time, bytes saved for backward and the largest difference in outputs / gradients.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import fastblocks as fb
from fastblocks.utils import saved_tensor_bytes


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()

    import timm

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eager = timm.create_model("efficientnet_b0").to(device)
    patched = copy.deepcopy(eager)
    report = fb.patch(patched, backend=args.backend)
    print(report)
    print()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    eager, patched = eager.to(memory_format=fmt), patched.to(memory_format=fmt)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)

    def step(model):
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.float().square().mean().backward()
        return out

    rows = []
    for mode in ("train step", "eval forward"):
        results = {}
        for name, model in (("eager", eager), ("fastblocks", patched)):
            if mode == "train step":
                model.train()
                saved = saved_tensor_bytes(lambda: model(x))
                t = _median_time(lambda: step(model), args.repeats)
                out = step(model).detach()
                grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            else:
                model.eval()
                saved = 0
                with torch.no_grad():
                    t = _median_time(lambda: model(x), args.repeats)
                    out = model(x)
                grads = None
            results[name] = (t, saved, out, grads)
        (te, se, oe, ge), (tf, sf, of, gf) = results["eager"], results["fastblocks"]
        diff = float((of - oe).abs().max())
        gdiff = float((gf - ge).abs().max()) if ge is not None else None  # eval: no gradients
        rows.append((mode, te, tf, se, sf, diff, gdiff))

    print(f"EfficientNet-B0 (timm, random init), batch {args.batch}, {args.size}x{args.size}, {device}, "
          f"backend={args.backend!r} ({', '.join(fb.available_backends())} available), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    head = f"{'':13} {'eager s':>9} {'fused s':>9} {'speedup':>8} {'saved MiB eager':>16} {'fused':>8} {'ratio':>6} {'max|dout|':>10} {'max|dgrad|':>10}"
    print(head)
    print("-" * len(head))
    for mode, te, tf, se, sf, diff, gdiff in rows:
        ratio = f"{sf / se:6.2f}" if se else "     -"
        gtext = f"{gdiff:10.2e}" if gdiff is not None else f"{'-':>10}"
        print(f"{mode:13} {te:9.3f} {tf:9.3f} {te / tf:7.2f}x {se / 2**20:16.1f} {sf / 2**20:8.1f} {ratio} "
              f"{diff:10.2e} {gtext}")


if __name__ == "__main__":
    main()
